"""The SAQ queues (PostgreSQL backend) that deliver jobs and webhooks to workers.

SAQ gives us ``FOR UPDATE SKIP LOCKED`` dequeues, per-job heartbeats, a sweep that puts a
job whose heartbeat stopped (its worker died) back in the queue, retries with backoff, and
TTL cleanup. Its traps, and what we do about them:

- Defaults (timeout 10 s, heartbeat off, 1 retry) would abort a generation after 10 s and
  never redeliver a SIGKILLed worker's job: every job here sets timeout 0 (our own
  deadlines apply), heartbeat SLEEPWELL_JOB_HEARTBEAT_S and SLEEPWELL_JOB_MAX_ATTEMPTS.
- ``Worker.start()`` replaces uvicorn's SIGINT/SIGTERM handlers: generations are taken by
  our own loop (consumer.py) through ``dequeue``; the webhook Worker has ``SIGNALS = []``.
- Dequeue polls (``poll_interval``) instead of LISTEN, so a restarted database costs one
  failed poll, not a dead listener connection held forever.
- At-least-once: a job may run twice; results are written once, by job id (store.py).
"""

from __future__ import annotations

from typing import Any

from psycopg_pool import AsyncConnectionPool
from saq.job import Job, Status
from saq.queue.postgres import PostgresQueue

from app.settings import Settings

GENERATIONS = "sleepwell-generations"
WEBHOOKS = "sleepwell-webhooks"
GENERATE_FUNCTION = "generate"
# SAQ dequeues by (priority, scheduled), and a retry gets scheduled "now": a redelivered job
# would queue behind the whole backlog. New jobs get NEW; redelivered ones AGAIN, in front.
NEW, AGAIN = 10, 0


def _queue(pool: AsyncConnectionPool[Any], name: str) -> PostgresQueue:
    return PostgresQueue(pool=pool, name=name, manage_pool_lifecycle=False)


class JobQueue:
    def __init__(self, pool: AsyncConnectionPool[Any], settings: Settings) -> None:
        self.settings = settings
        self.generations = _queue(pool, GENERATIONS)
        self.webhooks = _queue(pool, WEBHOOKS)

    @staticmethod
    async def prepare(url: str, settings: Settings) -> None:
        """SAQ's own migrations (its tables, its advisory lock), from the master."""
        from app.jobs.database import connection_kwargs

        async with AsyncConnectionPool(url, min_size=1, max_size=2, open=False,
                                       kwargs=connection_kwargs(settings)) as pool:
            await _queue(pool, GENERATIONS).init_db()

    async def connect(self) -> None:
        await self.generations.connect()
        await self.webhooks.connect()

    async def disconnect(self) -> None:
        await self.generations.disconnect()
        await self.webhooks.disconnect()

    async def enqueue_generation(self, job_id: str) -> None:
        await self.generations.enqueue(
            GENERATE_FUNCTION,
            key=job_id,
            timeout=0,
            heartbeat=self.settings.job_stuck_after_s,
            retries=self.settings.job_max_attempts,
            ttl=int(self.settings.job_ttl_s),
            priority=NEW,
        )

    async def hand_back(self, job: Job, reason: str) -> None:
        """A draining worker returns a job: queued again, ahead of new ones."""
        await self.generations.retry(job, reason)
        await self._to_front([job.key])

    async def _to_front(self, keys: list[str]) -> None:
        async with self.generations.pool.connection() as conn:
            await conn.execute(
                "UPDATE saq_jobs SET priority = %s WHERE queue = %s AND key = ANY(%s)"
                " AND status = 'queued'", (AGAIN, GENERATIONS, keys))

    async def dequeue_generation(self) -> Job | None:
        return await self.generations.dequeue(
            timeout=self.settings.job_poll_interval_s * 4,
            poll_interval=self.settings.job_poll_interval_s,
        )

    async def abort_queued(self, job_id: str) -> None:
        """A cancelled job that has not started: SAQ marks it aborted, nobody dequeues it."""
        job = await self.generations.job(job_id)
        if job is not None and job.status == Status.QUEUED:
            await self.generations.abort(job, error="cancelled")

    async def sweep(self) -> list[str]:
        """Requeue jobs whose heartbeat stopped. ``abort=None``: do not wait (SAQ's default
        waits 5 s on a LISTEN for a dead worker to acknowledge, delaying redelivery)."""
        swept: list[str] = await self.generations.sweep(abort=None)  # type: ignore[arg-type]
        if swept:
            await self._to_front(swept)
        return swept + await self.webhooks.sweep(abort=None)  # type: ignore[arg-type]
