"""One JSON access line per request, written by a pure-ASGI middleware.

It replaces gunicorn's and uvicorn's access logs (both off: gunicorn.conf.py), so every
request is one line with the request id, never two. What a line never holds: headers (so
no API key), query strings, bodies, images. Of a generation's prompt it holds the length
and a short SHA-256 prefix, enough to spot the same prompt again without storing it; the
text only with SLEEPWELL_LOG_PROMPTS=true.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import re
import time
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.settings import Settings

logger = logging.getLogger("sleepwell.access")

# Bodies whose prompt is logged as length and hash: JSON ones only (a multipart edit's
# body is mostly image bytes, not worth copying for its prompt).
PROMPT_PATHS = frozenset({"/v1/images/generations", "/v1/images/edits", "/v1/jobs"})
_TIMING = re.compile(r"([A-Za-z0-9_-]+);dur=([0-9.]+)")
_HASH_CHARS = 12


def prompt_fields(body: bytes, log_prompts: bool) -> dict[str, Any]:
    """Length and hash of the prompt in a JSON body; nothing if it does not parse."""
    try:
        payload = json.loads(body)
    except (ValueError, RecursionError):  # RecursionError: '[[[[...' nested 30000 deep
        return {}
    if not isinstance(payload, dict) or not isinstance(payload.get("prompt"), str):
        return {}
    prompt: str = payload["prompt"]
    fields: dict[str, Any] = {
        "prompt_chars": len(prompt),
        "prompt_sha256": hashlib.sha256(prompt.encode("utf-8", "replace")).hexdigest()[
            :_HASH_CHARS
        ],
    }
    for name in ("n", "size"):
        if isinstance(payload.get(name), int | str):
            fields[name] = payload[name]
    if log_prompts:
        fields["prompt"] = prompt
    return fields


def timing_fields(server_timing: str | None) -> dict[str, float]:
    """``queue;dur=1.0, inference;dur=2.0`` -> {"queue_ms": 1.0, "inference_ms": 2.0}."""
    if not server_timing:
        return {}
    return {f"{name}_ms": float(value) for name, value in _TIMING.findall(server_timing)}


def _prompt_body(scope: Scope) -> bool:
    if scope.get("method") != "POST" or scope.get("path") not in PROMPT_PATHS:
        return False
    content_type = next((value for name, value in scope.get("headers", [])
                         if name.lower() == b"content-type"), b"application/json")
    return content_type.split(b";")[0].strip().lower() == b"application/json"


def _served_model(scope: Scope) -> str | None:
    state = scope.get("state") or {}
    if state.get("model"):
        return str(state["model"])
    service = getattr(getattr(scope.get("app"), "state", None), "service", None)
    name = getattr(service, "model_name", None)
    return str(name) if name is not None else None


class AccessLogMiddleware:
    def __init__(self, app: ASGIApp, settings: Settings) -> None:
        self.app = app
        self.log_prompts = settings.log_prompts
        self.max_capture = settings.max_body_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.monotonic()
        seen: dict[str, Any] = {"status": 0, "timing": None}
        body = bytearray()
        capture = _prompt_body(scope)

        async def watching_receive() -> Message:
            message = await receive()
            if capture and message["type"] == "http.request" and len(body) <= self.max_capture:
                body.extend(message.get("body", b""))
            return message

        async def watching_send(message: Message) -> None:
            if message["type"] == "http.response.start":
                seen["status"] = message["status"]
                for name, value in message.get("headers", []):
                    if name.lower() == b"server-timing":
                        seen["timing"] = value.decode("latin-1")
            await send(message)

        try:
            await self.app(scope, watching_receive, watching_send)
        except asyncio.CancelledError:
            seen["status"] = seen["status"] or 499
            raise
        except Exception:
            seen["status"] = seen["status"] or 500  # ServerErrorMiddleware answers 500
            raise
        finally:
            self._log(scope, seen, started, bytes(body) if capture else None)

    def _log(
        self, scope: Scope, seen: dict[str, Any], started: float, body: bytes | None
    ) -> None:
        state = scope.get("state") or {}
        client = scope.get("client")
        fields: dict[str, Any] = {
            "request_id": state.get("request_id"),
            "method": scope.get("method"),
            "path": scope.get("path"),
            "status": seen["status"],
            "duration_ms": round((time.monotonic() - started) * 1000, 1),
            "model": _served_model(scope),
            "client": client[0] if client else None,
        }
        if state.get("key_id"):
            fields["key_id"] = state["key_id"]
        if state.get("kind"):  # generate/edit/variation: set by the router that took the work
            fields["kind"] = state["kind"]
        if body is not None:
            fields.update(prompt_fields(body, self.log_prompts))
        fields.update(timing_fields(seen["timing"]))
        # A streamed response sends its headers first: it leaves outcome and timing here.
        fields.update(state.get("access_fields") or {})
        # A 503 from a probe is an answer (not ready yet), not a server fault.
        probe = str(scope.get("path", "")).startswith("/health")
        level = logging.WARNING if seen["status"] >= 500 and not probe else logging.INFO
        logger.log(level, "request", extra=fields)
