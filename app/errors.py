"""One error hierarchy, mapped to HTTP in exactly one place (``install_error_handlers``)."""

from __future__ import annotations

import json
import logging
import math
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import Send

logger = logging.getLogger("sleepwell.errors")


class SleepwellError(Exception):
    """Base of every error a client may see. Subclasses fix status, type and code."""

    status_code = 500
    error_type = "server_error"
    code: str | None = "internal_error"

    def __init__(
        self,
        message: str,
        *,
        param: str | None = None,
        code: str | None = None,
        retry_after_s: float | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        if code is not None:
            self.code = code
        self.retry_after_s = retry_after_s

    def headers(self) -> dict[str, str]:
        if self.retry_after_s is None:
            return {}
        return {"Retry-After": str(max(1, math.ceil(self.retry_after_s)))}

    def body(self) -> dict[str, Any]:
        return error_body(self.message, self.error_type, self.param, self.code)


class InvalidRequest(SleepwellError):
    status_code = 400
    error_type = "invalid_request_error"
    code = "invalid_value"


class AuthenticationFailed(SleepwellError):
    status_code = 401
    error_type = "authentication_error"
    code = "invalid_api_key"

    def headers(self) -> dict[str, str]:
        return {**super().headers(), "WWW-Authenticate": "Bearer"}


class Forbidden(SleepwellError):
    """A valid credential used where it does not belong (the admin key on POST /v1/jobs)."""

    status_code = 403
    error_type = "permission_error"
    code = "forbidden"


class NotFound(SleepwellError):
    status_code = 404
    error_type = "invalid_request_error"
    code = "not_found"


class ModelNotFound(NotFound):
    code = "model_not_found"


class Conflict(SleepwellError):
    """The request contradicts an earlier one (e.g. an Idempotency-Key reused: jobs)."""

    status_code = 409
    error_type = "invalid_request_error"
    code = "conflict"


class RequestTimeout(SleepwellError):
    """The body did not arrive in time (a slow or stalled upload: slowloris)."""

    status_code = 408
    error_type = "invalid_request_error"
    code = "request_timeout"


class PayloadTooLarge(SleepwellError):
    status_code = 413
    error_type = "invalid_request_error"
    code = "request_too_large"


class QueueFull(SleepwellError):
    status_code = 429
    error_type = "overloaded_error"
    code = "queue_full"


class RateLimited(SleepwellError):
    status_code = 429
    error_type = "rate_limit_error"
    code = "rate_limit_exceeded"


class ServiceUnavailable(SleepwellError):
    """Not ready, draining, out of GPU memory, or the worker is being replaced."""

    status_code = 503
    error_type = "service_unavailable"
    code = "unavailable"


class DeadlineExceeded(SleepwellError):
    status_code = 504
    error_type = "timeout_error"
    code = "deadline_exceeded"


class Cancelled(SleepwellError):
    """The client went away; nobody reads this answer, but the metrics count it."""

    status_code = 499
    error_type = "cancelled"
    code = "client_disconnected"


class InferenceFailed(SleepwellError):
    status_code = 500
    error_type = "server_error"
    code = "inference_failed"


def error_body(
    message: str, error_type: str, param: str | None = None, code: str | None = None
) -> dict[str, Any]:
    return {"error": {"message": message, "type": error_type, "param": param, "code": code}}


def error_response(error: SleepwellError, request: Request | None = None) -> JSONResponse:
    headers = error.headers()
    request_id = getattr(request.state, "request_id", None) if request is not None else None
    if request_id:
        headers["X-Request-ID"] = request_id
    return JSONResponse(error.body(), status_code=error.status_code, headers=headers)


def _param_from_location(location: tuple[Any, ...]) -> str | None:
    # ("body", "size") -> "size"; ("body",) means the whole body (e.g. malformed JSON).
    parts = [str(part) for part in location if part != "body"]
    return ".".join(parts) if parts else None


def validation_error(exc: RequestValidationError) -> InvalidRequest:
    first = exc.errors()[0] if exc.errors() else {}
    location = tuple(first.get("loc", ()))
    if first.get("type") == "json_invalid":
        return InvalidRequest(
            "We could not parse the JSON body of your request.", code="invalid_json"
        )
    param = _param_from_location(location)
    message = str(first.get("msg", "invalid request"))
    if message.startswith("Value error, "):
        message = message[len("Value error, ") :]
    if param:
        message = f"Invalid value for '{param}': {message}"
    return InvalidRequest(message, param=param)


def install_error_handlers(app: FastAPI) -> None:
    """Map every failure to the OpenAI error shape. Tracebacks go to the log only."""

    @app.exception_handler(SleepwellError)
    async def _sleepwell(request: Request, exc: SleepwellError) -> JSONResponse:
        return error_response(exc, request)

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError) -> JSONResponse:
        return error_response(validation_error(exc), request)

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        error: SleepwellError
        if exc.status_code == 404:
            error = NotFound(f"Unknown path: {request.url.path}")
        elif exc.status_code == 405:
            error = InvalidRequest(f"Method {request.method} is not allowed here.")
            error.status_code = 405
        else:
            error = SleepwellError(str(exc.detail))
            error.status_code = exc.status_code
            error.error_type = "invalid_request_error" if exc.status_code < 500 else "server_error"
        return error_response(error, request)

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        request_id = getattr(request.state, "request_id", "-")
        logger.error("unhandled error request_id=%s", request_id, exc_info=exc)
        error = SleepwellError(
            f"The server had an error while processing your request (request id {request_id})."
        )
        return error_response(error, request)


def json_error_bytes(error: SleepwellError) -> bytes:
    """For pure-ASGI middleware that answers before FastAPI sees the request."""
    return json.dumps(error.body()).encode()


async def send_error(
    send: Send, error: SleepwellError, extra_headers: list[tuple[bytes, bytes]] | None = None
) -> None:
    """Answer in the OpenAI error shape from pure-ASGI middleware, before FastAPI runs."""
    body = json_error_bytes(error)
    headers = [(b"content-type", b"application/json"),
               (b"content-length", str(len(body)).encode())]
    headers += [(name.lower().encode(), value.encode()) for name, value in error.headers().items()]
    headers += extra_headers or []
    await send({"type": "http.response.start", "status": error.status_code, "headers": headers})
    await send({"type": "http.response.body", "body": body})
