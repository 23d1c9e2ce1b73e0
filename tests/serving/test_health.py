"""Health semantics on real servers: failed loads, busy vs hung, full queues, fast replacement."""

from __future__ import annotations

import json
import re
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager

import httpx
import pytest

from tests.support.recovery import fresh_get, stall_and_replace
from tests.support.scrape import value
from tests.support.server import RunningServer, gunicorn_server
from tests.support.waiting import wait_until

GENERATE = "/v1/images/generations"


def poll(server: RunningServer, path: str, want: int, timeout: float) -> httpx.Response:
    def answered() -> httpx.Response | None:
        try:
            response = fresh_get(server, path)
        except httpx.HTTPError:
            return None
        return response if response.status_code == want else None

    return wait_until(answered, timeout, period=0.1, what=f"{path} answering {want}")


@pytest.mark.parametrize(
    ("env", "reason_part", "workers"),
    [
        ({"SLEEPWELL_MODEL": "/nonexistent/model-dir"}, "could not load model", 2),
        # The same exit path with another reason: one worker is enough to show the reason.
        # (SLEEPWELL_DEVICE=cuda with a CPU-only torch no longer gets this far: the master
        # refuses to start, tests/serving/test_device_choice.py.)
        ({"SLEEPWELL_FAULT_INJECTION": "true", "SLEEPWELL_FAULT_LOAD_FAILURE_SLOTS": "0"},
         "model load failure injected for worker slot 0", 1),
    ],
)
def test_health_every_worker_failing_to_load_makes_the_master_exit_4(
    env, reason_part, workers
) -> None:
    env = {**env, "SLEEPWELL_LOAD_ATTEMPTS": "2", "SLEEPWELL_LOAD_BACKOFF_S": "0.2"}
    with gunicorn_server(env, wait=False, workers=workers) as server:
        exit_code = server.process.wait(120)
        log = server.log()
    assert exit_code == 4, log[-3000:]
    assert f"every worker ({workers}) failed to load its model 2 times in a row" in log
    assert reason_part in log
    assert "waits 0.2s before loading: the last load in slot" in log  # the backoff ran


def test_health_worker_failing_to_load_leaves_rotation_siblings_serve(demo_model_dir) -> None:
    env = {"SLEEPWELL_FAULT_INJECTION": "true", "SLEEPWELL_FAULT_LOAD_FAILURE_SLOTS": "1",
           "SLEEPWELL_LOAD_BACKOFF_S": "0.5", "SLEEPWELL_LOAD_ATTEMPTS": "2"}
    with gunicorn_server(env, wait=False, workers=2) as server:
        server.wait_ready(timeout=120)
        # Slot 1's first worker listens while it loads (nobody knows yet that it will fail):
        # a probe may meet it and rightly hear 503. Once it has failed, slot 1 is respawned
        # with a backoff, again and again; each retry loads as long as a real load (the
        # fault comes after it). Probes run through all the retries.
        wait_until(lambda: re.search(RETRY, server.log()), 120, period=0.1,
                   what="slot 1's first load failed")
        with probing(server, "/health/ready") as probes:
            # A third respawn: the first two retries have come and gone.
            wait_until(lambda: len(re.findall(RETRY, server.log())) >= 3, 120, period=0.2,
                       what="slot 1 retried twice")
        answers = [httpx.post(server.url + GENERATE, json={"prompt": "x", "size": "64x64"},
                              headers={"connection": "close"}, timeout=60).status_code
                   for _ in range(12)]
        failures = value(fresh_get(server, "/metrics").text, "model_load_failures_total")
        assert server.process.poll() is None  # one slot still serves: the master stays
        log = server.log()
    retrying = {int(pid) for pid in re.findall(RETRY, log)}
    assert len(retrying) >= 3, log[-3000:]
    # No request or probe ever met a retrying worker: it never listened before its load.
    assert not retrying & answering_pids(log)
    assert len(probes) >= 20 and set(probes) == {200}, probes
    assert answers == [200] * 12
    assert failures >= 2


RETRY = r"worker (\d+) waits [\d.]+s before loading: the last load in slot 1"


@contextmanager
def probing(server: RunningServer, path: str) -> Iterator[list[int]]:
    """GET ``path`` on fresh connections in the background (at most 2000, 0.02 s apart)."""
    statuses: list[int] = []
    stop = threading.Event()

    def probe() -> None:
        while not stop.is_set() and len(statuses) < 2000:
            try:
                statuses.append(fresh_get(server, path).status_code)
            except httpx.HTTPError:
                statuses.append(0)
            stop.wait(0.02)

    worker = threading.Thread(target=probe, daemon=True)
    worker.start()
    try:
        yield statuses
    finally:
        stop.set()
        worker.join(10)


def answering_pids(log: str) -> set[int]:
    """Pids of the workers that wrote an access-log line (one per answered request)."""
    pids = set()
    for line in log.splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if isinstance(record, dict) and "path" in record and "status" in record:
            pids.add(int(record["pid"]))
    return pids


# One server for the tests below that neither break nor replace its worker: each needs
# only its own settings, which do not get in the others' way.
SHARED_STALL_TIMEOUT_S = 6
SHARED_ENV = {"SLEEPWELL_FAULT_INJECTION": "true",
              "SLEEPWELL_STALL_TIMEOUT_S": str(SHARED_STALL_TIMEOUT_S),
              "SLEEPWELL_MAX_QUEUE": "2", "SLEEPWELL_MAX_BATCH_SIZE": "1"}


@pytest.fixture(scope="module")
def shared(demo_model_dir) -> Iterator[RunningServer]:
    with gunicorn_server(SHARED_ENV) as server:
        yield server


def test_health_cpu_deployment_reports_gpu_not_applicable(shared: RunningServer) -> None:
    deep = httpx.get(shared.url + "/health")
    body = deep.json()
    assert deep.status_code == 200 and body["status"] == "healthy"
    assert body["checks"] == {"api": True, "model": True, "scheduler": True, "gpu": None}
    assert body["gpu_memory"] is None
    assert body["state"] == "ready" and body["worker"]["slot"] == 0
    metrics = httpx.get(shared.url + "/metrics").text
    assert "gpu_memory_allocated_bytes{" not in metrics  # no fake zeros on a CPU


def test_health_stalled_worker_never_looks_alive_and_is_replaced(demo_model_dir) -> None:
    env = {"SLEEPWELL_FAULT_INJECTION": "true", "SLEEPWELL_STALL_TIMEOUT_S": "2",
           "SLEEPWELL_STALL_EXIT_DELAY_S": "1"}
    with gunicorn_server(env) as server:
        timeline = stall_and_replace(server)
        print(f"\nstall: {timeline}")
        assert server.worker_pids() != [timeline.stalled_pid]
    assert timeline.answer_status == 503 and timeline.answer_code == "worker_stalled"
    assert timeline.detected_after_s is not None, timeline.samples
    assert timeline.stalled_pid_alive_after_detection == 0, timeline.samples
    assert timeline.replacement_ready_after_s is not None, timeline.samples


def test_health_slow_but_progressing_generation_stays_live_and_busy(
    shared: RunningServer,
) -> None:
    # Each step is 0.5 s of sleep plus its compute (over 1 s under a CPU hog, far below the
    # stall timeout); the run, 16 steps, sleeps 8 s alone: longer than the stall timeout,
    # so only per-step progress keeps it live.
    server = shared
    steps, sleep_s = 16, 0.5
    assert steps * sleep_s > SHARED_STALL_TIMEOUT_S
    done = threading.Event()
    answers: list[int] = []

    def slow() -> None:
        body = {"prompt": f"[[slow={sleep_s}]] steady", "size": "64x64",
                "num_inference_steps": steps}
        answers.append(httpx.post(server.url + GENERATE, json=body, timeout=90).status_code)
        done.set()

    thread = threading.Thread(target=slow)
    thread.start()
    states, lives = set(), set()
    while not done.is_set():  # bounded: the request ends (or times out) within 90 s
        lives.add(httpx.get(server.url + "/health/live").status_code)
        states.add(httpx.get(server.url + "/health/ready").json()["state"])
        done.wait(0.1)
    thread.join()
    assert answers == [200]
    assert lives == {200}
    assert "busy" in states and "stalled" not in states


def test_health_full_queue_keeps_worker_ready(shared: RunningServer) -> None:
    server = shared  # SLEEPWELL_MAX_QUEUE=2, SLEEPWELL_MAX_BATCH_SIZE=1
    # Over 1.6 s a run: all six arrive within it. Once one runs with two queued, the worker
    # stays busy until the queue is drained, so the readiness check below sees it busy.
    body = {"prompt": "[[slow=0.2]] busy", "size": "64x64", "num_inference_steps": 8}
    with ThreadPoolExecutor(6) as pool:
        futures = [pool.submit(httpx.post, server.url + GENERATE, json=body, timeout=60)
                   for _ in range(6)]
        wait_until(lambda: value(fresh_get(server, "/metrics").text,
                                 "image_generation_queue_depth") == 2,
                   30, what="the queue full")
        ready = httpx.get(server.url + "/health/ready")
        live = httpx.get(server.url + "/health/live")
        statuses = sorted(future.result().status_code for future in futures)
    assert 429 in statuses and 200 in statuses
    assert set(statuses) == {200, 429}
    assert ready.status_code == 200 and ready.json()["state"] == "busy"
    assert live.status_code == 200
