"""Liveness, readiness and the deep report. No auth, no rate limits, no waiting."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from app.api.deps import ServiceDep
from app.serving.health import with_jobs

router = APIRouter(tags=["health"])


def _answer(ok: bool, body: dict[str, Any], retry_after: bool = False) -> JSONResponse:
    headers = {"Cache-Control": "no-store"}
    if not ok and retry_after:
        headers["Retry-After"] = "5"
    return JSONResponse(body, status_code=200 if ok else 503, headers=headers)


@router.get("/health/live")
async def live(service: ServiceDep) -> JSONResponse:
    """200 while the process and loop are alive; 503 only when a generation is stalled."""
    return _answer(*service.health.liveness())


@router.get("/health/ready")
async def ready(service: ServiceDep) -> JSONResponse:
    """200 only when this worker should get traffic; 503 with the reasons otherwise."""
    return _answer(*service.health.readiness(), retry_after=True)


@router.get("/health")
async def deep(service: ServiceDep, request: Request) -> JSONResponse:
    """200 "healthy" or "degraded" (images serve, jobs cannot run); 503 "unhealthy"."""
    ok, body = service.health.report()
    # Jobs (issue 10): shown, and a jobs outage makes a healthy worker "degraded" (issue 20),
    # but never fails the report: the sync API does not need the database (see with_jobs).
    if getattr(request.app.state.settings, "jobs_enabled", False):
        jobs = getattr(request.app.state, "jobs", None)
        available = bool(jobs is not None and jobs.available)
        error = jobs.last_error if jobs is not None and not available else None
        body = with_jobs(ok, body, available, error)
    return _answer(ok, body)
