"""Admin endpoints (off unless SLEEPWELL_ADMIN_KEY is set): hot model swap."""

from __future__ import annotations

from fastapi import APIRouter
from pydantic import BaseModel, Field

from app.api.deps import ServiceDep
from app.errors import InvalidRequest, ServiceUnavailable
from app.security.keys import AdminDep

router = APIRouter(tags=["admin"])


class LoadModelRequest(BaseModel):
    model: str = Field(min_length=1, max_length=1024, description="local path or hub id")


class LoadModelResponse(BaseModel):
    model: str
    source: str
    previous: str | None
    load_seconds: float
    note: str = "the other workers load it beside their current model and swap within seconds"


@router.post("/admin/models/load")
async def load_model(
    body: LoadModelRequest, service: ServiceDep, _admin: AdminDep
) -> LoadModelResponse:
    """Swap the served model on every worker, loading it beside the old one first."""
    if service.engine.model is None:
        raise ServiceUnavailable("The first model is still loading; retry shortly.",
                                 code="model_loading", retry_after_s=5)
    try:
        new, previous = await service.swapper.swap_everywhere(body.model)
    except Exception as exc:  # any load failure: the old model keeps serving
        raise InvalidRequest(
            f"Could not load model {body.model!r}; still serving "
            f"{service.model_name!r}. Cause: {exc}",
            param="model", code="model_load_failed",
        ) from exc
    return LoadModelResponse(
        model=new.name, source=new.source, previous=previous,
        load_seconds=round(new.load_seconds, 3),
    )
