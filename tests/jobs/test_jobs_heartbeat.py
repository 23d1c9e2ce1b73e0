"""A running job keeps its heartbeat whatever else fails, has a deadline of its own, reports
its duplicate runs, and its "completed" webhook is never lost. Real gunicorn, PostgreSQL.

Faults come from the real database: a trigger that refuses some webhook enqueues (as a
database error would), a row set back to queued (as a sweep does), a restart.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import httpx
import pytest

from tests.jobs.helpers import (
    WEBHOOK_SECRET,
    jobs_env,
    submit,
    wait_final,
    wait_job,
    webhook_receiver,
)
from tests.jobs.postgres import TestPostgres, query, running_postgres
from tests.jobs.test_jobs_api import wait_health_jobs
from tests.support.scrape import value
from tests.support.server import RunningServer, gunicorn_server
from tests.support.waiting import wait_until

pytestmark = pytest.mark.slow
KEY = "key-heartbeat"
STUCK_AFTER_S = 3


def _env(url: str, **extra: str) -> dict[str, str]:
    return jobs_env(url, KEY, SLEEPWELL_WEBHOOK_SECRET=WEBHOOK_SECRET,
                    SLEEPWELL_WEBHOOK_ALLOWED_HOSTS="127.0.0.1",
                    SLEEPWELL_WEBHOOK_RETRY_DELAY_S="0.2",
                    SLEEPWELL_JOB_PROGRESS_INTERVAL_S="0.2", **extra)


@pytest.fixture(scope="module")
def url(postgres: TestPostgres) -> str:
    return postgres.new_database()


@pytest.fixture(scope="module")
def server(url: str) -> Iterator[RunningServer]:
    env = _env(url, SLEEPWELL_JOB_STUCK_AFTER_S=str(STUCK_AFTER_S),
               SLEEPWELL_JOB_HEARTBEAT_INTERVAL_S="0.5", SLEEPWELL_REQUEST_TIMEOUT_S="2")
    with gunicorn_server(env) as running, running.client() as client:
        wait_health_jobs(client, True)
        yield running


@pytest.fixture
def client(server: RunningServer) -> Iterator[httpx.Client]:
    with server.client(timeout=30) as http:
        yield http


@contextmanager
def refused_enqueues(url: str, key_pattern: str) -> Iterator[None]:
    """While open, inserting a saq_jobs row whose key matches fails (a database error)."""
    pattern = key_pattern.replace("%", "%%")  # query() always passes parameters
    query(url, "CREATE OR REPLACE FUNCTION h1_refuse() RETURNS trigger LANGUAGE plpgsql AS $$"
               f" BEGIN IF NEW.key LIKE '{pattern}' THEN RAISE EXCEPTION"
               " 'injected: enqueue refused'; END IF; RETURN NEW; END $$;"
               " CREATE TRIGGER h1_refuse BEFORE INSERT ON saq_jobs FOR EACH ROW"
               " EXECUTE FUNCTION h1_refuse()")
    try:
        yield
    finally:
        query(url, "DROP TRIGGER IF EXISTS h1_refuse ON saq_jobs")


def runs(url: str, job_id: str) -> list[tuple[Any, ...]]:
    return query(url, "SELECT attempt, outcome FROM sleepwell_job_runs WHERE job_id = %s"
                      " ORDER BY attempt", (job_id,))


def test_jobs_run_longer_than_the_request_timeout_succeeds(client: httpx.Client) -> None:
    # 10 steps of 0.4 s: twice SLEEPWELL_REQUEST_TIMEOUT_S; a job's deadline is its own.
    job = submit(client, KEY, prompt="[[slow=0.4]] a patient fox", steps=10)
    done = wait_final(client, KEY, job["id"])
    assert done["status"] == "succeeded", done
    sync = client.post("/v1/images/generations", headers={"Authorization": f"Bearer {KEY}"},
                       json={"prompt": "[[slow=0.4]] an impatient fox", "size": "64x64",
                             "num_inference_steps": 10})
    assert sync.status_code == 504, sync.text  # the sync deadline still applies to requests


def test_jobs_heartbeat_goes_on_when_progress_webhooks_cannot_be_enqueued(
    url: str, client: httpx.Client
) -> None:
    with webhook_receiver() as receiver, refused_enqueues(url, r"msg\_%\_progress\_%"):
        # Runs 4x longer than stuck-after; every progress webhook enqueue fails meanwhile.
        job = submit(client, KEY, prompt="[[slow=0.5]] a watched fox", steps=24,
                     webhook=receiver.url, webhook_events=["progress"])
        done = wait_final(client, KEY, job["id"])
    assert done["status"] == "succeeded", done
    assert (done["attempts"], done["completions"]) == (1, 1), done  # never swept
    assert runs(url, job["id"]) == [(1, "succeeded")]


def test_jobs_completed_webhook_lost_at_finish_is_delivered_once_later(
    url: str, client: httpx.Client
) -> None:
    with webhook_receiver() as receiver:
        with refused_enqueues(url, r"msg\_%\_completed"):
            job = submit(client, KEY, webhook=receiver.url)
            done = wait_final(client, KEY, job["id"])
            assert done["status"] == "succeeded" and done["attempts"] == 1, done
            assert query(url, "SELECT completed_notified FROM sleepwell_jobs WHERE id = %s",
                         (job["id"],)) == [(False,)]
        # Maintenance finds the final row without its webhook and enqueues it.
        wait_until(lambda: receiver.delivered(), timeout=60, what="the completed webhook")
        wait_until(lambda: query(url, "SELECT completed_notified FROM sleepwell_jobs WHERE"
                                      " id = %s", (job["id"],)) == [(True,)],
                   timeout=30, what="the row marked notified")
        events = [body for _, body in receiver.delivered()]
    assert [(e["type"], e["data"]["id"]) for e in events] == [("job.completed", job["id"])]
    assert len(receiver.requests) == 1


def test_jobs_duplicate_run_is_counted_logged_and_visible(
    url: str, server: RunningServer, client: httpx.Client
) -> None:
    before = value(httpx.get(f"{server.url}/metrics", timeout=10).text,
                   "job_duplicate_runs_total")
    job = submit(client, KEY, prompt="[[slow=0.3]] a twin fox", steps=12)
    wait_job(client, KEY, job["id"], lambda j: j["progress"]["step"] >= 1)
    # As a sweep does when it wrongly thinks the owner died: queued again, in front.
    query(url, "UPDATE saq_jobs SET status = 'queued', priority = 0 WHERE key = %s",
          (job["id"],))
    wait_until(lambda: len(runs(url, job["id"])) == 2, timeout=30, what="a second run")
    wait_final(client, KEY, job["id"])  # the first run to end made it final ...
    wait_until(lambda: all(outcome for _, outcome in runs(url, job["id"])), timeout=30,
               what="both runs' outcomes")  # ... and the other one ended after it
    done = wait_job(client, KEY, job["id"], lambda j: j["completions"] >= 2)
    assert done["status"] == "succeeded" and done["attempts"] == 2, done
    assert done["completions"] == 2, done
    assert sorted(outcome for _, outcome in runs(url, job["id"])) == ["duplicate", "succeeded"]
    # The duplicate is counted right after its outcome is written: wait for the count.
    wait_until(lambda: value(httpx.get(f"{server.url}/metrics", timeout=10).text,
                             "job_duplicate_runs_total") == before + 1,
               timeout=30, what="job_duplicate_runs_total + 1")
    wait_until(lambda: "after another run had already made the job final" in server.log(),
               timeout=30, what="the duplicate run's log line")


def test_jobs_postgres_restart_shorter_than_stuck_after_runs_each_job_once() -> None:
    with running_postgres() as own:
        url = own.new_database()
        env = _env(url, SLEEPWELL_JOB_STUCK_AFTER_S="15", SLEEPWELL_JOB_HEARTBEAT_INTERVAL_S="1",
                   SLEEPWELL_DATABASE_TIMEOUT_S="1")
        with gunicorn_server(env) as server, server.client(timeout=30) as client:
            wait_health_jobs(client, True)
            # 28 steps of 0.5 s: the job runs before, through and after the short outage.
            job = submit(client, KEY, prompt="[[slow=0.5]] a steady fox", steps=28)
            wait_job(client, KEY, job["id"], lambda j: j["progress"]["step"] >= 1)
            stopped_at = time.monotonic()
            own.stop()
            wait_health_jobs(client, False)
            own.restart_stopped()
            wait_health_jobs(client, True)
            outage_s = time.monotonic() - stopped_at
            done = wait_final(client, KEY, job["id"], timeout=120)
            text = httpx.get(f"{server.url}/metrics", timeout=10).text
        assert done["status"] == "succeeded", done
        assert (done["attempts"], done["completions"]) == (1, 1), (done, outage_s)
        assert runs(url, job["id"]) == [(1, "succeeded")]
        assert value(text, "job_redeliveries_total") == 0
