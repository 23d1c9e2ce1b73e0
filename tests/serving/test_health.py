"""Health semantics on real servers: loading, failed loads, busy vs hung, full queues."""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

from tests.support.server import RunningServer, gunicorn_server

GENERATE = "/v1/images/generations"


def poll(server: RunningServer, path: str, want: int, timeout: float) -> httpx.Response:
    deadline = time.monotonic() + timeout
    last: httpx.Response | None = None
    while time.monotonic() < deadline:
        try:
            last = httpx.get(server.url + path, timeout=2)
            if last.status_code == want:
                return last
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    raise AssertionError(f"{path} never answered {want}; last: {last and last.text}")


@pytest.mark.parametrize(
    ("env", "reason_part"),
    [
        ({"SLEEPWELL_MODEL": "/nonexistent/model-dir"}, "could not load model"),
        ({"SLEEPWELL_DEVICE": "cuda"}, "no usable CUDA device"),
    ],
)
def test_health_failed_load_is_unready_but_alive(env, reason_part) -> None:
    with gunicorn_server(env, wait=False) as server:
        ready = poll(server, "/health/ready", 503, 60)
        deadline = time.monotonic() + 60
        while "loading" in ready.text and time.monotonic() < deadline:
            time.sleep(0.2)
            ready = httpx.get(server.url + "/health/ready")
        assert ready.json()["state"] == "failed"
        assert any(reason_part in reason for reason in ready.json()["reasons"])
        assert httpx.get(server.url + "/health/live").status_code == 200
        deep = httpx.get(server.url + "/health")
        assert deep.status_code == 503 and deep.json()["status"] == "unhealthy"
        if env.get("SLEEPWELL_DEVICE") == "cuda":
            assert deep.json()["checks"]["gpu"] is False
        refused = httpx.post(server.url + GENERATE, json={"prompt": "x", "size": "64x64"})
        assert refused.status_code == 503
        assert refused.json()["error"]["code"] == "model_load_failed"
        assert int(refused.headers["retry-after"]) >= 1


def test_health_cpu_deployment_reports_gpu_not_applicable(demo_model_dir) -> None:
    with gunicorn_server() as server:
        deep = httpx.get(server.url + "/health")
        body = deep.json()
        assert deep.status_code == 200 and body["status"] == "healthy"
        assert body["checks"] == {"api": True, "model": True, "gpu": None}
        assert body["gpu_memory"] is None
        assert body["state"] == "ready" and body["worker"]["slot"] == 0
        metrics = httpx.get(server.url + "/metrics").text
        assert "gpu_memory_allocated_bytes{" not in metrics  # no fake zeros on a CPU


def test_health_stalled_step_fails_liveness_and_worker_is_replaced(demo_model_dir) -> None:
    env = {"SLEEPWELL_FAULT_INJECTION": "true", "SLEEPWELL_STALL_TIMEOUT_S": "2",
           "SLEEPWELL_STALL_EXIT_DELAY_S": "2"}
    with gunicorn_server(env) as server:
        first_pid = server.worker_pids()[0]
        with ThreadPoolExecutor(1) as pool:
            stalled = pool.submit(httpx.post, server.url + GENERATE,
                                  json={"prompt": "[[stall]] hang", "size": "64x64"}, timeout=60)
            started = time.monotonic()
            dead = poll(server, "/health/live", 503, 15)
            detected = time.monotonic() - started
            answer = stalled.result()
        print(f"stall reported by /health/live after {detected:.2f}s (timeout 2s)")
        assert dead.json()["status"] == "stalled"
        assert answer.status_code == 503 and answer.json()["error"]["code"] == "worker_stalled"
        poll(server, "/health/ready", 200, 60)
        assert server.worker_pids() != [first_pid]


def test_health_slow_but_progressing_generation_stays_live_and_busy(demo_model_dir) -> None:
    env = {"SLEEPWELL_FAULT_INJECTION": "true", "SLEEPWELL_STALL_TIMEOUT_S": "1.5"}
    with gunicorn_server(env) as server:
        done = threading.Event()

        def slow() -> None:
            body = {"prompt": "[[slow=0.5]] steady", "size": "64x64", "num_inference_steps": 8}
            assert httpx.post(server.url + GENERATE, json=body, timeout=60).status_code == 200
            done.set()

        thread = threading.Thread(target=slow)
        thread.start()
        time.sleep(0.3)
        states, lives = set(), set()
        while not done.is_set():
            lives.add(httpx.get(server.url + "/health/live").status_code)
            states.add(httpx.get(server.url + "/health/ready").json()["state"])
            time.sleep(0.1)
        thread.join()
        assert lives == {200}
        assert "busy" in states and "stalled" not in states


def test_health_full_queue_keeps_worker_ready(demo_model_dir) -> None:
    env = {"SLEEPWELL_FAULT_INJECTION": "true", "SLEEPWELL_MAX_QUEUE": "2",
           "SLEEPWELL_MAX_BATCH_SIZE": "1"}
    body = {"prompt": "[[slow=0.1]] busy", "size": "64x64", "num_inference_steps": 15}
    with gunicorn_server(env) as server, ThreadPoolExecutor(6) as pool:
        futures = [pool.submit(httpx.post, server.url + GENERATE, json=body, timeout=60)
                   for _ in range(6)]
        time.sleep(0.8)
        ready = httpx.get(server.url + "/health/ready")
        live = httpx.get(server.url + "/health/live")
        statuses = sorted(future.result().status_code for future in futures)
    assert 429 in statuses and 200 in statuses
    assert ready.status_code == 200 and ready.json()["state"] == "busy"
    assert live.status_code == 200
