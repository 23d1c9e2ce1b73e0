"""``maintenance.reconcile`` against a real PostgreSQL and real SAQ tables: jobs SAQ gave up
on are failed, orphans re-enqueued, expired results dropped, old tombstones deleted.

Built as app/jobs/component.py builds it (Database, migrations, JobQueue on its pool), and
called directly, so each test sees one pass and nothing else (no worker, no sweep).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import pytest
from psycopg.types.json import Jsonb

from app.jobs import maintenance
from app.jobs.database import Database
from app.jobs.migrations import migrate
from app.jobs.queue import GENERATIONS, JobQueue
from app.settings import Settings
from tests.jobs.postgres import TestPostgres, query

TTL_S = 3600.0


@dataclass
class Parts:
    url: str
    database: Database
    queue: JobQueue

    def add_job(self, job_id: str, status: str = "queued", **columns: Any) -> None:
        """A sleepwell_jobs row (no queue entry unless the test enqueues one)."""
        values = {"id": job_id, "owner": "o", "status": status,
                  "request": Jsonb({"prompt": "x"}), "seed": 1, "progress_steps": 2, **columns}
        names = ", ".join(values)
        marks = ", ".join(["%s"] * len(values))
        query(self.url, f"INSERT INTO sleepwell_jobs ({names}) VALUES ({marks})",
              tuple(values.values()))

    def job(self, job_id: str) -> dict[str, Any] | None:
        rows = query(self.url, "SELECT status, error, result, finished_at, expires_at"
                               " FROM sleepwell_jobs WHERE id = %s", (job_id,))
        if not rows:
            return None
        status, error, result, finished_at, expires_at = rows[0]
        return {"status": status, "error": error, "result": result,
                "finished_at": finished_at, "expires_at": expires_at}

    def queue_status(self, job_id: str) -> str | None:
        rows = query(self.url, "SELECT status FROM saq_jobs WHERE key = %s AND queue = %s",
                     (job_id, GENERATIONS))
        return str(rows[0][0]) if rows else None


@pytest.fixture
async def parts(postgres: TestPostgres) -> AsyncIterator[Parts]:
    url = postgres.new_database()
    settings = Settings(database_timeout_s=2, job_ttl_s=TTL_S)
    database = Database(url, settings)
    await database.open()
    queue = JobQueue(database.pool, settings)
    try:
        async with database.connection() as conn:
            await migrate(conn)
        await queue.connect()
        yield Parts(url, database, queue)
    finally:
        await database.close()


async def test_reconcile_job_saq_gave_up_on_is_failed_attempts_exhausted(parts: Parts) -> None:
    for job_id, status, saq_status in (("job_gave_up_queued", "queued", "failed"),
                                       ("job_gave_up_running", "running", "aborted"),
                                       ("job_still_queued", "queued", "queued")):
        parts.add_job(job_id, status, attempts=5)
        await parts.queue.enqueue_generation(job_id)
        query(parts.url, "UPDATE saq_jobs SET status = %s WHERE key = %s", (saq_status, job_id))
    await maintenance.reconcile(parts.database, parts.queue)
    for job_id in ("job_gave_up_queued", "job_gave_up_running"):
        job = parts.job(job_id)
        assert job is not None and job["status"] == "failed", job
        assert job["error"]["code"] == "attempts_exhausted" and "5 times" in job["error"]["message"]
        assert job["finished_at"] is not None and job["expires_at"] is not None
    untouched = parts.job("job_still_queued")
    assert untouched is not None and untouched["status"] == "queued" and not untouched["error"]


async def test_reconcile_orphan_older_than_the_grace_is_enqueued_again(parts: Parts) -> None:
    parts.add_job("job_orphan")
    query(parts.url, "UPDATE sleepwell_jobs SET created_at = now() - interval '1 minute'"
                     " WHERE id = 'job_orphan'")
    parts.add_job("job_just_inserted")  # its enqueue may be in flight: not an orphan yet
    assert parts.queue_status("job_orphan") is None
    await maintenance.reconcile(parts.database, parts.queue)
    assert parts.queue_status("job_orphan") == "queued"
    assert parts.queue_status("job_just_inserted") is None


async def test_reconcile_expired_job_loses_its_result_and_keeps_its_row(parts: Parts) -> None:
    result = Jsonb([{"b64_json": "aGk=", "seed": 1}])
    parts.add_job("job_expired", "succeeded", result=result)
    parts.add_job("job_fresh", "succeeded", result=result)
    query(parts.url, "UPDATE sleepwell_jobs SET finished_at = now() - interval '2 hours',"
                     " expires_at = now() - interval '1 hour' WHERE id = 'job_expired'")
    query(parts.url, "UPDATE sleepwell_jobs SET finished_at = now(),"
                     " expires_at = now() + interval '1 hour' WHERE id = 'job_fresh'")
    await maintenance.reconcile(parts.database, parts.queue)
    expired, fresh = parts.job("job_expired"), parts.job("job_fresh")
    assert expired is not None and expired["result"] is None  # the row still says "expired"
    assert expired["status"] == "succeeded"
    assert fresh is not None and fresh["result"] == [{"b64_json": "aGk=", "seed": 1}]


async def test_reconcile_tombstone_older_than_seven_days_is_deleted(parts: Parts) -> None:
    for job_id, expired_days in (("job_ancient", 8), ("job_recent_tombstone", 6)):
        parts.add_job(job_id, "failed")
        query(parts.url, "UPDATE sleepwell_jobs SET finished_at = now() - %s * interval '1 day',"
                         " expires_at = now() - %s * interval '1 day' WHERE id = %s",
              (expired_days + 1, expired_days, job_id))
    await maintenance.reconcile(parts.database, parts.queue)
    assert parts.job("job_ancient") is None
    assert parts.job("job_recent_tombstone") is not None


async def test_reconcile_drops_expired_inputs_and_partials_of_jobs_ended_a_minute_ago(
    parts: Parts,
) -> None:
    for job_id, ended, expires in (("job_old", "2 hours", "- interval '1 hour'"),
                                   ("job_just_ended", "1 second", "+ interval '1 hour'")):
        parts.add_job(job_id, "succeeded", kind="edit")
        query(parts.url, f"UPDATE sleepwell_jobs SET finished_at = now() - interval '{ended}',"
                         f" expires_at = now() {expires} WHERE id = %s", (job_id,))
        query(parts.url, "INSERT INTO sleepwell_job_inputs (job_id, image) VALUES (%s, %s)",
              (job_id, b"\x89PNG"))
        query(parts.url, "INSERT INTO sleepwell_job_partials VALUES (%s, 1, 0, %s)",
              (job_id, Jsonb({"images": []})))
    await maintenance.reconcile(parts.database, parts.queue)

    def left(table: str) -> set[str]:
        return {row[0] for row in query(parts.url, f"SELECT job_id FROM {table}")}

    assert left("sleepwell_job_inputs") == {"job_just_ended"}  # expired: its inputs went
    assert left("sleepwell_job_partials") == {"job_just_ended"}  # streams may still read it
