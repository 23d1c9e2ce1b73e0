"""Admin endpoints (off unless SLEEPWELL_ADMIN_KEY is set): hot model swap, and the way back.

Both publish what every worker should serve (app/serving/model_swap.py); with the jobs
database that outlives restarts, which is why ``reset`` exists: it returns every worker to
the configured model (SLEEPWELL_MODEL, or the demo model) under its configured name.
"""

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
    origin: str | None = Field(None, description="why this model is served (as /health says)")


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
        load_seconds=round(new.load_seconds, 3), origin=service.health.facts.model_origin,
    )


@router.post("/admin/models/reset")
async def reset_model(service: ServiceDep, _admin: AdminDep) -> LoadModelResponse:
    """Undo every swap: serve the configured model again, under its configured name, on
    every worker and after restarts (a published swap otherwise outlives them)."""
    if service.engine.model is None:
        raise ServiceUnavailable("The first model is still loading; retry shortly.",
                                 code="model_loading", retry_after_s=5)
    configured = service.settings.served_model_name
    try:
        new, previous = await service.swapper.swap_everywhere(None)
    except Exception as exc:  # the configured model did not load: the current one serves on
        raise ServiceUnavailable(
            f"Could not load the configured model {configured!r}; still serving "
            f"{service.model_name!r}. Cause: {exc}",
            code="model_load_failed", retry_after_s=30,
        ) from exc
    return LoadModelResponse(
        model=new.name, source=new.source, previous=previous,
        load_seconds=round(new.load_seconds, 3), origin=service.health.facts.model_origin,
        note="the other workers return to the configured model within seconds",
    )
