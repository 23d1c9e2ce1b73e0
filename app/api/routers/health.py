"""Liveness, readiness and the deep report. No auth, no rate limits, no waiting."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from app.api.deps import ServiceDep

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
    ok, body = service.health.report()
    # --- jobs (issue 10): the job database's state, shown but never failing the report:
    # the sync API does not need the database, so an outage must not take this replica out
    # of rotation (readiness stays green); job endpoints answer 503 + Retry-After instead.
    jobs = getattr(request.app.state, "jobs", None)
    if getattr(request.app.state.settings, "jobs_enabled", False):
        body["checks"]["jobs"] = bool(jobs is not None and jobs.available)
        if jobs is not None and not jobs.available:
            body["jobs_error"] = jobs.last_error
    # --- end jobs
    return _answer(ok, body)
