"""The job consumer is supervised: it fails loudly, /health says so, it comes back; a job
that stalls its workers is failed rather than handed to worker after worker."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest

from tests.jobs.helpers import jobs_env, submit, wait_final
from tests.jobs.postgres import TestPostgres, query
from tests.jobs.test_jobs_api import wait_health_jobs
from tests.support.scrape import value
from tests.support.server import RunningServer, gunicorn_server
from tests.support.waiting import wait_until

pytestmark = pytest.mark.slow
KEY = "key-supervision"


@pytest.fixture(scope="module")
def url(postgres: TestPostgres) -> str:
    return postgres.new_database()


@pytest.fixture(scope="module")
def server(url: str) -> Iterator[RunningServer]:
    env = jobs_env(url, KEY, SLEEPWELL_STALL_TIMEOUT_S="3", SLEEPWELL_GRACEFUL_TIMEOUT_S="5")
    with gunicorn_server(env) as running, running.client() as client:
        wait_health_jobs(client, True)
        yield running


def _restarts(server: RunningServer) -> float:
    return value(httpx.get(f"{server.url}/metrics", timeout=10).text,
                 "jobs_consumer_restarts_total")


def test_jobs_consumer_without_its_table_is_reported_down_restarted_and_recovers(
    url: str, server: RunningServer
) -> None:
    with server.client(timeout=30) as client:
        before = _restarts(server)
        query(url, "ALTER TABLE saq_jobs RENAME TO saq_jobs_away")
        try:
            down = wait_health_jobs(client, False)
            assert "job consumer" in down["jobs_error"] or "saq" in down["jobs_error"], down
            wait_until(lambda: _restarts(server) > before, timeout=30, what="a restart counted")
            # Down while the table is away, not just for a moment: still down a probe later.
            assert wait_health_jobs(client, False)["checks"]["jobs"] is False
        finally:
            query(url, "ALTER TABLE saq_jobs_away RENAME TO saq_jobs")
        wait_health_jobs(client, True)
        job = submit(client, KEY)
        assert wait_final(client, KEY, job["id"])["status"] == "succeeded"
    assert "job consumer failed; restarting it" in server.log()


def test_jobs_job_that_stalls_two_workers_fails_instead_of_a_third(
    url: str, server: RunningServer
) -> None:
    with server.client(timeout=30) as client:
        wait_health_jobs(client, True)
        job = submit(client, KEY, prompt="[[stall]] a frozen fox", steps=4)
        done = wait_final(client, KEY, job["id"], timeout=240)
        assert done["status"] == "failed", done
        assert done["error"]["code"] == "job_stalled", done
        assert done["attempts"] == 2, done
        outcomes = query(url, "SELECT outcome FROM sleepwell_job_runs WHERE job_id = %s"
                              " ORDER BY attempt", (job["id"],))
        assert outcomes == [("stalled",), ("failed",)]
        server.wait_ready(timeout=120)  # the worker the second stall replaced is back
