"""The job runtime inside the database's client-side bounds (issue 19, defect 5): a sweep
pass never outlives the pool's hold limit, a final write retried after a lost answer counts
nothing twice, and the master's migration never hangs on a frozen server."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import AsyncIterator

import psycopg
import pytest

from app.errors import ServiceUnavailable
from app.jobs.bootstrap import prepare_database
from app.jobs.database import Database, hold_limit_s
from app.jobs.migrations import _LOCK_KEY as MIGRATIONS_LOCK
from app.jobs.migrations import MIGRATIONS, migrate
from app.jobs.queue import JobQueue
from app.jobs.schemas import JobStatus
from app.jobs.store import JobStore, NewJob, RunOutcome
from app.settings import Settings
from tests.jobs.postgres import TestPostgres, paused, query
from tests.support.waiting import wait_until

# A hold limit of 1.5 s: one pass that requeued this many stuck rows on one checkout would
# outlive it every time (and be aborted); bounded passes get through them a slice at a time.
SETTINGS = Settings(database_timeout_s=0.5, job_stuck_after_s=5)
STUCK_ROWS = 40_000
TEMPLATE = "job_template"


@pytest.fixture
async def url(postgres: TestPostgres) -> str:
    return postgres.new_database()


@pytest.fixture
async def database(url: str) -> AsyncIterator[Database]:
    database = Database(url, SETTINGS)
    await database.open()
    try:
        async with database.connection() as conn:
            await migrate(conn)
        yield database
    finally:
        await database.close()


def _new_job(job_id: str) -> NewJob:
    return NewJob(id=job_id, owner="o", idempotency_key=None, request={"prompt": "x"}, seed=1,
                  steps=2, webhook_url=None, webhook_events=[])


def _add_stuck_rows(url: str, count: int) -> None:
    """``count`` active generation rows whose owner went silent an hour ago, cloned from
    the queued template (the key inside the blob is the row's own, as SAQ writes it)."""
    query(url, "INSERT INTO saq_jobs (key, job, queue, status, priority, scheduled)"
               " SELECT 'stuck-' || i, convert_to(jsonb_set(jsonb_set("
               " convert_from(job, 'UTF8')::jsonb, '{key}', to_jsonb('stuck-' || i)),"
               " '{touched}', to_jsonb((extract(epoch FROM now()) * 1000 - 3600000)::bigint))"
               "::text, 'UTF8'), queue, 'active', priority, scheduled"
               " FROM saq_jobs, generate_series(1, %s) i WHERE key = %s", (count, TEMPLATE))


async def test_sweep_of_more_stuck_jobs_than_one_hold_limit_allows_requeues_each_once(
    url: str, database: Database,
) -> None:
    queue = JobQueue(database.pool, SETTINGS)
    await database.bounded(queue.connect(), 4 * database.operation_limit_s)
    await queue.enqueue_generation(TEMPLATE)
    _add_stuck_rows(url, STUCK_ROWS)
    swept: list[str] = []
    deadline = time.monotonic() + 180
    for _ in range(1000):  # a pass that outlives the hold limit is aborted and rolled back
        try:
            keys = await database.bounded(queue.sweep(), 2 * hold_limit_s(SETTINGS))
        except ServiceUnavailable:  # a loaded machine may cut one pass short: the next goes on
            keys = None
        swept += keys or []
        if keys == [] or time.monotonic() > deadline:
            break
    assert len(swept) == len(set(swept)) == STUCK_ROWS
    assert query(url, "SELECT status, count(*) FROM saq_jobs WHERE key LIKE 'stuck-%%'"
                      " GROUP BY status") == [("queued", STUCK_ROWS)]
    assert query(url, "SELECT status FROM saq_jobs WHERE key = %s", (TEMPLATE,)) == [("queued",)]


async def test_store_final_write_retried_after_a_lost_answer_counts_one_completion(
    url: str, database: Database,
) -> None:
    store = JobStore(database, SETTINGS.job_ttl_s)
    await store.create(_new_job("job_retried"))
    run = await store.start("job_retried", "host:1")
    assert run is not None
    first = await store.finish("job_retried", JobStatus.SUCCEEDED, result=[{"seed": 1}],
                               attempt=run["attempts"])
    # The answer to the first call was lost (connection aborted after the commit): retry.
    again = await store.finish("job_retried", JobStatus.SUCCEEDED, result=[{"seed": 1}],
                               attempt=run["attempts"])
    assert first is not None and again is not None  # still this run's win, not a duplicate
    row = await store.get("job_retried")
    assert row is not None and row["status"] == "succeeded" and row["completions"] == 1
    assert query(url, "SELECT attempt, outcome FROM sleepwell_job_runs WHERE job_id = %s",
                 ("job_retried",)) == [(1, RunOutcome.SUCCEEDED)]


async def test_store_final_write_of_a_twin_run_is_a_duplicate_even_when_retried(
    url: str, database: Database,
) -> None:
    store = JobStore(database, SETTINGS.job_ttl_s)
    await store.create(_new_job("job_twin"))
    one, two = await store.start("job_twin", "host:1"), await store.start("job_twin", "host:2")
    assert one is not None and two is not None
    assert await store.finish("job_twin", JobStatus.SUCCEEDED, result=[],
                              attempt=two["attempts"]) is not None
    for _ in range(2):  # the losing run, and its retry after a lost answer
        assert await store.finish("job_twin", JobStatus.SUCCEEDED, result=[],
                                  attempt=one["attempts"]) is None
    row = await store.get("job_twin")
    assert row is not None and row["completions"] == 2
    assert query(url, "SELECT attempt, outcome FROM sleepwell_job_runs WHERE job_id = %s"
                      " ORDER BY attempt", ("job_twin",)) == [
        (1, RunOutcome.DUPLICATE), (2, RunOutcome.SUCCEEDED)]


def test_prepare_database_frozen_mid_migration_logs_and_returns(
    postgres: TestPostgres, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch,
) -> None:
    url = postgres.new_database()
    monkeypatch.setenv("SLEEPWELL_DATABASE_URL", url)  # prepare_database sets it; undone after
    settings = Settings(jobs_enabled=True, database_url=url, database_timeout_s=2)
    master = threading.Thread(target=prepare_database, args=(settings, []), daemon=True)
    with psycopg.connect(url, autocommit=True) as other, other.transaction():
        other.execute("SELECT pg_advisory_xact_lock(%s)", (MIGRATIONS_LOCK,))  # "migrating"
        master.start()
        wait_until(lambda: _waits_on_a_lock(url), timeout=30, what="the master's migration")
        # Frozen while the master's statement is in flight: only our side can end the wait.
        with caplog.at_level(logging.WARNING, logger="sleepwell.jobs"), paused(postgres):
            master.join(timeout=30)
            assert not master.is_alive(), "the master hung on a frozen database"
    assert "job database unreachable at start" in caplog.text
    prepare_database(settings, [])  # resumed: the next start migrates everything
    assert query(url, "SELECT count(*) FROM sleepwell_schema_migrations") == [(len(MIGRATIONS),)]
    assert query(url, "SELECT to_regclass('saq_jobs') IS NOT NULL") == [(True,)]


def _waits_on_a_lock(url: str) -> bool:
    return bool(query(url, "SELECT count(*) FROM pg_stat_activity WHERE application_name ="
                           " 'sleepwell' AND wait_event_type = 'Lock'")[0][0])
