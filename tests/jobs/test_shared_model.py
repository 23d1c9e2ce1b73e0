"""A hot swap reaches every replica when they share the jobs database (two "pods"), and a
published model that no longer loads does not crash-loop a replica that (re)starts."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import httpx

from app.serving.demo_model import DEMO_MODEL_NAME, ensure_demo_model
from tests.jobs.postgres import TestPostgres, query
from tests.support.scrape import value
from tests.support.server import gunicorn_server
from tests.support.waiting import wait_until

ADMIN = "admin-secret"


def served_models(url: str, polls: int = 6) -> set[str]:
    return {httpx.get(url + "/v1/models", headers={"connection": "close"}, timeout=10)
            .json()["data"][0]["id"] for _ in range(polls)}


def test_swap_on_one_replica_reaches_another_through_the_database(
    postgres: TestPostgres, demo_model_dir: Path, tmp_path: Path,
) -> None:
    other = ensure_demo_model(tmp_path / "demo-model-b", seed=1)
    url = postgres.new_database()
    env = {"SLEEPWELL_JOBS_ENABLED": "true", "SLEEPWELL_DATABASE_URL": url,
           "SLEEPWELL_ADMIN_KEY": ADMIN}
    # Two masters with their own state directories: what two Kubernetes pods are.
    # They boot at once (each start is seconds of model loading), then both must be ready.
    with gunicorn_server(env | {"SLEEPWELL_STATE_DIR": str(tmp_path / "a")}, wait=False) as first, \
            gunicorn_server(env | {"SLEEPWELL_STATE_DIR": str(tmp_path / "b")},
                            wait=False) as second:
        first.wait_ready()
        second.wait_ready()
        answer = httpx.post(first.url + "/admin/models/load", json={"model": str(other)},
                            headers={"Authorization": f"Bearer {ADMIN}"}, timeout=120)
        assert answer.status_code == 200, answer.text
        wait_until(lambda: served_models(second.url) == {"demo-model-b"}, 60, period=0.3,
                   what="the other replica on the new model")
        assert served_models(first.url) == {"demo-model-b"}
        (row,) = query(url, "SELECT model, base, revision FROM sleepwell_desired_model")
    assert row[0] == str(other) and row[1] is None and row[2] == 1


def test_shared_model_published_model_corrupt_restarted_replica_falls_back(
    postgres: TestPostgres, demo_model_dir: Path, tmp_path: Path,
) -> None:
    published = ensure_demo_model(tmp_path / "published-model", seed=1)
    url = postgres.new_database()
    env = {"SLEEPWELL_JOBS_ENABLED": "true", "SLEEPWELL_DATABASE_URL": url,
           "SLEEPWELL_ADMIN_KEY": ADMIN,
           # Two failed loads (0.2 s apart) are enough for today's master to give up, fast.
           "SLEEPWELL_LOAD_ATTEMPTS": "2", "SLEEPWELL_LOAD_BACKOFF_S": "0.2"}
    first_env = env | {"SLEEPWELL_STATE_DIR": str(tmp_path / "a")}
    second_env = env | {"SLEEPWELL_STATE_DIR": str(tmp_path / "b")}
    with gunicorn_server(first_env) as first:
        answer = httpx.post(first.url + "/admin/models/load", json={"model": str(published)},
                            headers={"Authorization": f"Bearer {ADMIN}"}, timeout=120)
        assert answer.status_code == 200, answer.text
        # The weights are corrupted after the publish: a bad copy, a full disk.
        (published / "unet" / "diffusion_pytorch_model.safetensors").write_bytes(b"\0" * 64)
        # Another pod starts (or restarts) and reads the published model from the database.
        with gunicorn_server(second_env) as second:
            served_second = served_models(second.url)
            second_health = httpx.get(second.url + "/health", timeout=10).json()
            failures = value(httpx.get(second.url + "/metrics", timeout=10).text,
                             "model_load_failures_total")
            (pid,) = second.worker_pids()
            os.kill(pid, signal.SIGKILL)  # its replacement must skip the failed revision
            wait_until(lambda: _serving_pid(second.url) not in (None, pid), 120, period=0.2,
                       what="the replacement worker serving")
            failures_after_respawn = value(httpx.get(second.url + "/metrics", timeout=10).text,
                                           "model_load_failures_total")
            assert second.process.poll() is None
        # The first pod still holds the model it loaded, and reports the failure too.
        first_error = wait_until(lambda: httpx.get(first.url + "/health", timeout=10)
                                 .json()["last_swap_error"], 10, what="first pod reporting")
        served_first = served_models(first.url)
        (row,) = query(url, "SELECT revision, failed_revision, error FROM sleepwell_desired_model")
    assert served_second == {DEMO_MODEL_NAME}
    assert second_health["state"] == "ready" and second_health["reasons"] == []
    assert str(published) in second_health["last_swap_error"]
    assert failures == 1 and failures_after_respawn == 1
    assert served_first == {"published-model"}
    assert str(published) in first_error
    assert row[1] == row[0] and str(published) in row[2]


def _serving_pid(url: str) -> int | None:
    try:
        answer = httpx.get(url + "/health", headers={"connection": "close"}, timeout=5)
    except httpx.HTTPError:
        return None
    pid: int = answer.json()["worker"]["pid"]
    return pid if answer.status_code == 200 else None
