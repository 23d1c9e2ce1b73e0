"""Hot model swap across two real workers, under load, with no failed request."""

from __future__ import annotations

import shutil
import threading
import time
from collections import Counter
from pathlib import Path

import httpx

from tests.support.server import gunicorn_server

ADMIN = {"Authorization": "Bearer admin-secret"}


def fresh(url: str, path: str) -> httpx.Response:
    # A new connection per call, so either worker may answer.
    return httpx.get(url + path, headers={"connection": "close"}, timeout=10)


def served_models(url: str, polls: int = 12) -> set[str]:
    return {fresh(url, "/v1/models").json()["data"][0]["id"] for _ in range(polls)}


def test_admin_swap_under_load_changes_every_worker_without_failures(
    demo_model_dir: Path, tmp_path: Path
) -> None:
    second = tmp_path / "demo-model-b"
    shutil.copytree(demo_model_dir, second)
    env = {"SLEEPWELL_ADMIN_KEY": "admin-secret", "SLEEPWELL_MAX_QUEUE": "64"}
    statuses: Counter[int] = Counter()
    readiness: Counter[int] = Counter()
    stop = threading.Event()

    def load(url: str) -> None:
        body = {"prompt": "steady", "size": "64x64"}
        for _ in range(2000):  # bounded; stopped by the event long before
            if stop.is_set():
                return
            statuses[httpx.post(url + "/v1/images/generations", json=body, timeout=60)
                     .status_code] += 1
            readiness[fresh(url, "/health/ready").status_code] += 1

    with gunicorn_server(env, workers=2) as server:
        before = served_models(server.url)
        threads = [threading.Thread(target=load, args=(server.url,)) for _ in range(3)]
        for thread in threads:
            thread.start()
        time.sleep(1.0)
        started = time.monotonic()
        answer = httpx.post(server.url + "/admin/models/load", headers=ADMIN,
                            json={"model": str(second)}, timeout=120)
        deadline = time.monotonic() + 30
        while served_models(server.url) != {"demo-model-b"} and time.monotonic() < deadline:
            time.sleep(0.2)
        print(f"swap visible on every worker after {time.monotonic() - started:.2f}s")
        time.sleep(1.0)
        stop.set()
        for thread in threads:
            thread.join(60)
        after = served_models(server.url)
    assert answer.status_code == 200, answer.text
    assert answer.json()["model"] == "demo-model-b"
    assert before == {"sleepwell-demo-tiny-sd"}
    assert after == {"demo-model-b"}
    assert set(statuses) == {200}, statuses
    assert set(readiness) == {200}, readiness  # never a moment where a worker was unready


def test_admin_swap_bad_model_keeps_old_and_reports_everywhere(demo_model_dir: Path) -> None:
    env = {"SLEEPWELL_ADMIN_KEY": "admin-secret"}
    with gunicorn_server(env, workers=2) as server:
        answer = httpx.post(server.url + "/admin/models/load", headers=ADMIN,
                            json={"model": "/nonexistent/model"}, timeout=60)
        assert answer.status_code == 400
        assert answer.json()["error"]["code"] == "model_load_failed"
        assert answer.json()["error"]["param"] == "model"
        assert served_models(server.url) == {"sleepwell-demo-tiny-sd"}
        deadline = time.monotonic() + 10
        reports: dict[int, str | None] = {}
        while time.monotonic() < deadline and len(reports) < 2:
            body = fresh(server.url, "/health").json()
            if body["last_swap_error"]:
                reports[body["worker"]["pid"]] = body["last_swap_error"]
            time.sleep(0.2)
        assert len(reports) == 2, reports
        assert all("/nonexistent/model" in error for error in reports.values() if error)
        ok = httpx.post(server.url + "/v1/images/generations",
                        json={"prompt": "still here", "size": "64x64"}, timeout=60)
        assert ok.status_code == 200


def test_admin_endpoints_without_admin_key_are_off(demo_model_dir: Path) -> None:
    with gunicorn_server() as server:
        answer = httpx.post(server.url + "/admin/models/load", headers=ADMIN,
                            json={"model": "x"})
    assert answer.status_code == 404
