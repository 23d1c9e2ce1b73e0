"""The sweep, the dequeue, the heartbeat and the webhook re-notify, in-process against a real
PostgreSQL and real SAQ queues (two "workers" are two pools, as two processes have)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass

import pytest
from saq.job import Job

from app.jobs import maintenance
from app.jobs.database import Database
from app.jobs.migrations import migrate
from app.jobs.queue import GENERATIONS, WEBHOOKS, JobQueue
from app.jobs.schemas import JobStatus
from app.jobs.store import JobStore, NewJob
from app.jobs.webhooks import Webhooks, completed_message_id
from app.settings import Settings
from tests.jobs.postgres import TestPostgres, query

SETTINGS = Settings(database_timeout_s=2, job_stuck_after_s=5, webhook_secret="whsec_"
                    "c2xlZXB3ZWxsLXRlc3Qtd2ViaG9vay1zZWNyZXQ=",
                    webhook_allowed_hosts="127.0.0.1")


@dataclass
class Worker:
    database: Database
    queue: JobQueue
    store: JobStore


@pytest.fixture
async def url(postgres: TestPostgres) -> str:
    return postgres.new_database()


async def _worker(url: str) -> Worker:
    database = Database(url, SETTINGS)
    await database.open()
    async with database.connection() as conn:
        await migrate(conn)
    queue = JobQueue(database.pool, SETTINGS)
    await queue.connect()
    return Worker(database, queue, JobStore(database, SETTINGS.job_ttl_s))


@pytest.fixture
async def workers(url: str) -> AsyncIterator[tuple[Worker, Worker]]:
    first, second = await _worker(url), await _worker(url)
    try:
        yield first, second
    finally:
        await first.database.close()
        await second.database.close()


async def _new_job(worker: Worker, job_id: str, webhook_url: str | None = None) -> None:
    await worker.store.create(NewJob(
        id=job_id, owner="o", idempotency_key=None, request={"prompt": "x"}, seed=1, steps=2,
        webhook_url=webhook_url, webhook_events=["completed"] if webhook_url else []))
    await worker.queue.enqueue_generation(job_id)


def _age_heartbeat(url: str, key: str) -> None:
    """As if the owner had been silent for an hour: its last heartbeat is an hour old."""
    query(url, "UPDATE saq_jobs SET job = convert_to(jsonb_set(convert_from(job, 'UTF8')::jsonb,"
               " '{touched}', to_jsonb((extract(epoch FROM now()) * 1000 - 3600000)::bigint))"
               "::text, 'UTF8') WHERE key = %s", (key,))


def _status(url: str, key: str) -> str:
    return str(query(url, "SELECT status FROM saq_jobs WHERE key = %s", (key,))[0][0])


async def _stuck_job(url: str, worker: Worker, job_id: str) -> Job:
    await _new_job(worker, job_id)
    job = await worker.queue.dequeue_generation()
    assert job is not None and job.key == job_id
    _age_heartbeat(url, job_id)
    return job


async def test_sweep_lock_is_not_kept_between_passes_so_another_worker_sweeps(
    url: str, workers: tuple[Worker, Worker]
) -> None:
    first, second = workers
    assert await first.queue.sweep() == []  # SAQ's sweep kept its session lock from here on
    await _stuck_job(url, first, "job_stale_lock")
    assert await second.queue.sweep() == ["job_stale_lock"]
    assert _status(url, "job_stale_lock") == "queued"


async def test_sweep_while_another_pass_holds_the_lock_sweeps_nothing(
    url: str, workers: tuple[Worker, Worker]
) -> None:
    first, _ = workers
    assert await first.queue.sweep() == []
    await _stuck_job(url, first, "job_locked_pass")
    holder = await first.database.pool.getconn()  # another worker, in the middle of a pass
    try:
        async with holder.transaction():
            await holder.execute("SELECT pg_advisory_xact_lock(0, hashtext(%s))", (GENERATIONS,))
            assert await first.queue.sweep() == []
            assert _status(url, "job_locked_pass") == "active"
    finally:
        await first.database.pool.putconn(holder)
    assert await first.queue.sweep() == ["job_locked_pass"]


async def test_sweep_after_its_connections_are_terminated_still_sweeps_exactly_once(
    url: str, workers: tuple[Worker, Worker]
) -> None:
    first, second = workers
    assert await first.queue.sweep() == []
    query(url, "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname ="
               " current_database() AND pid <> pg_backend_pid()")
    await _stuck_job(url, second, "job_after_terminate")
    passes = await asyncio.gather(first.queue.sweep(), second.queue.sweep(),
                                  return_exceptions=True)
    swept = [keys for keys in passes if isinstance(keys, list) and keys]
    leftovers = [await w.queue.sweep() for w in workers]  # pool reconnected: sweeps again
    assert sum(len(keys) for keys in swept + leftovers) == 1, (passes, leftovers)
    assert _status(url, "job_after_terminate") == "queued"


async def test_sweep_does_not_take_a_job_whose_owner_beat_since_it_looked(
    url: str, workers: tuple[Worker, Worker]
) -> None:
    first, second = workers
    job = await _stuck_job(url, first, "job_beats")
    assert await first.queue.beat(job)  # fresh again
    assert await second.queue.sweep() == []
    assert _status(url, "job_beats") == "active"


async def test_heartbeat_after_a_sweep_does_not_revive_the_job(
    url: str, workers: tuple[Worker, Worker]
) -> None:
    first, second = workers
    job = await _stuck_job(url, first, "job_late_beat")
    assert await second.queue.sweep() == ["job_late_beat"]
    assert not await first.queue.beat(job)
    assert _status(url, "job_late_beat") == "queued"


async def test_dequeue_takes_one_job_marks_it_active_and_fresh(
    url: str, workers: tuple[Worker, Worker]
) -> None:
    first, second = workers
    await _new_job(first, "job_dequeue")
    taken = await asyncio.gather(first.queue.dequeue_generation(),
                                 second.queue.dequeue_generation())
    assert sorted(job is None for job in taken) == [False, True]  # exactly one got it
    job = next(job for job in taken if job is not None)
    assert job.key == "job_dequeue" and not job.stuck
    assert _status(url, "job_dequeue") == "active"
    assert await first.queue.sweep() == []  # its heartbeat starts at the dequeue


async def test_renotify_enqueues_a_lost_completed_webhook_once(
    url: str, workers: tuple[Worker, Worker]
) -> None:
    first, _ = workers
    webhooks = Webhooks(SETTINGS, first.queue)
    try:
        await _new_job(first, "job_lost_hook", webhook_url="http://127.0.0.1:9/hook")
        await _new_job(first, "job_no_hook")
        for job_id in ("job_lost_hook", "job_no_hook"):
            assert await first.store.start(job_id, "w1") is not None
            # The worker's finish commits; its notify never happens (the database blinked).
            assert await first.store.finish(job_id, JobStatus.SUCCEEDED, result=[]) is not None
        query(url, "UPDATE sleepwell_jobs SET finished_at = finished_at - interval '1 minute'")
        assert await maintenance.renotify(first.database, first.store, webhooks) == [
            "job_lost_hook"]
        assert await maintenance.renotify(first.database, first.store, webhooks) == []
        msg = completed_message_id("job_lost_hook")
        assert query(url, "SELECT count(*) FROM saq_jobs WHERE queue = %s AND key = %s",
                     (WEBHOOKS, msg)) == [(1,)]
        assert query(url, "SELECT id FROM sleepwell_jobs WHERE NOT completed_notified") == []
    finally:
        await webhooks.client.aclose()


async def test_job_runs_record_every_start_and_outcome(
    url: str, workers: tuple[Worker, Worker]
) -> None:
    first, _ = workers
    await _new_job(first, "job_runs")
    one = await first.store.start("job_runs", "host:1")
    two = await first.store.start("job_runs", "host:2")  # a redelivery while one still runs
    assert one is not None and two is not None
    assert (one["attempts"], two["attempts"]) == (1, 2)
    await first.store.end_run("job_runs", 2, "succeeded")
    await first.store.end_run("job_runs", 1, "duplicate")
    rows = query(url, "SELECT attempt, worker, outcome, started_at <= finished_at"
                      " FROM sleepwell_job_runs WHERE job_id = %s ORDER BY attempt", ("job_runs",))
    assert rows == [(1, "host:1", "duplicate", True), (2, "host:2", "succeeded", True)]
