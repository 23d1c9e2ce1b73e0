"""Pure-ASGI middleware: request ids, Server-Timing's total and the body size limit (auth:
app/security/guard.py).

Pure ASGI rather than BaseHTTPMiddleware, so ``receive`` keeps delivering the client's
``http.disconnect``, which is how a generation learns that nobody is waiting any more.
"""

from __future__ import annotations

import asyncio
import re
import time
import uuid
from collections.abc import MutableMapping
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.errors import PayloadTooLarge, RequestTimeout, SleepwellError, send_error

_SAFE_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:\-]{1,128}$")


def _header(scope: Scope, name: bytes) -> str | None:
    for key, value in scope.get("headers", []):
        if key.lower() == name:
            return str(value.decode("latin-1"))
    return None


class RequestIdMiddleware:
    """Take X-Request-ID from the client when it is sane, else make one; echo it back."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        incoming = _header(scope, b"x-request-id")
        request_id = incoming if incoming and _SAFE_REQUEST_ID.match(incoming) else uuid.uuid4().hex
        state: MutableMapping[str, Any] = scope.setdefault("state", {})
        state["request_id"] = request_id

        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = [(k, v) for k, v in message.get("headers", []) if k != b"x-request-id"]
                headers.append((b"x-request-id", request_id.encode()))
                message["headers"] = headers
            await send(message)

        await self.app(scope, receive, send_with_id)


class ServerTimingTotalMiddleware:
    """Close an answer's ``Server-Timing`` (queue, inference, encode: the images handler)
    with ``total``: from this middleware receiving the request to the response's start, so
    everything inside (other middleware, validation, handoffs) is in it. Outermost but for
    the socket gate, so a bench can put it beside its client-side latency."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.monotonic()

        async def send_with_total(message: Message) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = _with_total(message.get("headers", []), started)
            await send(message)

        await self.app(scope, receive, send_with_total)


def _with_total(headers: list[tuple[bytes, bytes]], started: float) -> list[tuple[bytes, bytes]]:
    """Append ``total;dur=MS`` to a Server-Timing header there is; no header, no change."""
    for index, (name, value) in enumerate(headers):
        if name.lower() == b"server-timing":
            total = f", total;dur={(time.monotonic() - started) * 1000:.1f}".encode()
            return [*headers[:index], (name, value + total), *headers[index + 1 :]]
    return headers


class BodySizeLimitMiddleware:
    """Refuse bodies over the limit with 413, by Content-Length or while streaming; and
    bodies that take longer than ``body_timeout_s`` to arrive with 408 (slowloris), counted
    from the request's start. Once the body is complete, ``receive`` is left alone: the
    images handler waits on it for the client's disconnect, however long a generation runs.
    """

    def __init__(
        self, app: ASGIApp, max_body_bytes: int, body_timeout_s: float | None = None,
        upload_paths: frozenset[str] = frozenset(), max_upload_body_bytes: int = 0,
    ) -> None:
        self.app = app
        self.max_body_bytes = max_body_bytes
        self.body_timeout_s = body_timeout_s
        # Routes that take images (edits, variations) need room for them; each file is
        # also held to SLEEPWELL_MAX_UPLOAD_BYTES as it streams in (app/api/forms.py).
        self.upload_paths = upload_paths
        self.max_upload_body_bytes = max(max_body_bytes, max_upload_body_bytes)

    def limit_for(self, scope: Scope) -> int:
        if scope.get("path") in self.upload_paths:
            return self.max_upload_body_bytes
        return self.max_body_bytes

    def too_large(self, limit: int) -> PayloadTooLarge:
        setting = ("SLEEPWELL_MAX_UPLOAD_BYTES" if limit == self.max_upload_body_bytes
                   and self.upload_paths else "SLEEPWELL_MAX_BODY_BYTES")
        return PayloadTooLarge(f"The request body is larger than {limit} bytes ({setting}).")

    def too_slow(self) -> RequestTimeout:
        return RequestTimeout(
            f"The request body did not arrive within {self.body_timeout_s:g}s "
            "(SLEEPWELL_BODY_TIMEOUT_S)."
        )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit = self.limit_for(scope)
        declared = _header(scope, b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            await self._refuse(send, self.too_large(limit))
            return
        body = _BodyWatch(self, receive, limit)

        async def answering_send(message: Message) -> None:
            # FastAPI turns any error raised while reading the body into its own 400; the
            # client gets the real reason (413 or 408) instead.
            if body.refusal is None:
                await send(message)
            elif message["type"] == "http.response.start":
                await self._refuse(send, body.refusal)

        await self.app(scope, body.receive, answering_send)

    async def _refuse(self, send: Send, error: SleepwellError) -> None:
        await send_error(send, error, [(b"connection", b"close")])


class _BodyWatch:
    """One request's body: bytes so far, whether it is complete, and why it was refused."""

    def __init__(self, limits: BodySizeLimitMiddleware, receive: Receive, limit: int) -> None:
        self.limits = limits
        self.limit = limit
        self._receive = receive
        self.received = 0
        self.complete = False
        self.refusal: SleepwellError | None = None
        self._loop = asyncio.get_running_loop()
        self._deadline = self._loop.time() + (limits.body_timeout_s or 0.0)

    async def receive(self) -> Message:
        if self.complete or self.limits.body_timeout_s is None:
            message = await self._receive()
        else:
            remaining = max(0.0, self._deadline - self._loop.time())
            try:
                message = await asyncio.wait_for(self._receive(), remaining)
            except TimeoutError:
                raise self._refuse(self.limits.too_slow()) from None
        if message["type"] == "http.request":
            self.received += len(message.get("body", b""))
            if self.received > self.limit:
                raise self._refuse(self.limits.too_large(self.limit))
            self.complete = not message.get("more_body", False)
        return message

    def _refuse(self, error: SleepwellError) -> SleepwellError:
        self.refusal = error
        return error
