"""/v1/jobs end to end: real gunicorn, real PostgreSQL, the real tiny pipeline."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from standardwebhooks.webhooks import Webhook

from tests.jobs.helpers import (
    WEBHOOK_SECRET,
    auth,
    submit,
    wait_final,
    wait_job,
    webhook_receiver,
)
from tests.jobs.postgres import TestPostgres
from tests.support.scrape import has, value
from tests.support.server import RunningServer, gunicorn_server

KEY_A, KEY_B, ADMIN = "key-alice", "key-bob", "admin-secret"
SLOW = "[[slow=0.25]] a slow fox"  # 0.25 s per step: long enough to watch and cancel


@pytest.fixture(scope="module")
def server(postgres: TestPostgres) -> Iterator[RunningServer]:
    env = {
        "SLEEPWELL_JOBS_ENABLED": "true",
        "SLEEPWELL_DATABASE_URL": postgres.new_database(),
        "SLEEPWELL_FAULT_INJECTION": "true",
        "SLEEPWELL_API_KEYS": f"{KEY_A},{KEY_B}",
        "SLEEPWELL_ADMIN_KEY": ADMIN,
        "SLEEPWELL_WEBHOOK_SECRET": WEBHOOK_SECRET,
        "SLEEPWELL_WEBHOOK_ALLOWED_HOSTS": "127.0.0.1",
        "SLEEPWELL_WEBHOOK_RETRY_DELAY_S": "0.2",
        "SLEEPWELL_MAX_BATCH_SIZE": "1",  # one job at a time: the next one stays queued
        "SLEEPWELL_JOB_PROGRESS_INTERVAL_S": "0.1",
    }
    with gunicorn_server(env) as running:
        with running.client() as client:  # the jobs component connects in the background
            wait_health_jobs(client, True)
        yield running


def wait_health_jobs(client: httpx.Client, expected: bool, timeout: float = 60) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        body: dict[str, Any] = client.get("/health").json()
        if body["checks"].get("jobs") is expected:
            return body
        time.sleep(0.1)
    raise TimeoutError(f"checks.jobs never became {expected}")


@pytest.fixture
def client(server: RunningServer) -> Iterator[httpx.Client]:
    with server.client() as http:
        yield http


def test_jobs_submit_returns_202_location_and_the_sync_apis_data(client: httpx.Client) -> None:
    response = client.post("/v1/jobs", headers=auth(KEY_A),
                           json={"prompt": "a red fox", "size": "64x64", "seed": 7})
    assert response.status_code == 202, response.text
    job = response.json()
    assert response.headers["location"] == f"/v1/jobs/{job['id']}"
    assert job["status"] == "queued" and job["progress"] == {"step": 0, "steps": 2}
    done = wait_final(client, KEY_A, job["id"])
    assert done["status"] == "succeeded" and done["attempts"] == 1
    assert done["progress"] == {"step": 2, "steps": 2}
    assert done["started_at"] >= done["created_at"] and done["finished_at"] >= done["started_at"]
    sync = client.post("/v1/images/generations", headers=auth(KEY_A),
                       json={"prompt": "a red fox", "size": "64x64", "seed": 7}).json()
    assert done["result"] == sync["data"]  # same seed, same bytes, same shape


def test_jobs_idempotency_key_returns_the_same_job(client: httpx.Client) -> None:
    headers = {**auth(KEY_A), "Idempotency-Key": "order-1234"}
    body = {"prompt": "one fox only", "size": "64x64"}
    first = client.post("/v1/jobs", json=body, headers=headers)
    again = client.post("/v1/jobs", json=body, headers=headers)
    assert first.status_code == again.status_code == 202
    assert again.json()["id"] == first.json()["id"]
    assert again.headers["idempotent-replayed"] == "true"
    other = client.post("/v1/jobs", json={**body, "prompt": "two foxes"}, headers=headers)
    assert other.status_code == 409 and other.json()["error"]["param"] == "Idempotency-Key"
    # The same key under another API key is another client's key: a new job.
    bobs = client.post("/v1/jobs", json=body, headers={**auth(KEY_B), "Idempotency-Key":
                                                       "order-1234"})
    assert bobs.status_code == 202 and bobs.json()["id"] != first.json()["id"]


def test_jobs_another_key_gets_404_everywhere(client: httpx.Client) -> None:
    job = submit(client, KEY_A)
    for method, path in (("GET", ""), ("GET", "/events"), ("POST", "/cancel")):
        response = client.request(method, f"/v1/jobs/{job['id']}{path}", headers=auth(KEY_B))
        assert response.status_code == 404, (path, response.text)
        assert response.json()["error"]["code"] == "job_not_found"
    assert client.get(f"/v1/jobs/{job['id']}").status_code == 401  # no key at all
    listed = client.get("/v1/jobs", headers=auth(KEY_B)).json()["data"]
    assert job["id"] not in [entry["id"] for entry in listed]


def test_jobs_admin_lists_every_keys_jobs_with_a_status_filter(client: httpx.Client) -> None:
    mine, theirs = submit(client, KEY_A), submit(client, KEY_B)
    for job, key in ((mine, KEY_A), (theirs, KEY_B)):
        wait_final(client, key, job["id"])
    listed = client.get("/v1/jobs", params={"status": "succeeded", "limit": 500},
                        headers=auth(ADMIN))
    assert listed.status_code == 200, listed.text
    ids = {entry["id"] for entry in listed.json()["data"]}
    assert {mine["id"], theirs["id"]} <= ids
    assert all(entry["status"] == "succeeded" for entry in listed.json()["data"])
    assert "result" not in listed.json()["data"][0]  # lists stay small
    bad = client.get("/v1/jobs", params={"status": "done"}, headers=auth(ADMIN))
    assert bad.status_code == 400 and bad.json()["error"]["param"] == "query.status"


def test_jobs_cancel_running_stops_at_a_step_and_queued_never_runs(client: httpx.Client) -> None:
    running = submit(client, KEY_A, prompt=SLOW, steps=30)
    queued = submit(client, KEY_A, prompt=SLOW, steps=30)
    wait_job(client, KEY_A, running["id"], lambda j: j["progress"]["step"] >= 1)
    assert client.get(f"/v1/jobs/{queued['id']}", headers=auth(KEY_A)).json()["status"] == "queued"
    cancel = client.post(f"/v1/jobs/{queued['id']}/cancel", headers=auth(KEY_A))
    assert cancel.status_code == 200 and cancel.json()["status"] == "cancelled"
    client.post(f"/v1/jobs/{running['id']}/cancel", headers=auth(KEY_A))
    stopped = wait_final(client, KEY_A, running["id"])
    assert stopped["status"] == "cancelled", stopped
    assert 1 <= stopped["progress"]["step"] < 30
    assert stopped["error"]["code"] == "job_cancelled"
    later = wait_final(client, KEY_A, queued["id"])
    assert later["status"] == "cancelled" and later["attempts"] == 0 and "started_at" not in later


def _sse(client: httpx.Client, job_id: str) -> list[tuple[str, dict[str, Any]]]:
    events: list[tuple[str, dict[str, Any]]] = []
    with client.stream("GET", f"/v1/jobs/{job_id}/events", headers=auth(KEY_A)) as stream:
        assert stream.headers["content-type"].startswith("text/event-stream")
        name = ""
        for line in stream.iter_lines():
            if line.startswith("event:"):
                name = line.split(":", 1)[1].strip()
            elif line.startswith("data:"):
                events.append((name, json.loads(line.split(":", 1)[1])))
    return events


def test_jobs_progress_is_visible_by_get_and_sse(client: httpx.Client) -> None:
    job = submit(client, KEY_A, prompt=SLOW, steps=8)
    seen = wait_job(client, KEY_A, job["id"], lambda j: 1 <= j["progress"]["step"] < 8)
    assert seen["status"] == "running" and seen["progress"]["steps"] == 8
    events = _sse(client, job["id"])  # runs until the job ends, then the stream closes
    steps = [data["step"] for name, data in events if name == "progress"]
    assert steps == sorted(steps) and len(set(steps)) >= 2, events
    name, last = events[-1]
    assert name == "job" and last["status"] == "succeeded" and len(last["result"]) == 1


def test_jobs_webhook_is_signed_and_retried_until_the_receiver_takes_it(
    client: httpx.Client,
) -> None:
    with webhook_receiver(fail_first=2) as receiver:
        job = submit(client, KEY_A, webhook=receiver.url, webhook_events=["started", "completed"])
        wait_final(client, KEY_A, job["id"])
        deadline = time.monotonic() + 60
        while len(receiver.delivered()) < 2 and time.monotonic() < deadline:
            time.sleep(0.1)
        delivered = receiver.delivered()
        assert sorted(body["type"] for _, body in delivered) == ["job.completed", "job.started"]
        assert len(receiver.requests) == 4  # two failures (retried), then both delivered
        verifier = Webhook(WEBHOOK_SECRET)
        for headers, body, _ in receiver.requests:
            verifier.verify(body, headers)  # raises unless the signature is right
        ids = [headers["webhook-id"] for headers, _, _ in receiver.requests]
        assert len(set(ids)) == 2  # retries keep the message id
        completed = next(body for _, body in delivered if body["type"] == "job.completed")
        assert completed["data"]["id"] == job["id"] and completed["data"]["result"]


@pytest.mark.parametrize("target", ["http://169.254.169.254/latest", "http://10.1.2.3/hook",
                                    "http://[::1]:9/x", "ftp://example.com/x"])
def test_jobs_webhook_to_a_private_or_odd_target_is_refused(
    client: httpx.Client, target: str
) -> None:
    response = client.post("/v1/jobs", headers=auth(KEY_A),
                           json={"prompt": "x", "size": "64x64", "webhook": target})
    assert response.status_code == 400, response.text
    assert response.json()["error"]["param"] == "webhook"


def test_jobs_bad_input_is_a_400_naming_the_parameter(client: httpx.Client) -> None:
    response = client.post("/v1/jobs", headers=auth(KEY_A),
                           json={"prompt": "x", "size": "64x64", "num_inference_steps": 10_000})
    assert response.status_code == 400
    assert response.json()["error"]["param"] == "num_inference_steps"
    unknown = client.get("/v1/jobs/job_nope", headers=auth(KEY_A))
    assert unknown.status_code == 404 and unknown.json()["error"]["code"] == "job_not_found"


def test_jobs_submit_with_the_admin_key_is_refused_403(client: httpx.Client) -> None:
    # It skips the per-key rate limit and would make a job no key can read.
    before = client.get("/v1/jobs", params={"limit": 1000}, headers=auth(ADMIN)).json()["data"]
    response = client.post("/v1/jobs", headers=auth(ADMIN),
                           json={"prompt": "an operator's fox", "size": "64x64"})
    assert response.status_code == 403, response.text
    error = response.json()["error"]
    assert error["code"] == "admin_key_not_for_jobs" and error.get("param") is None, error
    after = client.get("/v1/jobs", params={"limit": 1000}, headers=auth(ADMIN)).json()["data"]
    assert len(after) == len(before)


def test_jobs_metrics_count_final_statuses(server: RunningServer, client: httpx.Client) -> None:
    job = submit(client, KEY_A)
    wait_final(client, KEY_A, job["id"])
    text = httpx.get(f"{server.url}/metrics", timeout=10).text
    assert value(text, "jobs_total", status="succeeded") >= 1
    assert value(text, "jobs_database_up") == 1
    assert value(text, "jobs_queued") >= 0 and value(text, "jobs_oldest_queued_age_seconds") >= 0
    # Every outcome's series is published before its first delivery, so rate() sees it.
    assert all(has(text, "webhook_deliveries_total", outcome=outcome)
               for outcome in ("delivered", "retried", "failed", "refused"))
