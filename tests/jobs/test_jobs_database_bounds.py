"""Every database wait is bounded on our side: a frozen PostgreSQL (SIGSTOP on the postmaster
and its backends, like ``docker compose pause``) costs a 503, never a hang (issue 19, 5).

The PostgreSQL here is this module's own: pausing the session one would stall other tests.
The two end-to-end tests share one gunicorn (each starts by waiting for jobs to be up, and
leaves the service serving).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any

import httpx
import pytest

from app.errors import ServiceUnavailable
from app.jobs.database import Connection, Database, connection_kwargs, hold_limit_s
from app.settings import Settings
from tests.jobs.helpers import Served, auth, jobs_env, submit, wait_final, wait_job
from tests.jobs.postgres import TestPostgres, paused, query, running_postgres
from tests.jobs.test_jobs_api import wait_health_jobs
from tests.support.server import gunicorn_server

KEY = "key-bounds"
TIMEOUT_S = 1.0  # SLEEPWELL_DATABASE_TIMEOUT_S here
# "Bounded": generous for a loaded 2-core machine; without client-side bounds these waits
# never end at all (they last until the server is resumed).
BOUND_S = 10 * TIMEOUT_S


@pytest.fixture(scope="module")
def frozen_postgres() -> Iterator[TestPostgres]:
    with running_postgres() as server:
        yield server


@pytest.fixture
async def database(frozen_postgres: TestPostgres) -> AsyncIterator[Database]:
    database = Database(frozen_postgres.new_database(), Settings(database_timeout_s=TIMEOUT_S))
    await database.open()
    try:
        await _select_one(database)  # a pooled connection exists before the freeze
        yield database
    finally:
        await database.close()


async def _select_one(database: Database) -> Any:
    async with database.connection() as conn:
        cursor = await conn.execute("SELECT 1")
        return await cursor.fetchone()


async def _until_answered(database: Database) -> None:
    """After SIGCONT: the pool reconnects by itself (bounded by the test's deadline)."""
    async with asyncio.timeout(60):
        while True:
            try:
                assert await _select_one(database) == (1,)
                return
            except ServiceUnavailable:
                await asyncio.sleep(0.1)


async def test_database_connection_on_a_frozen_server_answers_503_then_recovers(
    frozen_postgres: TestPostgres, database: Database,
) -> None:
    with paused(frozen_postgres):
        async with asyncio.timeout(BOUND_S):  # the pool's check of its idle connection
            with pytest.raises(ServiceUnavailable) as refused:
                await _select_one(database)
    assert refused.value.code == "jobs_unavailable" and refused.value.retry_after_s
    assert not database.available
    await _until_answered(database)
    assert database.available


async def test_database_checkout_frozen_mid_query_is_aborted_and_discarded(
    frozen_postgres: TestPostgres, database: Database,
) -> None:
    assert hold_limit_s(database.settings) < BOUND_S
    checked_out: list[Connection] = []

    async def frozen_mid_query() -> None:
        async with database.connection() as conn:
            checked_out.append(conn)
            with paused(frozen_postgres):
                async with asyncio.timeout(BOUND_S):  # the checkout's hold limit ends it
                    await conn.execute("SELECT 1")

    with pytest.raises(ServiceUnavailable):
        await frozen_mid_query()
    (conn,) = checked_out
    assert conn.closed  # aborted: the pool drops it instead of handing it out again
    assert database.pool.get_stats().get("returns_bad", 0) >= 1
    await _until_answered(database)


async def test_database_bounded_aborts_its_connections_and_raises_503(
    frozen_postgres: TestPostgres, database: Database,
) -> None:
    async def like_saq() -> None:  # SAQ takes connections from the pool itself
        async with database.pool.connection() as conn:
            await conn.execute("SELECT 1")

    with paused(frozen_postgres):
        async with asyncio.timeout(BOUND_S):
            with pytest.raises(ServiceUnavailable) as refused:
                await database.bounded(like_saq(), timeout_s=0.5)
    assert refused.value.code == "jobs_unavailable"
    # The operation's own deadline ended it (the pool's hold limit is 3 s).
    assert database.last_error is not None and "no answer within 0.5s" in database.last_error
    await _until_answered(database)
    assert await database.bounded(_select_one(database)) == (1,)


# ~16 s of denoising (0.2 s a step): the job runs before, through and after the freeze,
# so its owner must beat again before anyone judges it stuck.
SLOW_PROMPT = "[[slow=0.2]] a lighthouse at night"
SLOW_STEPS = 80
FREEZE_S = 10.0  # like bench/jobs_faults.py (c); under the default stuck-after of 20 s
# A hung event loop (a psycopg cancel request waiting on the frozen server) misses gunicorn's
# heartbeat for longer than this, and the worker is replaced.
WORKER_TIMEOUT_S = 8


@pytest.fixture(scope="module")
def served(frozen_postgres: TestPostgres) -> Iterator[Served]:
    url = frozen_postgres.new_database()
    env = jobs_env(url, KEY, SLEEPWELL_DATABASE_TIMEOUT_S=str(TIMEOUT_S),
                   SLEEPWELL_JOBS_PROBE_INTERVAL_S="0.5",
                   SLEEPWELL_WORKER_TIMEOUT_S=str(WORKER_TIMEOUT_S))
    with gunicorn_server(env) as server:
        yield Served(frozen_postgres, url, server)


def _unavailable(response: httpx.Response) -> bool:
    return (response.status_code == 503 and int(response.headers["retry-after"]) >= 1
            and response.json()["error"]["code"] == "jobs_unavailable")


@pytest.mark.slow
def test_jobs_frozen_database_answers_503_in_bounded_time_then_recovers(
    served: Served,
) -> None:
    with served.server.client(timeout=BOUND_S) as client:
        wait_health_jobs(client, True)
        done = wait_final(client, KEY, submit(client, KEY)["id"])
        assert done["status"] == "succeeded"
        with paused(served.postgres):
            # httpx raises ReadTimeout past BOUND_S: a hang fails the test, never blocks it.
            read = client.get(f"/v1/jobs/{done['id']}", headers=auth(KEY))
            assert _unavailable(read), read.text
            posted = client.post("/v1/jobs", headers=auth(KEY),
                                 json={"prompt": "a fox", "size": "64x64"})
            assert _unavailable(posted), posted.text
            down = wait_health_jobs(client, False, timeout=BOUND_S)
            assert down["jobs_error"]
            assert client.get("/health/ready").status_code == 200  # the sync API serves on
        wait_health_jobs(client, True)
        after = wait_final(client, KEY, submit(client, KEY)["id"], timeout=120)
        assert after["status"] == "succeeded", after


def _runs(url: str, job_id: str) -> list[tuple[Any, ...]]:
    return query(url, "SELECT attempt, outcome FROM sleepwell_job_runs WHERE job_id = %s"
                      " ORDER BY attempt", (job_id,))


@pytest.mark.slow
def test_jobs_running_job_through_a_frozen_database_finishes_exactly_once(
    served: Served,
) -> None:
    server, url = served.server, served.url
    with server.client(timeout=BOUND_S) as client:
        wait_health_jobs(client, True)
        workers = server.worker_pids()
        job_id = submit(client, KEY, prompt=SLOW_PROMPT, steps=SLOW_STEPS)["id"]
        running = wait_job(client, KEY, job_id, lambda job: job["progress"]["step"] >= 1,
                           timeout=120)
        assert running["status"] == "running", running
        with paused(served.postgres):
            frozen_at = time.monotonic()
            down = wait_health_jobs(client, False, timeout=BOUND_S)
            assert down["jobs_error"]
            time.sleep(max(0.0, FREEZE_S - (time.monotonic() - frozen_at)))  # the fault
        wait_health_jobs(client, True)
        done = wait_final(client, KEY, job_id, timeout=180)  # 80 steps on a busy 2-core box
        assert done["status"] == "succeeded" and done["completions"] == 1, done
        assert done["attempts"] == 1, done
        assert _runs(url, job_id) == [(1, "succeeded")]
        after = wait_final(client, KEY, submit(client, KEY)["id"], timeout=120)
        assert after["status"] == "succeeded", after  # the consumer still consumes
        assert server.worker_pids() == workers  # no worker hung long enough to be replaced


def test_connection_kwargs_over_tcp_set_keepalives_and_a_user_timeout() -> None:
    """A partitioned network (no RST, no FIN) is noticed by the kernel, not after ~2 h."""
    kwargs = connection_kwargs(Settings(database_timeout_s=2))
    assert kwargs["keepalives"] == 1 and kwargs["keepalives_count"] >= 1
    assert 0 < kwargs["keepalives_idle"] <= 30 and 0 < kwargs["keepalives_interval"] <= 10
    assert kwargs["tcp_user_timeout"] == 1000 * hold_limit_s(Settings(database_timeout_s=2))
