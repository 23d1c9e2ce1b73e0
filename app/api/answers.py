"""One answer path for every image route (generations, edits, variations): queue the
admitted generation, then stream its events or wait for, encode and return its images."""

from __future__ import annotations

import asyncio
import time
from typing import Any

from fastapi import Request
from fastapi.responses import JSONResponse, Response

from app.api.streaming import GenerationEventStream
from app.contract.images import ImageData, ImageGenerationResponse
from app.errors import Cancelled, DeadlineExceeded
from app.serving.generation import Generation, deadline_exceeded
from app.serving.runner import Runner
from app.serving.service import Service
from app.serving.usage import usage_of


async def answer_images(
    service: Service, generation: Generation, request: Request, *, stream: bool,
    progress: bool = False,
) -> Response:
    """Submit ``generation``; answer with Server-Sent Events or with the JSON images.

    ``progress``: the request's ``stream_progress``, sleepwell.progress events in the stream."""
    service.runner.submit(generation)
    if stream:  # Server-Sent Events: app/api/streaming.py
        return GenerationEventStream(service.runner, service.encoder, generation,
                                     progress=progress)
    try:
        images = await wait_for_images(service.runner, generation, request)
        encode_started = time.monotonic()
        encoded = await service.encoder.encode(images, generation.params.output_format)
        encode_seconds = time.monotonic() - encode_started
    finally:
        service.runner.release(generation)
    return images_response(generation, encoded, encode_seconds, service.shed_connection())


def images_response(
    generation: Generation, encoded: list[str], encode_seconds: float, close: bool
) -> JSONResponse:
    """The JSON answer (OpenAI's shape, plus each image's seed) and its Server-Timing."""
    response = ImageGenerationResponse(
        created=int(time.time()),
        data=[
            ImageData(b64_json=b64, seed=seed)
            for b64, seed in zip(encoded, generation.seeds, strict=True)
        ],
        usage=usage_of(generation),
    )
    timing = (
        f"queue;dur={generation.queue_seconds() * 1000:.1f}, "
        f"inference;dur={generation.inference_seconds() * 1000:.1f}, "
        f"encode;dur={encode_seconds * 1000:.1f}"
    )
    headers = {"Server-Timing": timing}
    if close:
        headers["Connection"] = "close"
    return JSONResponse(response.model_dump(exclude_none=True), headers=headers)


async def wait_for_images(runner: Runner, generation: Generation, request: Request) -> list[Any]:
    """Wait for the generation, its deadline, or the client hanging up, whichever comes first."""
    disconnected = asyncio.create_task(_client_disconnected(request))
    try:
        remaining = max(0.0, generation.deadline - time.monotonic())
        waiters: set[asyncio.Future[Any]] = {generation.future, disconnected}
        await asyncio.wait(waiters, timeout=remaining, return_when=asyncio.FIRST_COMPLETED)
    finally:
        disconnected.cancel()
    if generation.future.done():
        result: list[Any] = generation.future.result()
        return result
    if disconnected.done() and not disconnected.cancelled():
        error: Cancelled | DeadlineExceeded = Cancelled("The client disconnected.")
    else:
        error = deadline_exceeded(generation)
    runner.cancel(generation, error)
    raise error


async def _client_disconnected(request: Request) -> None:
    # After the body is read, the next ASGI message for this request is the disconnect.
    while True:
        message = await request.receive()
        if message["type"] == "http.disconnect":
            return
