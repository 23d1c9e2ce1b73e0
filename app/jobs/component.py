"""The jobs component of one worker: database pool, queues, consumer, webhooks, probes.

``Service`` owns one (when SLEEPWELL_JOBS_ENABLED) and brackets it with start()/stop().
Nothing connects at import or construction. A database that is down never blocks start:
the component keeps trying in the background, job endpoints answer 503 + Retry-After, the
sync API is untouched, and consumption resumes by itself when the database is back.
The consumer loop is supervised (supervisor.py): /health's ``checks.jobs`` is false while
it is down as well as while the database is.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

from app.jobs import maintenance
from app.jobs.consumer import Consumer
from app.jobs.database import DATABASE_DOWN, Database, database_unavailable
from app.jobs.migrations import migrate
from app.jobs.queue import JobQueue
from app.jobs.store import JobStore
from app.jobs.streams import JobStreams
from app.jobs.supervisor import Supervised
from app.jobs.webhooks import Webhooks
from app.observability import metrics
from app.serving.service import Service
from app.settings import Settings

logger = logging.getLogger("sleepwell.jobs")
_MAINTENANCE_EVERY_S = 10.0
# SAQ's schema setup: a connection of its own, its migrations, then a check on our pool.
_SCHEMA_TIMEOUTS = 2


class JobsComponent:
    def __init__(self, service: Service, database: Database) -> None:
        self.settings = service.settings
        self.database = database
        self.store = JobStore(self.database, self.settings.job_ttl_s)
        self.queue = JobQueue(self.database.pool, self.settings)
        self.webhooks = Webhooks(self.settings, self.queue)
        self.consumer = Consumer(service, self.database, self.store, self.queue, self.webhooks)
        self.consumer_loop = Supervised("job consumer", self.consumer.run_forever,
                                        self._ensure_schema, metrics.JOBS_CONSUMER_RESTARTS.inc)
        self.streams = JobStreams(self.database, self.settings)  # GET /v1/jobs/{id}/events
        self.connected = False
        self._tasks: list[asyncio.Task[Any]] = []
        self._last_maintenance = 0.0

    @property
    def available(self) -> bool:
        """/health's checks.jobs: the database answers and this worker consumes jobs."""
        return self.connected and self.database.available and self.consumer_loop.up

    @property
    def last_error(self) -> str:
        """/health's jobs_error, when not ``available``."""
        if self.connected and self.database.available and not self.consumer_loop.up:
            return self.consumer_loop.last_error or "the job consumer is down"
        return self.database.last_error or "not connected yet"

    def require(self) -> None:
        """Job endpoints call this first: 503 + Retry-After while the database is away
        (not while only this worker's consumer is down: any worker may run the job)."""
        if not (self.connected and self.database.available):
            raise database_unavailable(self.database.last_error or "not connected yet")

    # --- lifecycle ----------------------------------------------------------------------
    async def start(self) -> None:
        metrics.initialise_job_series()
        self._tasks.append(asyncio.create_task(self._connect_then_run(), name="jobs"))

    def stop_taking(self) -> None:
        """Drain begins: take no new job (running ones finish or are handed back)."""
        self.consumer.taking = False

    async def stop(self) -> None:
        """After the runner stopped: record outcomes, hand back the rest, close the pool."""
        await self.consumer.stop(timeout_s=5.0)
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        with contextlib.suppress(Exception):
            await self.webhooks.close()
        await self.streams.close()
        await self.database.close()

    # --- background ---------------------------------------------------------------------
    async def _connect_then_run(self) -> None:
        await self._retry_until_done(self._connect)
        self.connected = True
        logger.info("jobs: connected; consuming while this worker has idle capacity")
        self._tasks.append(asyncio.create_task(self.consumer_loop.run_forever(),
                                               name="jobs-consumer"))
        self._tasks.append(asyncio.create_task(self.webhooks.worker.start(), name="webhooks"))
        self._tasks.append(asyncio.create_task(self._probe_forever(), name="jobs-probe"))
        self._tasks.append(asyncio.create_task(self._sweep_forever(), name="jobs-sweep"))

    async def _connect(self) -> None:
        await self.database.bounded(self._migrate())
        # SAQ's schema setup connects on a pool of its own, then checks on ours.
        await self.database.bounded(self.queue.connect(), _SCHEMA_TIMEOUTS * self._limit_s)

    async def _migrate(self) -> None:
        async with self.database.connection() as conn:
            await migrate(conn)  # a no-op when the master already did it

    async def _ensure_schema(self) -> None:
        await self.database.bounded(self.queue.ensure_schema(), _SCHEMA_TIMEOUTS * self._limit_s)

    @property
    def _limit_s(self) -> float:
        return self.database.operation_limit_s

    async def _retry_until_done(self, step: Callable[[], Awaitable[None]]) -> None:
        pause = 0.5
        while True:
            try:
                await step()
                return
            except Exception as exc:  # database errors mostly; never let the loop die
                self.database.mark_down(exc)
                await asyncio.sleep(pause)
                pause = min(pause * 2, 5.0)

    async def _probe_forever(self) -> None:
        """The database check behind /health's checks.jobs, the backlog gauges, the sweep."""
        while True:
            try:
                await self._probe()
            except DATABASE_DOWN:  # bounded() marked it down with the reason
                metrics.JOBS_DATABASE_UP.set(0)
            except Exception as exc:  # anything else: report, keep probing
                self.database.mark_down(exc)
                metrics.JOBS_DATABASE_UP.set(0)
            await asyncio.sleep(self.settings.jobs_probe_interval_s)

    async def _sweep_forever(self) -> None:
        """Redelivery: jobs whose heartbeat stopped go back to the queue (each pass takes a
        transaction-level lock: one worker sweeps it, the others' calls return at once)."""
        while True:
            try:
                swept = await self.database.bounded(self.queue.sweep())
            except Exception as exc:  # database errors mostly; the next pass tries again
                logger.debug("jobs: sweep pass failed: %s: %s", type(exc).__name__, exc)
                swept = []
            if swept:
                logger.warning("jobs: redelivering %d job(s) whose worker went silent: %s",
                               len(swept), ", ".join(swept))
            await asyncio.sleep(self.settings.job_sweep_interval_s)

    async def _probe(self) -> None:
        # A pool wait plus one statement: /health turns false within that of a freeze.
        queued, oldest_age = await self.database.bounded(
            maintenance.backlog(self.database), 2 * self.settings.database_timeout_s)
        metrics.JOBS_QUEUED.set(queued)
        metrics.JOBS_OLDEST_QUEUED_AGE.set(oldest_age)
        metrics.JOBS_DATABASE_UP.set(1)
        now = time.monotonic()
        if now - self._last_maintenance >= _MAINTENANCE_EVERY_S:
            self._last_maintenance = now
            await self.database.bounded(maintenance.reconcile(self.database, self.queue))
            await self.database.bounded(
                maintenance.renotify(self.database, self.store, self.webhooks))


async def open_database(settings: Settings) -> Database | None:
    """The worker's pool (opened without waiting for the server), or None without jobs."""
    if not settings.jobs_enabled:
        return None
    if settings.database_url is None:
        logger.warning("jobs: no SLEEPWELL_DATABASE_URL (gunicorn starts an embedded one); "
                       "job endpoints answer 503")
        return None
    database = Database(settings.database_url.get_secret_value(), settings)
    await database.open()
    return database


async def start_jobs(
    state: Any, service: Service, database: Database | None
) -> JobsComponent | None:
    """For create_app's lifespan: the component on ``state.jobs`` (and its pool on
    ``state.database``, for other components), or None when jobs are off or have no URL."""
    state.jobs, state.database = None, database
    if database is None:
        return None
    jobs = JobsComponent(service, database)
    await jobs.start()
    state.jobs = jobs
    return jobs
