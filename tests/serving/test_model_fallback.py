"""A published model that no longer loads must not crash-loop the workers (issue 19, 9).

Real gunicorn with two workers and the per-box file store: a swap is published, its files
go away, and the workers gunicorn respawns fall back to the configured model instead of
failing until the master gives up (status 4).
"""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
from pathlib import Path
from typing import Any

import httpx

from app.serving.demo_model import DEMO_MODEL_NAME, ensure_demo_model
from app.serving.desired_model import DesiredModel, DesiredModelStore
from tests.support.scrape import value
from tests.support.server import RunningServer, gunicorn_server
from tests.support.waiting import wait_until

ADMIN = {"Authorization": "Bearer admin-secret"}
# Two failed loads per slot (0.2 s apart) are enough for today's master to give up, fast.
QUICK_GIVE_UP = {"SLEEPWELL_LOAD_ATTEMPTS": "2", "SLEEPWELL_LOAD_BACKOFF_S": "0.2"}


def fresh_health(server: RunningServer) -> dict[str, Any]:
    # A new connection per call, so either worker may answer.
    answer = httpx.get(server.url + "/health", headers={"connection": "close"}, timeout=10)
    body: dict[str, Any] = answer.json()
    body["http_status"] = answer.status_code
    return body


def marked_failed(state_dir: Path) -> bool:
    desired = asyncio.run(DesiredModelStore(state_dir).read())
    return desired is not None and desired.failed


def replace_both_workers(server: RunningServer, state_dir: Path) -> list[dict[str, Any]]:
    """SIGKILL both workers, the second once the first one's replacement has marked the
    published model failed (so the second replacement must skip it, while the first loads
    the configured model); the /health each replacement answers once it serves."""
    first, second = before = server.worker_pids()
    os.kill(first, signal.SIGKILL)

    def master_alive_and(check: Any) -> Any:
        assert server.process.poll() is None, f"master exited:\n{server.log()[-3000:]}"
        return check()

    wait_until(lambda: master_alive_and(lambda: marked_failed(state_dir)), 120, period=0.1,
               what="the published model marked failed by the first replacement")
    os.kill(second, signal.SIGKILL)
    serving: dict[int, dict[str, Any]] = {}

    def note_replacement() -> bool:
        body = fresh_health(server)
        if body["worker"]["pid"] not in before and body["http_status"] == 200:
            serving[body["worker"]["pid"]] = body
        return len(serving) == 2

    wait_until(lambda: master_alive_and(note_replacement), 120, period=0.2,
               what="a healthy replacement for each worker")
    return list(serving.values())


def test_model_fallback_published_model_gone_respawned_workers_serve_configured(
    demo_model_dir: Path, tmp_path: Path
) -> None:
    published = ensure_demo_model(tmp_path / "published-model", seed=1)
    state_dir = tmp_path / "state"
    env = {"SLEEPWELL_ADMIN_KEY": "admin-secret", "SLEEPWELL_STATE_DIR": str(state_dir),
           **QUICK_GIVE_UP}
    with gunicorn_server(env, workers=2) as server:
        swap = httpx.post(server.url + "/admin/models/load", headers=ADMIN,
                          json={"model": str(published)}, timeout=120)
        assert swap.status_code == 200, swap.text
        models_by_pid: dict[int, str] = {}

        def both_on_published() -> bool:
            body = fresh_health(server)
            models_by_pid[body["worker"]["pid"]] = body["model"]
            return set(models_by_pid) == set(server.worker_pids()) and set(
                models_by_pid.values()) == {"published-model"}

        wait_until(both_on_published, 60, period=0.1, what="both workers on the published model")
        shutil.rmtree(published)  # the published files are gone (a volume lost, a bad copy)
        replacements = replace_both_workers(server, state_dir)
        ready = [httpx.get(server.url + "/health/ready", headers={"connection": "close"},
                           timeout=10).status_code for _ in range(8)]
        models = {fresh_health(server)["model"] for _ in range(8)}
        failures = value(httpx.get(server.url + "/metrics", timeout=10).text,
                         "model_load_failures_total")
        log = server.log()
        assert server.process.poll() is None  # the master did not give up
    assert [body["model"] for body in replacements] == [DEMO_MODEL_NAME] * 2
    for body in replacements:
        assert body["state"] == "ready" and body["reasons"] == []
        assert str(published) in body["last_swap_error"]
        assert "does not exist" in body["last_swap_error"]  # the reason, not just the name
    assert ready == [200] * 8
    assert models == {DEMO_MODEL_NAME}
    # The first replacement failed on it once and marked it failed; the second skipped it.
    assert failures == 1
    assert f"model load failed: published model {str(published)!r}" in log


async def test_model_fallback_failed_mark_holds_for_its_revision_only(tmp_path: Path) -> None:
    store = DesiredModelStore(tmp_path)
    bad = await store.publish("/models/bad", None)
    assert bad is not None
    await store.mark_failed(bad.revision, "published model '/models/bad' failed: gone")
    marked, reason = await store.read(), await store.read_error()
    republished = await store.publish("/models/bad", None)  # fixed, and loaded again
    assert republished is not None
    assert marked == DesiredModel("/models/bad", bad.revision, None, failed=True)
    assert reason == "published model '/models/bad' failed: gone"
    assert await store.read() == DesiredModel("/models/bad", republished.revision, None)
