"""The Prometheus scrape endpoint: the whole service's numbers from any worker."""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import Response

from app.api.deps import SettingsDep
from app.observability.metrics import render_latest

router = APIRouter(tags=["metrics"])


@router.get("/metrics")
async def scrape(settings: SettingsDep) -> Response:
    payload, content_type = render_latest(settings.prometheus_multiproc_dir)
    return Response(payload, media_type=content_type)
