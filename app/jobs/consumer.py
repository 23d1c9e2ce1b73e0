"""Takes jobs into this worker's Runner while it has idle capacity, and records the outcome.

Policy: synchronous requests first; jobs fill idle capacity. A job is dequeued only when no
synchronous request waits in this worker's queue, the runner has a free batch slot
(``Runner.spare_capacity``), and fewer than a batch of jobs is in hand, so no worker hoards
jobs another worker could run. A job then runs exactly like a synchronous request: the same
admission (``build_generation`` or ``build_edit``: app/jobs/work.py), runner, batching, step
callback, health and metrics, with its own deadline (SLEEPWELL_JOB_TIMEOUT_S). From dequeue
until its outcome is recorded or handed back, a job has a heartbeat of its own
(heartbeat.py), whatever else the run is waiting on.

``run_forever`` returns only when the worker stops taking jobs; anything else it raises
ends up in the component's supervisor, which logs, counts and restarts it.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

from saq.job import Job, Status

from app.contract.images import ImageData
from app.errors import Cancelled, QueueFull, ServiceUnavailable, SleepwellError
from app.jobs.database import DATABASE_DOWN, Database
from app.jobs.heartbeat import Heartbeat
from app.jobs.job_log import log_finished, log_started
from app.jobs.partials import PartialPublisher
from app.jobs.queue import JobQueue
from app.jobs.schemas import JobStatus
from app.jobs.store import JobStore, RunOutcome
from app.jobs.webhooks import Webhooks
from app.jobs.work import job_generation
from app.observability import metrics
from app.serving.generation import Generation
from app.serving.health import SERVING_STATES
from app.serving.service import Service

logger = logging.getLogger("sleepwell.jobs.consumer")
# Answers that say "this worker cannot run it now", not "this job is bad": try another.
RETRYABLE_CODES = {"draining", "shutting_down", "worker_stalled", "scheduler_failed",
                   "model_switching", "out_of_memory",
                   "model_loading", "queue_full"}
_FINAL_WRITE_TRIES = 60
# A job whose runs stalled this many workers is failed, not handed to yet another one: one
# stall may be the GPU's (a second worker tells), two in a row are the job's.
STALLS_BEFORE_FAILING = 2
T = TypeVar("T")


@dataclass(eq=False)
class ActiveJob:
    saq_job: Job
    heartbeat: Heartbeat
    row: dict[str, Any] = field(default_factory=dict)
    generation: Generation | None = None
    partials: PartialPublisher | None = None  # its partial images, when it asked for some
    cancelled: bool = False
    tasks: list[asyncio.Task[Any]] = field(default_factory=list)
    dequeued_at: float = field(default_factory=time.monotonic)

    @property
    def id(self) -> str:
        return self.saq_job.key

    @property
    def attempt(self) -> int:
        """This run's number (``sleepwell_job_runs.attempt``); 0 before it started."""
        return int(self.row.get("attempts", 0))


def error_of(exc: SleepwellError) -> dict[str, Any]:
    return {"message": exc.message, "type": exc.error_type, "code": exc.code}


class Consumer:
    def __init__(self, service: Service, database: Database, store: JobStore, queue: JobQueue,
                 webhooks: Webhooks) -> None:
        self.service, self.settings = service, service.settings
        self.database, self.store, self.queue, self.webhooks = database, store, queue, webhooks
        self.worker_id = f"{socket.gethostname()}:{os.getpid()}"
        self.active: dict[str, ActiveJob] = {}
        self.taking = True
        self._runs: set[asyncio.Task[None]] = set()

    # --- taking jobs ------------------------------------------------------------------
    def has_room(self) -> bool:
        runner = self.service.runner
        if not self.taking or self.service.health.state() not in SERVING_STATES:
            return False
        ours = {id(job.generation) for job in self.active.values()}
        sync_waiting = any(id(generation) not in ours for generation in runner.queue)
        return (not sync_waiting and runner.spare_capacity() > 0
                and len(self.active) < runner.max_batch)

    async def run_forever(self) -> None:
        pause = self.settings.job_poll_interval_s
        while self.taking:
            if not self.has_room():
                await asyncio.sleep(self.settings.job_poll_interval_s / 2)
                continue
            try:
                job = await self.database.bounded(self.queue.dequeue_generation())
            except DATABASE_DOWN:  # marked down by bounded(); the loop rides it out
                await asyncio.sleep(pause)
                pause = min(pause * 2, 5.0)
                continue
            pause = self.settings.job_poll_interval_s
            if job is None:
                await asyncio.sleep(self.settings.job_poll_interval_s)
            else:
                self._spawn(job)

    def _spawn(self, saq_job: Job) -> None:
        job = ActiveJob(saq_job, Heartbeat(self.database, self.queue, saq_job,
                                              self.settings))
        job.heartbeat.start()  # from the dequeue on, until the outcome is recorded
        self.active[job.id] = job  # now, so the next has_room() already counts it
        task = asyncio.create_task(self._run(job), name=f"job-{saq_job.key}")
        self._runs.add(task)
        task.add_done_callback(self._runs.discard)

    async def stop(self, timeout_s: float) -> None:
        """After the runner stopped: let each job record its outcome or hand it back."""
        self.taking = False
        if self._runs:
            _, pending = await asyncio.wait(set(self._runs), timeout=timeout_s)
            for task in pending:
                task.cancel()

    # --- one job ----------------------------------------------------------------------
    async def _run(self, job: ActiveJob) -> None:
        try:
            await self._run_guarded(job)
        except DATABASE_DOWN as exc:
            # The database went away mid-job: its heartbeat stops (below), and the sweep
            # gives the job to a worker once the database is back (after stuck-after).
            logger.warning("job %s left for redelivery: %s", job.id, exc)
        except Exception:
            logger.exception("job %s: unexpected error in the consumer", job.id)
        finally:
            await job.heartbeat.stop()
            for task in job.tasks:
                task.cancel()
            if self.active.get(job.id) is job:  # not a twin run of the same job, here too
                del self.active[job.id]

    async def _run_guarded(self, job: ActiveJob) -> None:
        job.saq_job.attempts += 1
        await self.database.bounded(job.saq_job.update())  # the attempt; the first beat
        row = await self.database.bounded(self.store.start(job.id, self.worker_id))
        if row is None:  # cancelled while queued, or a twin delivery already finished it
            await self._persist(lambda: self.queue.generations.finish(job.saq_job, Status.COMPLETE))
            return
        job.row = row
        log_started(row, self.worker_id)
        if row["attempts"] > 1:
            metrics.JOB_REDELIVERIES.inc()
        if row["cancel_requested"]:
            await self._record(job, JobStatus.CANCELLED, error=error_of(_cancelled()))
            return
        await self._notify_quietly(row, "started")
        try:
            data = await self._generate(job, row)
        except SleepwellError as exc:
            await self._after_error(job, exc)
            return
        await self._record(job, JobStatus.SUCCEEDED, result=data)

    async def _generate(self, job: ActiveJob, row: dict[str, Any]) -> list[dict[str, Any]]:
        model = self.service.engine.model
        if model is None:
            raise ServiceUnavailable("The model is not loaded.", code="model_loading")
        # A generation or an edit (app/jobs/work.py), with the seed fixed at submission:
        # a redelivery makes the same image.
        generation = await job_generation(row, self.store, self.settings, model,
                                          f"job-{job.id}")
        job.generation = generation
        job.partials = PartialPublisher(row, generation, self.database, self.webhooks,
                                        self.service.encoder)
        await self._submit(generation)
        job.tasks.append(asyncio.create_task(self._watch(job, generation)))
        try:
            images = await generation.future
            await job.partials.publish()  # the last ones, before the job is final
            encoded = await self.service.encoder.encode(images, generation.params.output_format)
        finally:
            self.service.runner.release(generation)
        return [ImageData(b64_json=b64, seed=seed).model_dump(exclude_none=True)
                for b64, seed in zip(encoded, generation.seeds, strict=True)]

    async def _submit(self, generation: Generation) -> None:
        """A sync request may have taken the last slot since we looked: wait for one."""
        while True:
            try:
                self.service.runner.submit(generation)
                return
            except QueueFull:
                if not self.taking:
                    raise
                await asyncio.sleep(self.settings.job_poll_interval_s)

    async def _watch(self, job: ActiveJob, generation: Generation) -> None:
        """Progress to the database (throttled), progress webhooks, and cancel requests.
        Heartbeats are not here: they never wait on any of this."""
        steps, last_step = generation.params.denoising_steps, -1
        while not generation.future.done():
            await asyncio.sleep(self.settings.job_progress_interval_s)
            if job.partials is not None:
                await job.partials.publish()
            step = min(generation.steps_done, steps)
            try:
                if await self.store.progress(job.id, step):
                    job.cancelled = True
                    self.service.runner.cancel(generation, _cancelled())
                    return
            except DATABASE_DOWN:
                continue  # the next interval writes it
            if step != last_step:
                last_step = step
                await self._notify_quietly(job.row, "progress", step)

    async def _notify_quietly(self, row: dict[str, Any], event: str, step: int = 0) -> None:
        """A started/progress webhook that cannot be enqueued is lost, never the run."""
        try:
            if event == "progress":
                await self.webhooks.notify_progress(row, step)
            else:
                await self.webhooks.notify(row, event)
        except Exception as exc:
            logger.warning("job %s: %s webhook not enqueued: %s: %s", row["id"], event,
                           type(exc).__name__, exc)

    async def _after_error(self, job: ActiveJob, exc: SleepwellError) -> None:
        if isinstance(exc, Cancelled) and job.cancelled:
            await self._record(job, JobStatus.CANCELLED, error=error_of(exc))
        elif exc.code == "worker_stalled" and await self._stalled_too_often(job):
            await self._record(job, JobStatus.FAILED, error=error_of(_stalled(exc)))
        elif exc.code in RETRYABLE_CODES and job.saq_job.retryable:
            outcome = RunOutcome.STALLED if exc.code == "worker_stalled" else RunOutcome.HANDED_BACK
            log_finished(job.row, outcome, job.dequeued_at, reason=exc.code)
            await self._end_run(job, outcome)
            await self.database.bounded(self.store.requeue(job.id))
            await self.database.bounded(self.queue.hand_back(job.saq_job, exc.code or "retry"))
        else:
            await self._record(job, JobStatus.FAILED, error=error_of(exc))

    async def _stalled_too_often(self, job: ActiveJob) -> bool:
        return await self.store.stalled_runs(job.id) + 1 >= STALLS_BEFORE_FAILING

    async def _record(self, job: ActiveJob, status: JobStatus, *, result: Any = None,
                      error: dict[str, Any] | None = None) -> None:
        """The final write with this run's outcome, the "completed" webhook, then SAQ's
        row. Both writes are retried while the database is away (the heartbeat goes on); the
        final write is idempotent per run, so a retry after a lost answer counts nothing
        twice."""
        won = await self._persist(lambda: self.store.finish(
            job.id, status, result=result, error=error, attempt=job.attempt))
        log_finished(job.row, status.value if won is not None else RunOutcome.DUPLICATE,
                     job.dequeued_at, reason=(error or {}).get("code"))
        if won is not None:
            metrics.JOBS.labels(status=status.value, kind=won["kind"]).inc()
            await self._notify_completed(won)
        else:
            metrics.JOB_DUPLICATE_RUNS.inc()
            logger.warning("job %s: run %d on %s ended (%s) after another run had already made "
                           "the job final; its result is discarded", job.id, job.attempt,
                           self.worker_id, status.value)
        await self._persist(lambda: self.queue.generations.finish(job.saq_job, Status.COMPLETE))

    async def _persist(self, write: Callable[[], Awaitable[T]]) -> T:
        """One idempotent write, each try bounded, retried for about a minute while the
        database is away; DATABASE_DOWN after the last try."""
        for attempt in range(_FINAL_WRITE_TRIES):
            try:
                return await self.database.bounded(write())
            except DATABASE_DOWN:
                if attempt == _FINAL_WRITE_TRIES - 1:
                    raise
                await asyncio.sleep(1.0)
        raise AssertionError("unreachable")

    async def _notify_completed(self, row: dict[str, Any]) -> None:
        """If this fails, maintenance.renotify enqueues it later from the final row."""
        try:
            await self.webhooks.notify(row, "completed")
            await self.store.mark_notified(row["id"])
        except Exception as exc:
            logger.warning("job %s: completed webhook not enqueued now (%s: %s); maintenance "
                           "will", row["id"], type(exc).__name__, exc)

    async def _end_run(self, job: ActiveJob, outcome: str) -> None:
        """Best effort: a run row left without an outcome reads as "never reported back"."""
        try:
            await self.store.end_run(job.id, job.attempt, outcome)
        except Exception as exc:
            logger.warning("job %s: outcome of run %d not recorded: %s", job.id, job.attempt, exc)


def _cancelled() -> Cancelled:
    return Cancelled("The job was cancelled.", code="job_cancelled")


def _stalled(exc: SleepwellError) -> SleepwellError:
    return type(exc)(
        f"The job stopped making progress on {STALLS_BEFORE_FAILING} workers in a row; it is "
        f"not run again. Last: {exc.message}", code="job_stalled")
