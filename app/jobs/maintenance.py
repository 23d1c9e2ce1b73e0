"""Periodic, idempotent upkeep of the jobs table; safe to run on every worker at once.

- ``backlog``: the figures behind jobs_queued and jobs_oldest_queued_age_seconds, one
  indexed query under the statement timeout.
- ``reconcile``: keep ``sleepwell_jobs`` in step with SAQ (a swept job shows as queued
  again; one SAQ gave up on is failed), re-enqueue a job whose enqueue was lost (the
  database died between our insert and SAQ's), and drop expired results and edit inputs,
  and the partial images of jobs that ended a minute ago.
- ``renotify``: enqueue the "completed" webhook of a final job whose worker made it final
  but never enqueued the webhook (the database blinked, the worker died in between), or
  that maintenance itself failed (attempts exhausted). The message id is the job's, so a
  receiver never gets two different "completed" events for one job.
"""

from __future__ import annotations

import logging

from app.jobs.database import Database
from app.jobs.queue import GENERATIONS, WEBHOOKS, JobQueue
from app.jobs.store import JobStore
from app.jobs.webhooks import Webhooks, completed_message_id
from app.observability import metrics

logger = logging.getLogger("sleepwell.jobs.maintenance")
_ORPHAN_AFTER_S = 10
_TOMBSTONE_DAYS = 7  # an expired job still answers "expired" (not "unknown") this long
# The worker that makes a job final enqueues its webhook at once; only older rows are ours.
RENOTIFY_AFTER_S = 5.0


async def backlog(database: Database) -> tuple[int, float]:
    async with database.connection() as conn:
        cursor = await conn.execute(
            "SELECT count(*), COALESCE(EXTRACT(EPOCH FROM now() - min(created_at)), 0)"
            " FROM sleepwell_jobs WHERE status = 'queued'")
        row = await cursor.fetchone()
    assert row is not None
    return int(row[0]), float(row[1])


async def reconcile(database: Database, queue: JobQueue) -> None:
    async with database.connection() as conn:
        await conn.execute(
            "UPDATE sleepwell_jobs j SET status = 'queued', progress_step = 0 FROM saq_jobs s"
            " WHERE s.key = j.id AND s.queue = %s AND j.status = 'running'"
            " AND s.status = 'queued'", (GENERATIONS,))
        cursor = await conn.execute(
            "UPDATE sleepwell_jobs j SET status = 'failed', finished_at = clock_timestamp(),"
            " expires_at = clock_timestamp() + %s * interval '1 s', error = jsonb_build_object("
            "'message', 'The job was delivered ' || j.attempts || ' times and never finished"
            " (SLEEPWELL_JOB_MAX_ATTEMPTS); its workers died or were drained.',"
            " 'type', 'server_error', 'code', 'attempts_exhausted')"
            " FROM saq_jobs s WHERE s.key = j.id AND s.queue = %s"
            " AND j.status IN ('queued', 'running') AND s.status IN ('aborted', 'failed')"
            " RETURNING j.id, j.kind", (queue.settings.job_ttl_s, GENERATIONS))
        for job_id, kind in await cursor.fetchall():
            metrics.JOBS.labels(status="failed", kind=kind).inc()
            logger.error("job %s failed: attempts exhausted", job_id)
        cursor = await conn.execute(
            "SELECT j.id FROM sleepwell_jobs j WHERE j.status = 'queued'"
            " AND j.created_at < now() - %s * interval '1 s' AND NOT EXISTS"
            " (SELECT 1 FROM saq_jobs s WHERE s.key = j.id) LIMIT 100", (_ORPHAN_AFTER_S,))
        orphans = [row[0] for row in await cursor.fetchall()]
        await conn.execute(
            "UPDATE sleepwell_jobs SET result = NULL WHERE expires_at <= now()"
            " AND result IS NOT NULL")
        # An edit's input image and mask go with its result (the row's deletion, later,
        # would take them too: ON DELETE CASCADE).
        await conn.execute(
            "DELETE FROM sleepwell_job_inputs i USING sleepwell_jobs j"
            " WHERE i.job_id = j.id AND j.expires_at <= now()")
        # Partial images serve event streams while the job runs; a minute after it ended
        # every open stream has read them.
        await conn.execute(
            "DELETE FROM sleepwell_job_partials p USING sleepwell_jobs j WHERE p.job_id = j.id"
            " AND j.finished_at < now() - interval '60 s'")
        await conn.execute(
            "DELETE FROM sleepwell_jobs WHERE expires_at <= now() - %s * interval '1 day'",
            (_TOMBSTONE_DAYS,))
    for job_id in orphans:
        logger.warning("job %s had no queue entry; enqueueing it again", job_id)
        await queue.enqueue_generation(job_id)


async def renotify(database: Database, store: JobStore, webhooks: Webhooks) -> list[str]:
    """Enqueue the missing "completed" webhooks; the ids of the jobs notified now."""
    notified = []
    for row in await store.unnotified(RENOTIFY_AFTER_S):
        if not await _webhook_enqueued(database, completed_message_id(row["id"])):
            await webhooks.notify(row, "completed")
            if row["webhook_url"] and "completed" in (row["webhook_events"] or []):
                notified.append(row["id"])
                logger.warning("job %s: its completed webhook was never enqueued; enqueued now",
                               row["id"])
        await store.mark_notified(row["id"])
    return notified


async def _webhook_enqueued(database: Database, msg_id: str) -> bool:
    """Already in SAQ (queued, retrying or delivered): enqueueing it again could send it
    twice (SAQ re-runs a finished job on a newer enqueue of the same key)."""
    async with database.connection() as conn:
        cursor = await conn.execute("SELECT 1 FROM saq_jobs WHERE key = %s AND queue = %s",
                                    (msg_id, WEBHOOKS))
        return await cursor.fetchone() is not None
