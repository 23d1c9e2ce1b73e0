"""POST /v1/images/generations: OpenAI's image API on the local pipeline."""

from __future__ import annotations

import asyncio
import time
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response

from app.api.deps import RequestIdDep, ServiceDep
from app.api.streaming import STREAM_RESPONSE_DOC, GenerationEventStream
from app.contract.images import ImageData, ImageGenerationRequest, ImageGenerationResponse
from app.errors import Cancelled, DeadlineExceeded
from app.serving.admission import build_generation
from app.serving.generation import Generation, deadline_exceeded
from app.serving.runner import Runner

router = APIRouter(tags=["images"])


@router.post("/v1/images/generations", response_model=ImageGenerationResponse,
             responses=STREAM_RESPONSE_DOC)
async def generate_images(
    body: ImageGenerationRequest, request: Request, service: ServiceDep, request_id: RequestIdDep
) -> Response:
    arrived_at = time.monotonic()
    model = await service.serving_model(arrived_at, requested=body.model)
    generation = build_generation(body, service.settings, model, request_id, arrived_at)
    service.runner.submit(generation)
    if body.stream:  # Server-Sent Events: app/api/streaming.py
        return GenerationEventStream(service.runner, service.encoder, generation)
    try:
        images = await wait_for_images(service.runner, generation, request)
        encode_started = time.monotonic()
        encoded = await service.encoder.encode(images, generation.params.output_format)
        encode_seconds = time.monotonic() - encode_started
    finally:
        service.runner.release(generation)
    response = ImageGenerationResponse(
        created=int(time.time()),
        data=[
            ImageData(b64_json=b64, seed=seed)
            for b64, seed in zip(encoded, generation.seeds, strict=True)
        ],
    )
    timing = (
        f"queue;dur={generation.queue_seconds() * 1000:.1f}, "
        f"inference;dur={generation.inference_seconds() * 1000:.1f}, "
        f"encode;dur={encode_seconds * 1000:.1f}"
    )
    headers = {"Server-Timing": timing}
    if service.shed_connection():
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
