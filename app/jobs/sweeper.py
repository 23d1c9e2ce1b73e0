"""One sweep pass over one SAQ queue: requeue (or abort) the jobs whose heartbeat stopped.

Every worker calls this each SLEEPWELL_JOB_SWEEP_INTERVAL_S; exactly one of them sweeps a
given pass. SAQ's own ``sweep`` takes a *session* advisory lock once and never checks it
again: the pool may recycle that connection or a database restart may drop it, and then
two workers sweep, or none does while a partitioned holder keeps it. Here the lock is
transaction-level (``pg_try_advisory_xact_lock``, on SAQ's key for the queue), taken on
every pass and released when the pass commits, so it cannot outlive the pass.

Each stuck row is requeued by compare-and-set on the exact row we judged stuck: if its
owner beat in the meantime, the update matches nothing and the job stays where it is.

A pass is one short transaction on one pooled connection, which the pool aborts when held
over its hold limit (3 database timeouts). So a pass does a bounded amount of work: it
reads at most ``_STUCK_BATCH`` stuck rows, deletes at most ``_DELETE_BATCH`` expired rows
per table, and starts no statement once ``budget_s`` has passed (the caller gives half a
database timeout); every statement is under ``statement_timeout``, so a pass ends well
inside the hold limit, and the next pass goes on where this one stopped. A pass aborted
midway (a frozen server) rolls back as a whole: no row is half requeued, and each requeue
is a compare-and-set anyway.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import psycopg
from saq.job import Job, Status
from saq.queue.postgres import PostgresQueue
from saq.utils import now, now_seconds

# Expired rows deleted per table and pass: a backlog of them (a long outage, a first
# start on an old database) is worked off over several passes.
_DELETE_BATCH = 1000
# Stuck rows read per pass (requeued while the budget lasts).
_STUCK_BATCH = 2000
# SAQ's ``Job.stuck`` in SQL, so a pass reads only candidates (``Job.stuck`` decides).
# ``to_dict`` leaves out fields at their defaults: timeout 10, heartbeat/started/touched 0.
_STUCK_ROWS = """
SELECT key, job, status FROM (
  SELECT key, job, status, convert_from(job, 'UTF8')::jsonb AS doc FROM saq_jobs
   WHERE queue = %(queue)s AND status IN ('active', 'aborting')) rows
 WHERE (COALESCE((doc->>'heartbeat')::float8, 0) > 0 AND %(now)s
        - COALESCE((doc->>'touched')::bigint, 0) > 1000 * (doc->>'heartbeat')::float8)
    OR (COALESCE((doc->>'timeout')::float8, 10) > 0 AND %(now)s
        - COALESCE((doc->>'started')::bigint, 0) > 1000 * COALESCE((doc->>'timeout')::float8, 10))
 LIMIT %(limit)s
"""


@dataclass
class _Budget:
    """Whether the pass may start another statement (monotonic clock)."""

    until: float

    @classmethod
    def of(cls, budget_s: float) -> _Budget:
        return cls(time.monotonic() + budget_s)

    @property
    def left(self) -> bool:
        return time.monotonic() < self.until


async def sweep_queue(queue: PostgresQueue, front_priority: int | None,
                      budget_s: float) -> list[str]:
    """The keys swept by this pass; [] if another worker holds this pass's lock.

    ``front_priority``: the priority a requeued job gets (ahead of new ones), or None to
    keep its own. ``budget_s``: no statement starts after it (see the module notes)."""
    budget = _Budget.of(budget_s)
    async with queue.pool.connection() as conn, conn.transaction():
        cursor = await conn.execute("SELECT pg_try_advisory_xact_lock(%s, hashtext(%s))",
                                    (queue.saq_lock_keyspace, queue.name))
        locked = await cursor.fetchone()
        if not locked or not locked[0]:
            return []
        cursor = await conn.execute(_STUCK_ROWS, {"queue": queue.name, "now": now(),
                                                  "limit": _STUCK_BATCH})
        swept = []
        for key, blob, status in await cursor.fetchall():
            job = queue.deserialize(blob, status)
            if job is None or not job.stuck:
                continue
            if not budget.left:
                break  # the next pass requeues the rest
            if await _release(conn, queue, job, blob, front_priority):
                swept.append(key)
        if budget.left:
            await _delete_expired(conn, queue.name)
    return swept


async def _delete_expired(conn: psycopg.AsyncConnection[Any], name: str) -> None:
    """SAQ's TTL cleanup, which its sweep did: finished jobs and stats past expiry, at most
    ``_DELETE_BATCH`` rows of each per pass."""
    now_s = now_seconds()
    await conn.execute(
        "DELETE FROM saq_jobs WHERE key IN (SELECT key FROM saq_jobs WHERE queue = %s AND"
        " status IN ('aborted', 'complete', 'failed') AND %s >= expire_at LIMIT %s)",
        (name, now_s, _DELETE_BATCH))
    await conn.execute(
        "DELETE FROM saq_stats WHERE worker_id IN (SELECT worker_id FROM saq_stats"
        " WHERE %s >= expire_at LIMIT %s)", (now_s, _DELETE_BATCH))


async def _release(conn: psycopg.AsyncConnection[Any], queue: PostgresQueue, job: Job,
                   seen: bytes, front_priority: int | None) -> bool:
    """Queued again if it has attempts left (as SAQ's retry), else aborted (as SAQ's
    sweep); True if the row was still the one we saw."""
    job.error = queue.swept_error_message
    if job.retryable:
        delay = job.next_retry_delay()
        job.status, job.completed, job.started, job.progress = Status.QUEUED, 0, 0, 0.0
        job.scheduled = int(time.time() + delay if delay else job.scheduled or now_seconds())
        expire_at = None
    else:
        job.status, job.completed = Status.ABORTED, now()
        expire_at = now_seconds() + job.ttl if job.ttl > 0 else None
    job.touched = now()
    if front_priority is not None and job.status == Status.QUEUED:
        job.priority = front_priority
    cursor = await conn.execute(
        "UPDATE saq_jobs SET job = %(job)s, status = %(status)s, scheduled = %(scheduled)s,"
        " priority = %(priority)s, expire_at = %(expire_at)s WHERE key = %(key)s"
        " AND queue = %(queue)s AND job = %(seen)s RETURNING 1",
        {"job": queue.serialize(job), "status": job.status.value, "scheduled": job.scheduled,
         "priority": job.priority, "expire_at": expire_at, "key": job.key,
         "queue": queue.name, "seen": seen})
    return await cursor.fetchone() is not None
