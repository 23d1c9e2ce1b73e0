"""Image routes with ``"stream": true``: Server-Sent Events (each field: docs/streaming.md).

One request carries the whole generation, so it works across gunicorn workers with no
sticky sessions and through any proxy that passes a streamed response. The events are
OpenAI's, so the official SDKs' ``stream=True`` yield their own typed classes: generations
send ``image_generation.partial_image`` (with ``partial_images``) then one
``image_generation.completed`` per image (with ``usage``); edits and variations the same as
``image_edit.*``; a failure once the stream has started is an ``error`` event with the body
a non-streamed request would get. ``sleepwell.progress`` (steps, queue position) only with
``"stream_progress": true``: the SDKs cast every event to their typed union and would read
it as a partial image without an image. Without it, an SSE comment keeps the line alive.

Errors found before the stream starts (bad input, not ready, queue full, keys, limits) are
ordinary JSON error responses: this response is only built after admission succeeded.
Closing the connection cancels the run: the client's ``http.disconnect`` reaches the
runner's cancel path, and the engine stops at the next denoising step. A client that leaves
once the images exist stops the stream too: no image is encoded for nobody. Outcomes are
counted by the runner's ``settle`` alone; the access log gets the outcome through the scope
state, and ``client_left`` (with ``images_sent``) when the client went away before the end.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from typing import Any

from fastapi.responses import Response
from starlette.types import Message, Receive, Scope, Send

from app.contract.images import WorkKind
from app.errors import Cancelled, SleepwellError
from app.serving.encoding import Encoder
from app.serving.generation import Generation, deadline_exceeded
from app.serving.outcomes import status_of
from app.serving.previews import Preview, render_preview
from app.serving.runner import Runner
from app.serving.usage import usage_of

logger = logging.getLogger("sleepwell.streaming")

PROGRESS_EVENT = "sleepwell.progress"
COMPLETED_EVENT = "image_generation.completed"
PARTIAL_EVENT = "image_generation.partial_image"
EDIT_COMPLETED_EVENT = "image_edit.completed"
EDIT_PARTIAL_EVENT = "image_edit.partial_image"
ERROR_EVENT = "error"
# (partial image, completed) event names per kind of work, as OpenAI names them.
EVENT_NAMES = {
    WorkKind.GENERATE: (PARTIAL_EVENT, COMPLETED_EVENT),
    WorkKind.EDIT: (EDIT_PARTIAL_EVENT, EDIT_COMPLETED_EVENT),
    WorkKind.VARIATION: (EDIT_PARTIAL_EVENT, EDIT_COMPLETED_EVENT),
}
KEEP_ALIVE = b": keep-alive\n\n"  # an SSE comment: every parser skips it
_POLL_S = 0.05  # steps advance on the inference thread; polling keeps engine.py untouched
_HEARTBEAT_S = 1.0
_KEEP_ALIVE_S = 5.0
# For the OpenAPI schema: the same 200 can be JSON or, with "stream": true, events. On
# OpenAPI 3.0/3.1 a text/event-stream schema describes one parsed event (event, data).
_EVENT_SCHEMA = {
    "type": "object",
    "required": ["event", "data"],
    "properties": {
        "event": {"type": "string", "enum": [
            PARTIAL_EVENT, COMPLETED_EVENT, EDIT_PARTIAL_EVENT, EDIT_COMPLETED_EVENT,
            ERROR_EVENT, PROGRESS_EVENT]},
        "data": {"type": "string", "contentMediaType": "application/json",
                 "description": "a JSON object whose \"type\" is the event name"},
    },
}
STREAM_RESPONSE_DOC: dict[int | str, dict[str, Any]] = {
    200: {
        "description": "The images; with \"stream\": true, Server-Sent Events instead "
        "(image_edit.* for edits): with partial_images, image_generation.partial_image "
        "previews (b64_json, partial_image_index, index, seed); one "
        "image_generation.completed per image (b64_json, seed, index, usage); or error. "
        "With stream_progress: also sleepwell.progress (step, steps, elapsed_s, "
        "queue_position).",
        "content": {"text/event-stream": {"schema": _EVENT_SCHEMA}},
    }
}


def sse(event: str, data: dict[str, Any]) -> bytes:
    payload = json.dumps({"type": event, **data}, separators=(",", ":"))
    return f"event: {event}\ndata: {payload}\n\n".encode()


def progress_of(generation: Generation, runner: Runner) -> dict[str, Any]:
    """Where ``generation`` is now: queued (with its position), running (steps), or done."""
    steps = generation.params.denoising_steps  # an edit runs strength * steps
    data: dict[str, Any] = {
        "phase": "running",
        # A batch that failed merged is retried one by one, so steps_done may overshoot.
        "step": min(generation.steps_done, steps),
        "steps": steps,
        "elapsed_s": round(time.monotonic() - generation.arrived_at, 2),
        "queued_s": round(generation.queue_seconds(), 2),
    }
    if generation.future.done():
        data.update(phase="encoding", step=steps)
    elif generation in runner.queue:
        data.update(phase="queued", queue_position=runner.queue.index(generation) + 1,
                    queue_length=len(runner.queue))
    return data


def error_event(error: SleepwellError) -> bytes:
    extra: dict[str, Any] = {"status": error.status_code}
    if error.retry_after_s is not None:
        extra["retry_after_s"] = max(1, round(error.retry_after_s))
    return sse(ERROR_EVENT, {**extra, **error.body()})


class GenerationEventStream(Response):
    """The streamed answer for one admitted generation (pure ASGI, see module doc)."""

    media_type = "text/event-stream"

    def __init__(self, runner: Runner, encoder: Encoder, generation: Generation, *,
                 progress: bool = False) -> None:
        super().__init__(headers={
            "Cache-Control": "no-cache, no-store",
            "X-Accel-Buffering": "no",  # nginx: pass events through as they come
        })
        # No Content-Length: the body is open-ended (Response adds one for its empty body).
        self.raw_headers = [(k, v) for k, v in self.raw_headers if k != b"content-length"]
        self.runner = runner
        self.encoder = encoder
        self.generation = generation
        self.size = f"{generation.params.width}x{generation.params.height}"
        self.progress = progress  # the request's stream_progress
        self.partial_event, self.completed_event = EVENT_NAMES[generation.params.kind]
        self.encode_seconds: float | None = None
        self.images_sent = 0
        self.next_partial = 0  # the partial_image_index the next preview must have
        self.preview_decode_seconds = 0.0
        self.client_left = False

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": self.raw_headers})
        disconnected = asyncio.create_task(_client_disconnected(receive))
        try:
            if await self._follow(send, disconnected):
                await self._finish(send, disconnected)
            await send({"type": "http.response.body", "body": b"", "more_body": False})
        except OSError:  # the client went away mid-send (uvicorn drops such sends instead)
            pass
        finally:
            disconnected.cancel()
            if not self.generation.future.done():  # any way out but an answer: nobody waits
                self.runner.cancel(self.generation, Cancelled("The client disconnected."))
            self.runner.release(self.generation)
            scope.setdefault("state", {})["access_fields"] = self._access_fields()

    async def _follow(self, send: Send, disconnected: asyncio.Task[None]) -> bool:
        """Send previews (and progress, or keep-alives) until the generation is answered;
        False if the client left."""
        generation = self.generation
        last: tuple[Any, ...] | None = None
        last_sent = time.monotonic() if not self.progress else 0.0
        waiters: set[asyncio.Future[Any]] = {generation.future, disconnected}
        while not generation.future.done():
            await self._send_previews(send)
            now = time.monotonic()
            if self.progress:
                progress = progress_of(generation, self.runner)
                shown = (progress["phase"], progress["step"], progress.get("queue_position"))
                if shown != last or now - last_sent >= _HEARTBEAT_S:
                    await _send_body(send, sse(PROGRESS_EVENT, progress))
                    last, last_sent = shown, now
            elif now - last_sent >= _KEEP_ALIVE_S:
                await _send_body(send, KEEP_ALIVE)
                last_sent = now
            timeout = min(_POLL_S, max(0.0, generation.deadline - now))
            await asyncio.wait(waiters, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
            if self._client_gone(disconnected):
                return False
            if time.monotonic() >= generation.deadline and not generation.future.done():
                self.runner.cancel(generation, deadline_exceeded(generation))
        return not self._client_gone(disconnected)  # answered as the client left: no one to tell

    def _client_gone(self, disconnected: asyncio.Task[None]) -> bool:
        """Whether the client has closed the connection; noted for the access line."""
        if disconnected.done():
            self.client_left = True
        return self.client_left

    async def _finish(self, send: Send, disconnected: asyncio.Task[None]) -> None:
        """The images, one event each, or the error the generation ended with."""
        generation = self.generation
        error = generation.future.exception()
        if isinstance(error, SleepwellError):
            await _send_body(send, error_event(error))
            return
        if self.progress:
            await _send_body(send, sse(PROGRESS_EVENT, progress_of(generation, self.runner)))
        try:
            await self._send_previews(send)  # any that arrived with the images come first
            await self._send_images(send, generation.future.result(), disconnected)
        except Exception:
            request_id = generation.request_id
            logger.exception("streaming the images failed request_id=%s", request_id)
            await _send_body(send, error_event(SleepwellError(
                f"The server had an error while processing your request (request id "
                f"{request_id})."
            )))

    async def _send_previews(self, send: Send) -> None:
        """The partial images that arrived, each encoded (at full size) just before it is sent."""
        feed = self.generation.previews
        for preview in feed.take() if feed is not None else []:
            if preview.index < self.next_partial:  # a failed batch retried alone repeats it
                continue
            self.next_partial = preview.index + 1
            self.preview_decode_seconds += preview.decode_seconds
            try:
                await self._send_preview(send, preview)
            except OSError:  # the client left: the caller notices
                raise
            except Exception:  # a preview is a nicety: the images still come
                logger.exception("sending a partial image failed request_id=%s",
                                 self.generation.request_id)

    async def _send_preview(self, send: Send, preview: Preview) -> None:
        params = self.generation.params
        for index, (pixels, seed) in enumerate(
            zip(preview.images, self.generation.seeds, strict=True)
        ):
            b64 = await self.encoder.run(render_preview, pixels, params.width, params.height,
                                         params.output_format)
            await _send_body(send, sse(self.partial_event, {
                "b64_json": b64, "partial_image_index": preview.index,
                **self._image_fields(), "index": index, "seed": seed,
            }))

    def _image_fields(self) -> dict[str, Any]:
        """What OpenAI's partial and completed events both say about the image."""
        return {"created_at": int(time.time()), "size": self.size, "quality": "auto",
                "background": "opaque",
                "output_format": self.generation.params.output_format.value}

    async def _send_images(
        self, send: Send, images: list[Any], disconnected: asyncio.Task[None]
    ) -> None:
        """One event per image, each encoded just before it is sent; none once the client
        has left (uvicorn drops sends to a closed connection without a word)."""
        generation = self.generation
        usage = usage_of(generation).model_dump()  # the request's, on each of its images
        started = time.monotonic()
        for index, (image, seed) in enumerate(zip(images, generation.seeds, strict=True)):
            if self._client_gone(disconnected):
                break
            (b64,) = await self.encoder.encode([image], generation.params.output_format)
            await _send_body(send, sse(self.completed_event, {
                "b64_json": b64, **self._image_fields(), "usage": usage,
                "index": index, "seed": seed,
            }))
            self.images_sent += 1
        self.encode_seconds = time.monotonic() - started

    def _access_fields(self) -> dict[str, Any]:
        """What the access line adds for a stream: its status is 200 whatever happened."""
        generation = self.generation
        error = generation.future.exception()  # done: settled, or cancelled just above
        fields: dict[str, Any] = {
            "stream": True,
            "outcome": status_of(error) if isinstance(error, SleepwellError) else "success",
            "queue_ms": round(generation.queue_seconds() * 1000, 1),
            "inference_ms": round(generation.inference_seconds() * 1000, 1),
        }
        if self.encode_seconds is not None:
            fields["encode_ms"] = round(self.encode_seconds * 1000, 1)
        if self.next_partial:
            fields.update(partial_images_sent=self.next_partial,
                          preview_decode_ms=round(self.preview_decode_seconds * 1000, 2))
        if self.client_left:
            fields.update(client_left=True, images_sent=self.images_sent)
        return fields


async def _send_body(send: Send, chunk: bytes) -> None:
    await send({"type": "http.response.body", "body": chunk, "more_body": True})


async def _client_disconnected(receive: Receive) -> None:
    # After the body is read, the next ASGI message for this request is the disconnect.
    with contextlib.suppress(OSError):
        while True:
            message: Message = await receive()
            if message["type"] == "http.disconnect":
                return
