"""A cancel that is pending shows as ``cancel_requested``; every job logs its start, its
finish (outcome, duration) and a cancel, as JSON lines carrying the job and request ids.
Real gunicorn, real PostgreSQL, the real tiny pipeline."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from tests.jobs.helpers import auth, jobs_env, submit, wait_final, wait_job
from tests.jobs.postgres import TestPostgres
from tests.support.server import RunningServer, gunicorn_server
from tests.support.waiting import wait_until

KEY = "key-carol"
SLOW = "[[slow=0.25]] a slow heron"  # 0.25 s per step: a run long enough to cancel mid-way
LOG_WAIT_S = 30


@pytest.fixture(scope="module")
def server(postgres: TestPostgres) -> Iterator[RunningServer]:
    # SLEEPWELL_MAX_BATCH_SIZE 1: one job at a time, so the next one stays queued.
    env = jobs_env(postgres.new_database(), KEY, SLEEPWELL_JOB_PROGRESS_INTERVAL_S="0.1",
                   SLEEPWELL_MAX_BATCH_SIZE="1")
    with gunicorn_server(env) as running, running.client() as client:
        wait_until(lambda: client.get("/health").json()["checks"].get("jobs") is True, 60,
                   period=0.1, what="the jobs component connected")
        yield running


@pytest.fixture
def client(server: RunningServer) -> Iterator[httpx.Client]:
    with server.client() as http:
        yield http


def job_lines(server: RunningServer, job_id: str) -> list[dict[str, Any]]:
    lines = []
    for line in server.log().splitlines():
        if job_id in line and line.startswith("{"):
            record = json.loads(line)
            if record.get("logger") == "sleepwell.jobs":
                lines.append(record)
    return lines


def logged(server: RunningServer, job_id: str, message: str) -> dict[str, Any]:
    def find() -> dict[str, Any]:
        return next((r for r in job_lines(server, job_id) if r["message"] == message), {})

    return wait_until(find, LOG_WAIT_S, what=f"log line {message!r}")


def submit_traced(client: httpx.Client, steps: int, prompt: str) -> tuple[dict[str, Any], str]:
    body = {"prompt": prompt, "size": "64x64", "num_inference_steps": steps}
    response = client.post("/v1/jobs", json=body, headers=auth(KEY))
    assert response.status_code == 202, response.text
    return response.json(), response.headers["x-request-id"]


def test_jobs_cancel_of_running_job_answers_cancel_requested_until_it_ends(
    client: httpx.Client,
) -> None:
    job = submit(client, KEY, prompt=SLOW, steps=40)
    assert job["cancel_requested"] is False
    wait_job(client, KEY, job["id"], lambda j: j["progress"]["step"] >= 1)
    cancel = client.post(f"/v1/jobs/{job['id']}/cancel", headers=auth(KEY))
    assert cancel.status_code == 200
    assert cancel.json()["status"] == "running" and cancel.json()["cancel_requested"] is True
    seen = client.get(f"/v1/jobs/{job['id']}", headers=auth(KEY)).json()
    assert seen["cancel_requested"] is True, seen
    ended = wait_final(client, KEY, job["id"])
    assert ended["status"] == "cancelled" and ended["cancel_requested"] is True


def test_jobs_never_cancelled_shows_cancel_requested_false(client: httpx.Client) -> None:
    job = submit(client, KEY, steps=2)
    ended = wait_final(client, KEY, job["id"])
    assert ended["status"] == "succeeded" and ended["cancel_requested"] is False
    listed = client.get("/v1/jobs", headers=auth(KEY)).json()["data"]
    assert {j["id"]: j["cancel_requested"] for j in listed}[job["id"]] is False


def test_jobs_log_start_and_finish_with_outcome_duration_and_request_id(
    server: RunningServer, client: httpx.Client
) -> None:
    job, request_id = submit_traced(client, 2, "a heron at dawn")
    assert wait_final(client, KEY, job["id"])["status"] == "succeeded"
    started = logged(server, job["id"], "job started")
    finished = logged(server, job["id"], "job finished")
    for line in (started, finished):
        assert line["job_id"] == job["id"] and line["request_id"] == request_id
        assert line["level"] == "INFO" and line["attempt"] == 1
    assert finished["outcome"] == "succeeded"
    assert isinstance(finished["duration_s"], float) and finished["duration_s"] >= 0


def test_jobs_log_cancel_with_both_request_ids_and_a_cancelled_finish(
    server: RunningServer, client: httpx.Client
) -> None:
    job, submit_id = submit_traced(client, 40, SLOW)
    wait_job(client, KEY, job["id"], lambda j: j["progress"]["step"] >= 1)
    cancel = client.post(f"/v1/jobs/{job['id']}/cancel", headers=auth(KEY))
    cancel_id = cancel.headers["x-request-id"]
    wait_final(client, KEY, job["id"])
    requested = logged(server, job["id"], "job cancel requested")
    assert requested["request_id"] == cancel_id and requested["submit_request_id"] == submit_id
    assert requested["status_was"] == "running" and requested["status"] == "running"
    finished = logged(server, job["id"], "job finished")
    assert finished["outcome"] == "cancelled" and finished["reason"] == "job_cancelled"
    assert finished["request_id"] == submit_id


def test_jobs_cancel_of_queued_job_logs_it_cancelled_at_once(
    server: RunningServer, client: httpx.Client
) -> None:
    blocker = submit(client, KEY, prompt=SLOW, steps=40)
    wait_job(client, KEY, blocker["id"], lambda j: j["status"] == "running")
    waiting = submit(client, KEY, prompt=SLOW, steps=40)
    answer = client.post(f"/v1/jobs/{waiting['id']}/cancel", headers=auth(KEY)).json()
    assert answer["status"] == "cancelled" and answer["cancel_requested"] is True
    requested = logged(server, waiting["id"], "job cancel requested")
    assert requested["status_was"] == "queued" and requested["status"] == "cancelled"
    client.post(f"/v1/jobs/{blocker['id']}/cancel", headers=auth(KEY))
    assert wait_final(client, KEY, waiting["id"])["attempts"] == 0  # it never ran
