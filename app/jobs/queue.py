"""The SAQ queues (PostgreSQL backend) that deliver jobs and webhooks to workers.

SAQ gives us the ``saq_jobs`` table and its schema, ``FOR UPDATE SKIP LOCKED`` dequeues,
retries with backoff, and TTL cleanup. Its traps, and what we do about them:

- Defaults (timeout 10 s, heartbeat off, 1 retry) would abort a generation after 10 s and
  never redeliver a SIGKILLed worker's job: every job here sets timeout 0 (our own
  deadline, SLEEPWELL_JOB_TIMEOUT_S, applies), heartbeat SLEEPWELL_JOB_STUCK_AFTER_S and
  SLEEPWELL_JOB_MAX_ATTEMPTS.
- ``Worker.start()`` replaces uvicorn's SIGINT/SIGTERM handlers: generations are taken by
  our own loop (consumer.py); the webhook Worker has ``SIGNALS = []``.
- ``dequeue`` parks rows it marked active in an in-process buffer, and a timeout can leave
  one there, unreturned and without a heartbeat: we dequeue one job per transaction
  ourselves (``dequeue_generation``), so a job is active only once it is in our hands.
- ``init_db`` returns silently when another session holds its try-lock, and keeps that
  session lock on a pooled connection: we run it on a connection of its own, closed after
  (a ``BoundedPool``: its check and its checkout are bounded like ours), and then check
  that the schema is really there (``SchemaNotReady`` otherwise).
- The sweep's session advisory lock is taken once and never checked again: sweeper.py
  takes a transaction-level lock on every pass instead.
- Our heartbeat touches only the ``touched`` time of a row that is still active, so a
  late beat never revives or rewrites a job the sweep already handed to another worker.
- At-least-once: a job may run twice; results are written once, by job id (store.py).
"""

from __future__ import annotations

from typing import Any

from psycopg.sql import Identifier
from psycopg_pool import AsyncConnectionPool
from saq.job import Job, Status
from saq.queue.postgres import PostgresQueue
from saq.queue.postgres_migrations import get_migrations
from saq.utils import now, now_seconds

from app.jobs.database import BoundedPool, connection_kwargs, hold_limit_s
from app.jobs.sweeper import sweep_queue
from app.settings import Settings

GENERATIONS = "sleepwell-generations"
WEBHOOKS = "sleepwell-webhooks"
GENERATE_FUNCTION = "generate"
# SAQ dequeues by (priority, scheduled), and a retry gets scheduled "now": a redelivered job
# would queue behind the whole backlog. New jobs get NEW; redelivered ones AGAIN, in front.
NEW, AGAIN = 10, 0
# A sweep pass starts no statement after this many database timeouts: with the one in
# flight and the commit (each under statement_timeout) it ends inside the hold limit (3).
_SWEEP_BUDGET_TIMEOUTS = 0.5


class SchemaNotReady(RuntimeError):
    """SAQ's tables are missing or at another version than this SAQ expects."""


class _Queue(PostgresQueue):
    """SAQ's queue whose schema setup cannot be skipped silently (see the module notes)."""

    def __init__(self, pool: AsyncConnectionPool[Any], name: str, settings: Settings) -> None:
        super().__init__(pool=pool, name=name, manage_pool_lifecycle=False)
        self.settings = settings

    async def init_db(self) -> None:
        conninfo = self.pool.conninfo
        assert isinstance(conninfo, str)  # ours: Database's URL, never a callable
        await migrate_saq(conninfo, self.settings, self.name)
        await check_schema(self.pool)


async def migrate_saq(url: str, settings: Settings, name: str = GENERATIONS) -> None:
    """SAQ's own migrations (under its try-lock) on a connection of their own, closed after:
    the try-lock is a session lock, never left on a pooled connection."""
    async with BoundedPool(
        url, hold_limit_s=hold_limit_s(settings), check_limit_s=settings.database_timeout_s,
        min_size=1, max_size=1, open=False, timeout=settings.database_timeout_s,
        kwargs=connection_kwargs(settings), name="sleepwell-saq-schema",
    ) as pool:
        await PostgresQueue(pool=pool, name=name, manage_pool_lifecycle=False).init_db()


async def check_schema(pool: AsyncConnectionPool[Any]) -> None:
    """``SchemaNotReady`` unless SAQ's tables exist at the version this SAQ migrates to."""
    target = get_migrations(Identifier("saq_jobs"), Identifier("saq_stats"))[-1][0]
    async with pool.connection() as conn:
        cursor = await conn.execute(
            "SELECT to_regclass('saq_jobs') IS NOT NULL AND to_regclass('saq_stats') IS NOT NULL,"
            " to_regclass('saq_versions') IS NOT NULL")
        row = await cursor.fetchone()
        assert row is not None
        tables, versions = row
        version = None
        if versions:
            cursor = await conn.execute("SELECT max(version) FROM saq_versions")
            version = (await cursor.fetchone() or (None,))[0]
    if not tables or version != target:
        raise SchemaNotReady(
            f"SAQ's schema is not ready (tables present: {bool(tables)}, version {version}, "
            f"expected {target}); another process may be migrating it")


class JobQueue:
    def __init__(self, pool: AsyncConnectionPool[Any], settings: Settings) -> None:
        self.settings = settings
        self.generations: PostgresQueue = _Queue(pool, GENERATIONS, settings)
        self.webhooks: PostgresQueue = _Queue(pool, WEBHOOKS, settings)

    async def connect(self) -> None:
        """Migrate SAQ's schema if needed and check it; ``SchemaNotReady`` if it is not."""
        await self.generations.connect()
        await self.webhooks.connect()

    async def ensure_schema(self) -> None:
        """Before (re)starting the consumer: migrate if needed, then ``SchemaNotReady``
        unless SAQ's tables are there at the expected version."""
        await self.generations.init_db()

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
        """Take the next job, or None. One transaction: the row turns active exactly when
        the job is returned to us, never into a buffer nobody reads."""
        queue = self.generations
        async with queue.pool.connection() as conn, conn.transaction():
            cursor = await conn.execute(
                "WITH next AS (SELECT key FROM saq_jobs WHERE status = 'queued'"
                " AND queue = %(queue)s AND %(now)s >= scheduled ORDER BY priority, scheduled"
                " LIMIT 1 FOR UPDATE SKIP LOCKED)"
                " UPDATE saq_jobs s SET status = 'active' FROM next WHERE s.key = next.key"
                " RETURNING s.job", {"queue": GENERATIONS, "now": now_seconds()})
            row = await cursor.fetchone()
            if row is None:
                return None
            job = queue.deserialize(row[0], Status.ACTIVE)
            assert job is not None
            job.started = job.touched = now()
            await conn.execute("UPDATE saq_jobs SET job = %s WHERE key = %s",
                               (queue.serialize(job), job.key))
        return job

    async def beat(self, job: Job) -> bool:
        """The job's heartbeat; False if its row is no longer active (swept, finished)."""
        touched = now()
        async with self.generations.pool.connection() as conn:
            cursor = await conn.execute(
                "UPDATE saq_jobs SET job = convert_to(jsonb_set(convert_from(job, 'UTF8')::jsonb,"
                " '{touched}', to_jsonb(%(touched)s::bigint))::text, 'UTF8')"
                " WHERE key = %(key)s AND queue = %(queue)s AND status IN ('active', 'aborting')"
                " RETURNING 1", {"touched": touched, "key": job.key, "queue": GENERATIONS})
            held = await cursor.fetchone() is not None
        if held:
            job.touched = touched
        return held

    async def abort_queued(self, job_id: str) -> None:
        """A cancelled job that has not started: SAQ marks it aborted, nobody dequeues it."""
        job = await self.generations.job(job_id)
        if job is not None and job.status == Status.QUEUED:
            await self.generations.abort(job, error="cancelled")

    async def sweep(self) -> list[str]:
        """Requeue jobs whose heartbeat stopped, on both queues (sweeper.py)."""
        budget_s = _SWEEP_BUDGET_TIMEOUTS * self.settings.database_timeout_s
        swept = await sweep_queue(self.generations, front_priority=AGAIN, budget_s=budget_s)
        return swept + await sweep_queue(self.webhooks, front_priority=None, budget_s=budget_s)
