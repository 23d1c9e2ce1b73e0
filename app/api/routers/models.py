"""GET /v1/models in OpenAI's list shape."""

from __future__ import annotations

from fastapi import APIRouter

from app.api.deps import ServiceDep
from app.contract.images import ModelCard, ModelList
from app.serving.admission import check_model

router = APIRouter(tags=["models"])


@router.get("/v1/models")
async def list_models(service: ServiceDep) -> ModelList:
    created = int(service.health.facts.started_at_wall)
    return ModelList(data=[ModelCard(id=service.model_name, created=created)])


@router.get("/v1/models/{model_id:path}")
async def get_model(model_id: str, service: ServiceDep) -> ModelCard:
    check_model(model_id, service.model_name)
    return ModelCard(id=model_id, created=int(service.health.facts.started_at_wall))
