"""A hot swap reaches every replica when they share the jobs database (two "pods")."""

from __future__ import annotations

from pathlib import Path

import httpx

from app.serving.demo_model import ensure_demo_model
from tests.jobs.postgres import TestPostgres, query
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
    with gunicorn_server(env | {"SLEEPWELL_STATE_DIR": str(tmp_path / "a")}) as first, \
            gunicorn_server(env | {"SLEEPWELL_STATE_DIR": str(tmp_path / "b")}) as second:
        answer = httpx.post(first.url + "/admin/models/load", json={"model": str(other)},
                            headers={"Authorization": f"Bearer {ADMIN}"}, timeout=120)
        assert answer.status_code == 200, answer.text
        wait_until(lambda: served_models(second.url) == {"demo-model-b"}, 60, period=0.3,
                   what="the other replica on the new model")
        assert served_models(first.url) == {"demo-model-b"}
        (row,) = query(url, "SELECT model, base, revision FROM sleepwell_desired_model")
    assert row[0] == str(other) and row[1] is None and row[2] == 1
