"""Jobs survive what breaks: PostgreSQL restarted mid-run, a worker SIGKILLed mid-job.

The heavy version (100 jobs, two service instances, three worker kills and a master kill)
is bench/jobs_faults.py; these are the small, always-run versions of the same faults.

Both tests share one two-worker service on a PostgreSQL of this module's own (the first test
stops and starts it). Each starts by waiting for jobs to be up and leaves the service
serving; each counts only its own jobs.
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from tests.jobs.helpers import Served, auth, jobs_env, submit, wait_final, wait_job
from tests.jobs.postgres import query, running_postgres
from tests.jobs.test_jobs_api import wait_health_jobs
from tests.support.scrape import value
from tests.support.server import RunningServer, gunicorn_server

pytestmark = pytest.mark.slow
KEY = "key-faults"
SLOW = "[[slow=0.2]] a fox"


@pytest.fixture(scope="module")
def served() -> Iterator[Served]:
    # Not the session's PostgreSQL: this one gets stopped and started again.
    with running_postgres() as postgres:
        url = postgres.new_database()
        env = jobs_env(url, KEY, SLEEPWELL_JOB_STUCK_AFTER_S="2",
                       SLEEPWELL_DATABASE_TIMEOUT_S="1")
        with gunicorn_server(env, workers=2) as server:
            yield Served(postgres, url, server)


def test_jobs_postgres_restart_loses_nothing_and_sync_keeps_answering(served: Served) -> None:
    own_postgres, server = served.postgres, served.server
    with server.client(timeout=30) as client:
        wait_health_jobs(client, True)
        jobs = [submit(client, KEY, prompt=SLOW, steps=6) for _ in range(5)]
        wait_job(client, KEY, jobs[0]["id"], lambda j: j["status"] == "running")
        own_postgres.stop()
        down = wait_health_jobs(client, False)
        assert client.get("/health/ready").status_code == 200  # the sync API still serves
        assert down["status"] == "degraded" and down["jobs_error"]  # never "healthy" (issue 20)
        refused = client.get(f"/v1/jobs/{jobs[0]['id']}", headers=auth(KEY))
        assert refused.status_code == 503 and int(refused.headers["retry-after"]) >= 1
        assert refused.json()["error"]["code"] == "jobs_unavailable"
        for _ in range(3):
            sync = client.post("/v1/images/generations", headers=auth(KEY),
                               json={"prompt": "during the outage", "size": "64x64"})
            assert sync.status_code == 200, sync.text
        own_postgres.restart_stopped()
        wait_health_jobs(client, True)
        finals = [wait_final(client, KEY, job["id"], timeout=120) for job in jobs]
        assert [job["status"] for job in finals] == ["succeeded"] * 5, finals


def _redeliveries(server: RunningServer) -> float:
    return value(httpx.get(f"{server.url}/metrics", timeout=10).text, "job_redeliveries_total")


def _running_worker(server_pids: list[int], url: str, job_id: str) -> int:
    (worker,) = query(url, "SELECT worker FROM sleepwell_jobs WHERE id = %s", (job_id,))[0]
    pid = int(str(worker).rsplit(":", 1)[1])
    assert pid in server_pids
    return pid


def test_jobs_worker_sigkill_mid_job_redelivers_and_finishes_once(served: Served) -> None:
    url, server = served.url, served.server
    with server.client(timeout=30) as client:
        wait_health_jobs(client, True)
        server.wait_ready(workers=2)  # two workers: one to kill, one to redeliver to
        redeliveries = _redeliveries(server)  # the service is shared: count from here
        jobs = [submit(client, KEY, prompt=SLOW, steps=10) for _ in range(4)]
        first = wait_job(client, KEY, jobs[0]["id"], lambda j: j["progress"]["step"] >= 1)
        victim = _running_worker(server.worker_pids(), url, first["id"])
        os.kill(victim, signal.SIGKILL)
        killed_at = time.monotonic()
        finals: list[dict[str, Any]] = [wait_final(client, KEY, job["id"], timeout=120)
                                        for job in jobs]
        assert [job["status"] for job in finals] == ["succeeded"] * 4, finals
        redelivered = [job for job in finals if job["attempts"] > 1]
        assert redelivered, finals  # at least the one the victim was running
        assert time.monotonic() - killed_at < 120
        rows = query(url, "SELECT count(*) FROM sleepwell_jobs WHERE status = 'succeeded'"
                          " AND id = ANY(%s)", ([job["id"] for job in jobs],))
        assert rows[0][0] == 4
        assert _redeliveries(server) >= redeliveries + 1
