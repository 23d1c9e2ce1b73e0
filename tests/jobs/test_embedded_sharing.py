"""Two instances from one checkout share one embedded PostgreSQL (issue 20, item 4): it
outlives every user but the last, a user killed without leaving does not count, and a
worker whose jobs cannot run says "degraded" in /health, never "healthy"."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from app.jobs.embedded import EmbeddedPostgres
from tests.jobs.helpers import submit, wait_final
from tests.jobs.postgres import query
from tests.support.server import ROOT, gunicorn_server
from tests.support.waiting import wait_until

pytestmark = pytest.mark.slow
KEY = "key-sharing"

# A user of the embedded server in a process of its own: it joins, says so, and leaves
# when its stdin closes (or never, when it is SIGKILLed).
_OTHER_USER = """
import sys
from pathlib import Path
from app.jobs.embedded import EmbeddedPostgres
server = EmbeddedPostgres(Path(sys.argv[1]))
server.start()
print("joined", flush=True)
sys.stdin.read()
server.stop()
"""


@pytest.fixture
def work() -> Iterator[Path]:
    # Under /tmp with a short name: the server's Unix socket path must stay short.
    with tempfile.TemporaryDirectory(prefix="sw-share-", dir="/tmp") as directory:
        yield Path(directory)


def _other_user(data_dir: Path) -> subprocess.Popen[str]:
    process = subprocess.Popen([sys.executable, "-c", _OTHER_USER, str(data_dir)], cwd=ROOT,
                               stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert process.stdout is not None and process.stdout.readline() == "joined\n"
    return process


def _running(data_dir: Path) -> bool:
    # PostgreSQL removes postmaster.pid when it shuts down cleanly.
    return (data_dir / "postmaster.pid").exists()


def test_embedded_postgres_outlives_every_user_but_the_last_live_one(work: Path) -> None:
    data_dir = work / "pg"
    other = _other_user(data_dir)
    ours = EmbeddedPostgres(data_dir)
    try:
        url = ours.start()
        ours.stop()  # the other user is alive: the server stays
        assert query(url, "SELECT 1") == [(1,)]
        url = ours.start()
        other.kill()  # a crash: it never leaves, and must not count once dead
        other.wait(10)
        assert _running(data_dir)
        ours.stop()
        assert not _running(data_dir)
    finally:
        other.kill()
        other.wait(10)
        if _running(data_dir):  # a failed check above: leave no server behind
            ours.start()
            ours.stop()


def test_embedded_sharing_first_master_stops_second_still_runs_jobs(work: Path) -> None:
    data_dir = work / "pg"
    env = {"SLEEPWELL_JOBS_ENABLED": "true", "SLEEPWELL_EMBEDDED_POSTGRES_DIR": str(data_dir),
           "SLEEPWELL_API_KEYS": KEY}
    # Two `make run`s of one checkout: one data directory, two ports.
    with gunicorn_server(env, wait=False) as first, gunicorn_server(env, wait=False) as second:
        first.wait_ready()
        second.wait_ready()
        assert first.stop() == 0
        still_running = _running(data_dir)
        with second.client(timeout=30) as client:
            job = submit(client, KEY)
            final = wait_final(client, KEY, job["id"], timeout=120)
            health = client.get("/health").json()
        assert second.stop() == 0
    assert still_running
    assert final["status"] == "succeeded", final
    assert health["status"] == "healthy" and health["checks"]["jobs"] is True
    assert not _running(data_dir)  # the last one out stopped it


def test_health_jobs_database_gone_reports_degraded_with_reason_and_stays_ready(
    work: Path,
) -> None:
    data_dir = work / "pg"
    env = {"SLEEPWELL_JOBS_ENABLED": "true", "SLEEPWELL_EMBEDDED_POSTGRES_DIR": str(data_dir),
           "SLEEPWELL_API_KEYS": KEY, "SLEEPWELL_DATABASE_TIMEOUT_S": "1"}
    with gunicorn_server(env) as server:
        up = wait_until(lambda: _jobs_health(server.url, True), 60, period=0.1,
                        what="jobs up in /health")
        postmaster = int((data_dir / "postmaster.pid").read_text().split()[0])
        os.kill(postmaster, signal.SIGINT)  # PostgreSQL's fast shutdown: the database is gone
        down = wait_until(lambda: _jobs_health(server.url, False), 60, period=0.1,
                          what="jobs down in /health")
        ready = httpx.get(server.url + "/health/ready", timeout=10)
    assert up[1]["status"] == "healthy"
    status, body = down
    assert status == 200  # images still serve: the report itself does not fail
    assert body["status"] == "degraded" and body["state"] == "ready"
    assert any(reason.startswith("jobs unavailable: ") for reason in body["reasons"]), body
    assert body["jobs_error"]
    assert ready.status_code == 200  # a jobs outage does not pull the worker from rotation


def _jobs_health(url: str, available: bool) -> tuple[int, dict[str, Any]] | None:
    """(status code, body) of /health once its jobs check is ``available``."""
    answer = httpx.get(url + "/health", timeout=10)
    body: dict[str, Any] = answer.json()
    return (answer.status_code, body) if body["checks"].get("jobs") is available else None
