"""/v1/jobs: durable async image generation (submit, watch, cancel, list). Logic: app/jobs."""

from __future__ import annotations

import contextlib
import uuid
from typing import Annotated, Any

from fastapi import APIRouter, Header, Query, Request
from fastapi.responses import JSONResponse
from sse_starlette import EventSourceResponse
from starlette.background import BackgroundTask

from app.api.deps import RequestIdDep, ServiceDep
from app.errors import Forbidden, InvalidRequest, NotFound, ServiceUnavailable
from app.jobs.component import JobsComponent
from app.jobs.database import DATABASE_DOWN, UNAVAILABLE_ERRORS
from app.jobs.events import job_events
from app.jobs.job_log import log_cancel_requested
from app.jobs.schemas import FINAL_STATUSES, JobCreateRequest, JobList, JobStatus, JobView
from app.jobs.store import NewJob
from app.jobs.work import admit_job
from app.net.ssrf import check_target
from app.observability import metrics
from app.security.keys import KeyRing, bearer_token

router = APIRouter(tags=["jobs"])
ANONYMOUS = "anonymous"  # the owner of every job while API keys are off


def get_jobs(request: Request) -> JobsComponent:
    jobs: JobsComponent | None = getattr(request.app.state, "jobs", None)
    if jobs is None:
        raise ServiceUnavailable(
            "Jobs need a database: set SLEEPWELL_DATABASE_URL or run under gunicorn "
            "(make run), which starts the embedded one.", code="jobs_unavailable",
            retry_after_s=30)
    jobs.require()
    return jobs


def owner_of(request: Request) -> str:
    return str(getattr(request.state, "key_id", None) or ANONYMOUS)


def is_admin(request: Request) -> bool:
    header = request.headers.get("authorization")
    token = bearer_token(header.encode("latin-1")) if header is not None else None
    return KeyRing.of(request.app.state.settings.admin_key).match(token)


def _answer(view: JobView, status_code: int = 200, **headers: str) -> JSONResponse:
    return JSONResponse(view.wire(), status_code=status_code, headers=headers)


async def _owned(jobs: JobsComponent, job_id: str, request: Request) -> dict[str, Any]:
    """The job, if it exists for this caller: another key's job is a 404 like no job."""
    row = await jobs.store.get(job_id)
    if row is None or row["owner"] != owner_of(request):
        raise NotFound(f"No job '{job_id}' exists for this API key.", param="id",
                       code="job_not_found")
    if row["expired"]:
        raise NotFound(
            f"Job '{job_id}' expired at {row['expires_at'].isoformat()}: results are kept "
            f"{jobs.settings.job_ttl_s:g}s after the job ends (SLEEPWELL_JOB_TTL_S).",
            param="id", code="job_expired")
    return row


@router.post("/v1/jobs", status_code=202, response_model=JobView)
async def create_job(
    body: JobCreateRequest, request: Request, service: ServiceDep, request_id: RequestIdDep,
    idempotency_key: Annotated[str | None, Header(max_length=255)] = None,
) -> JSONResponse:
    jobs = get_jobs(request)
    if is_admin(request):
        # The admin key is not rate limited per key and owns nothing: a job it made could
        # be read by no key at all.
        raise Forbidden("The admin key cannot submit jobs; use an API key.",
                        code="admin_key_not_for_jobs")
    request.state.kind = body.kind.value  # for the access line
    # Validated against this worker's model; it need not be ready or idle: the queue is
    # durable and any worker may run the job. Not a generation request, so not counted here.
    model = service.engine.model
    if model is None:
        raise ServiceUnavailable("The model is still loading; retry shortly.",
                                 code="model_loading", retry_after_s=5)
    admitted = await admit_job(body, service.settings, model, request_id)
    if body.webhook is not None:
        if jobs.webhooks.signer is None:
            raise InvalidRequest("Webhooks need SLEEPWELL_WEBHOOK_SECRET on the server.",
                                 param="webhook", code="webhooks_disabled")
        await check_target(body.webhook, service.settings)
    new = NewJob(
        id=f"job_{uuid.uuid4().hex}", owner=owner_of(request), idempotency_key=idempotency_key,
        request=admitted.request, seed=admitted.seed, steps=admitted.steps,
        webhook_url=body.webhook, webhook_events=list(body.webhook_events),
        request_id=request_id, kind=admitted.kind.value, inputs=admitted.inputs,
    )
    row, created = await jobs.store.create(new)
    if created:
        try:
            await jobs.queue.enqueue_generation(row["id"])
        except UNAVAILABLE_ERRORS as exc:  # durable anyway: maintenance re-enqueues it
            jobs.database.mark_down(exc)
    headers = {"Location": f"/v1/jobs/{row['id']}"}
    if not created:
        headers["Idempotent-Replayed"] = "true"
    return _answer(JobView.from_row(row, with_result=False), 202, **headers)


@router.get("/v1/jobs/{job_id}", response_model=JobView)
async def get_job(job_id: str, request: Request) -> JSONResponse:
    jobs = get_jobs(request)
    return _answer(JobView.from_row(await _owned(jobs, job_id, request)))


@router.get("/v1/jobs/{job_id}/events")
async def job_event_stream(job_id: str, request: Request) -> EventSourceResponse:
    """Bounded per worker (429 before any database read); this worker's one poller feeds
    every stream (app/jobs/streams.py)."""
    jobs = get_jobs(request)
    watch = jobs.streams.open(job_id)
    try:
        watch.update(await _owned(jobs, job_id, request))
    except BaseException:
        watch.close()
        raise
    # The stream's own end gives the slot back; the background task too, for a response
    # whose stream never started (HEAD, an early disconnect).
    return EventSourceResponse(job_events(watch), ping=15, headers={"Cache-Control": "no-store"},
                               background=BackgroundTask(watch.close))


@router.post("/v1/jobs/{job_id}/cancel", response_model=JobView)
async def cancel_job(job_id: str, request: Request, request_id: RequestIdDep) -> JSONResponse:
    """Queued: never runs. Running: ``cancel_requested``, stops at the next denoising step.
    Final: unchanged."""
    jobs = get_jobs(request)
    row = await _owned(jobs, job_id, request)
    if JobStatus(row["status"]) in FINAL_STATUSES:
        return _answer(JobView.from_row(row))
    cancelled = await jobs.store.request_cancel(job_id)
    log_cancel_requested(row, cancelled, request_id)
    if cancelled is not None and cancelled["status"] == JobStatus.CANCELLED.value:
        metrics.JOBS.labels(status="cancelled", kind=cancelled["kind"]).inc()
        await jobs.queue.abort_queued(job_id)
        # Not enqueued (the database blinked): maintenance enqueues it from the final row.
        with contextlib.suppress(*DATABASE_DOWN):
            await jobs.webhooks.notify(cancelled, "completed")
            await jobs.store.mark_notified(job_id)
    return _answer(JobView.from_row(cancelled or await _owned(jobs, job_id, request)))


@router.get("/v1/jobs", response_model=JobList)
async def list_jobs(
    request: Request,
    status: JobStatus | None = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
) -> JSONResponse:
    """The admin key lists every key's jobs (operators); an API key lists its own."""
    jobs = get_jobs(request)
    owner = None if is_admin(request) else owner_of(request)
    rows = await jobs.store.list(owner, status.value if status else None, limit)
    views = [JobView.from_row(row, with_result=False) for row in rows]
    return JSONResponse(JobList(data=views).model_dump(mode="json", exclude_none=True))
