"""POST /v1/images/generations: OpenAI's image API on the local pipeline."""

from __future__ import annotations

import time

from fastapi import APIRouter, Request
from fastapi.responses import Response

from app.api.answers import answer_images
from app.api.deps import RequestIdDep, ServiceDep
from app.api.streaming import STREAM_RESPONSE_DOC
from app.contract.images import ImageGenerationRequest, ImageGenerationResponse, WorkKind
from app.serving.admission import build_generation

router = APIRouter(tags=["images"])


@router.post("/v1/images/generations", response_model=ImageGenerationResponse,
             responses=STREAM_RESPONSE_DOC)
async def generate_images(
    body: ImageGenerationRequest, request: Request, service: ServiceDep, request_id: RequestIdDep
) -> Response:
    arrived_at = time.monotonic()
    request.state.kind = WorkKind.GENERATE.value  # for the access line
    model = await service.serving_model(arrived_at, requested=body.model, kind=WorkKind.GENERATE)
    generation = build_generation(body, service.settings, model, request_id, arrived_at)
    return await answer_images(service, generation, request, stream=body.stream,
                               progress=body.stream_progress)
