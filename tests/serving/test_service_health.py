"""Health state transitions of one in-process worker, driven through its public methods."""

from __future__ import annotations

from pathlib import Path

from fastapi.testclient import TestClient

from app.main import create_app
from app.serving.health import WorkerState
from app.serving.service import Service
from app.settings import Settings
from tests.support.waiting import wait_until


def settings_for(model_dir: Path, **overrides: object) -> Settings:
    return Settings(demo_model_dir=model_dir, device="cpu", default_steps=2, **overrides)


async def test_health_before_load_reports_model_loading(demo_model_dir) -> None:
    service = Service(settings_for(demo_model_dir))
    ok, body = service.health.readiness()
    assert not ok and body["state"] == WorkerState.STARTING
    assert body["reasons"] == ["model is loading"]
    assert service.health.liveness()[0]  # alive while loading: no restart loops
    service.thread.stop(timeout=5)


def test_health_failure_streak_turns_unready_then_recovers(demo_model_dir) -> None:
    app = create_app(settings_for(
        demo_model_dir, failure_streak_limit=2, fault_injection=True,
        recycle_on_failure_streak=False,
    ))
    with TestClient(app) as client:
        _wait_ready(client)
        for _ in range(2):
            body = {"prompt": "[[fail]]", "size": "64x64"}
            failed = client.post("/v1/images/generations", json=body)
            assert failed.status_code == 500
        ready = client.get("/health/ready")
        assert ready.status_code == 503 and ready.json()["state"] == WorkerState.DEGRADED
        assert "2 consecutive inference failures" in ready.json()["reasons"][0]
        assert client.get("/health/live").status_code == 200
        ok = client.post("/v1/images/generations", json={"prompt": "fine", "size": "64x64"})
        assert ok.status_code == 200
        assert client.get("/health/ready").status_code == 200


def test_health_drain_turns_unready_at_once_and_refuses_work(demo_model_dir) -> None:
    app = create_app(settings_for(demo_model_dir))
    with TestClient(app) as client:
        _wait_ready(client)
        app.state.service.begin_drain()
        ready = client.get("/health/ready")
        assert ready.status_code == 503 and ready.json()["state"] == WorkerState.DRAINING
        refused = client.post("/v1/images/generations", json={"prompt": "x", "size": "64x64"})
        assert refused.status_code == 503 and "retry-after" in refused.headers


def _wait_ready(client: TestClient) -> None:
    wait_until(lambda: client.get("/health/ready").status_code == 200, 60, what="ready")
