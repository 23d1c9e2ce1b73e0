"""A hot swap outlives restarts (issue 20, item 5): a start says which model it serves and
why, and POST /admin/models/reset returns every worker to the configured model under its
configured name, for good (also after the next restart)."""

from __future__ import annotations

import tempfile
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from app.serving.demo_model import DEMO_MODEL_NAME, ensure_demo_model
from app.serving.desired_model import DesiredModelStore
from tests.support.server import gunicorn_server
from tests.support.waiting import wait_until

pytestmark = pytest.mark.slow
ADMIN = {"Authorization": "Bearer admin-secret"}


@pytest.fixture
def work() -> Iterator[Path]:
    # Under /tmp with a short name: the embedded server's Unix socket path must stay short.
    with tempfile.TemporaryDirectory(prefix="sw-restore-", dir="/tmp") as directory:
        yield Path(directory)


def served_models(url: str, polls: int = 10) -> set[str]:
    # A new connection per call, so every worker may answer.
    return {httpx.get(url + "/v1/models", headers={"connection": "close"}, timeout=10)
            .json()["data"][0]["id"] for _ in range(polls)}


def test_model_restore_swap_survives_restart_says_why_and_reset_restores_configured(
    work: Path,
) -> None:
    other = ensure_demo_model(work / "demo-model-b", seed=1)
    # `make run`'s defaults: jobs on, the embedded PostgreSQL (which holds the desired model).
    env = {"SLEEPWELL_JOBS_ENABLED": "true", "SLEEPWELL_ADMIN_KEY": "admin-secret",
           "SLEEPWELL_EMBEDDED_POSTGRES_DIR": str(work / "pg")}
    with gunicorn_server(env) as first:
        loaded = httpx.post(first.url + "/admin/models/load", headers=ADMIN,
                            json={"model": str(other)}, timeout=120)
    assert loaded.status_code == 200, loaded.text
    with gunicorn_server(env, workers=2) as second:
        after_restart = served_models(second.url)
        origin = httpx.get(second.url + "/health", timeout=10).json()["model_origin"]
        anonymous = httpx.post(second.url + "/admin/models/reset", timeout=60)
        reset = httpx.post(second.url + "/admin/models/reset", headers=ADMIN, timeout=120)
        wait_until(lambda: served_models(second.url) == {DEMO_MODEL_NAME}, 60, period=0.3,
                   what="every worker back on the configured model")
        by_name = httpx.post(second.url + "/v1/images/generations", timeout=60, json={
            "prompt": "a red fox", "size": "64x64", "model": DEMO_MODEL_NAME})
        second_log = second.log()
    with gunicorn_server(env) as third:
        after_reset_restart = served_models(third.url, polls=3)
        third_origin = httpx.get(third.url + "/health", timeout=10).json()["model_origin"]
        third_log = third.log()
    assert after_restart == {"demo-model-b"}
    assert origin.startswith("published by an operator at ")
    assert "via /admin/models/load" in origin and "/admin/models/reset" in origin
    assert "published by an operator at " in second_log  # the start log says why
    assert anonymous.status_code == 401
    assert set(anonymous.json()["error"]) == {"message", "type", "param", "code"}
    assert reset.status_code == 200, reset.text
    assert reset.json()["model"] == DEMO_MODEL_NAME
    assert reset.json()["previous"] == "demo-model-b"
    assert by_name.status_code == 200, by_name.text
    assert after_reset_restart == {DEMO_MODEL_NAME}
    assert third_origin.startswith("configured (SLEEPWELL_MODEL unset: the demo model)")
    assert "an operator reset to it at " in third_origin
    assert "configured (SLEEPWELL_MODEL unset: the demo model)" in third_log


async def test_desired_model_store_reset_record_names_no_model_and_its_time(
    tmp_path: Path,
) -> None:
    store = DesiredModelStore(tmp_path)
    await store.publish("/models/b", None)
    published = await store.publish(None, None)
    read = await store.read()
    assert published is not None and read == published
    assert read.model is None and read.published_at is not None
    assert read.origin("configured (x)").startswith("configured (x); an operator reset to it")
