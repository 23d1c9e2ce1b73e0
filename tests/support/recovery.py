"""Recovery scenarios against a real gunicorn: tests assert on them, bench/recovery.py prints them.

- a stalled generation: how fast the worker is replaced, and that no probe saw it alive
  while it was dying;
- SIGTERM under load: every request gets one HTTP answer and is counted once;
- a model that fails to load: out of rotation, respawned with a backoff, master exits.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from collections import Counter
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field

import httpx

from tests.support.procnet import established_connections
from tests.support.scrape import value
from tests.support.server import RunningServer

GENERATE = "/v1/images/generations"


def fresh_get(server: RunningServer, path: str, timeout: float = 2.0) -> httpx.Response:
    """A new connection per call, so any live worker may answer."""
    return httpx.get(server.url + path, headers={"connection": "close"}, timeout=timeout)


@dataclass
class StallTimeline:
    stalled_pid: int
    answer_status: int
    answer_code: str | None
    answered_after_s: float
    detected_after_s: float | None  # first /health/live 503
    replacement_ready_after_s: float | None  # a new pid's /health/ready 200
    stalled_pid_alive_after_detection: int = 0  # liveness 200 from the dying pid: must be 0
    samples: Counter[str] = field(default_factory=Counter)


def stall_and_replace(server: RunningServer, timeout_s: float = 90.0) -> StallTimeline:
    """Send a ``[[stall]]`` generation to a one-worker server; follow liveness until replaced."""
    stalled_pid = server.worker_pids()[0]
    started = time.monotonic()
    body = {"prompt": "[[stall]] hang", "size": "64x64"}
    with ThreadPoolExecutor(1) as pool:
        answer = pool.submit(httpx.post, server.url + GENERATE, json=body, timeout=timeout_s)
        timeline = _follow_replacement(server, stalled_pid, started, timeout_s)
        response = answer.result()
    timeline.answer_status = response.status_code
    timeline.answer_code = (response.json().get("error") or {}).get("code")
    return timeline


def _follow_replacement(
    server: RunningServer, stalled_pid: int, started: float, timeout_s: float
) -> StallTimeline:
    timeline = StallTimeline(stalled_pid, 0, None, 0.0, None, None)
    deadline = started + timeout_s
    while time.monotonic() < deadline and timeline.replacement_ready_after_s is None:
        try:
            live = fresh_get(server, "/health/live")
        except httpx.HTTPError as exc:
            timeline.samples[type(exc).__name__] += 1
            time.sleep(0.05)
            continue
        pid = live.json().get("pid")
        timeline.samples[f"{live.status_code} {'old' if pid == stalled_pid else 'new'}"] += 1
        now = time.monotonic() - started
        if live.status_code == 503 and timeline.detected_after_s is None:
            timeline.detected_after_s = now
        if live.status_code == 200 and pid == stalled_pid and timeline.detected_after_s:
            timeline.stalled_pid_alive_after_detection += 1
        if pid != stalled_pid and live.status_code == 200 and _ready(server):
            timeline.replacement_ready_after_s = time.monotonic() - started
        time.sleep(0.05)
    return timeline


def _ready(server: RunningServer) -> bool:
    try:
        return fresh_get(server, "/health/ready").status_code == 200
    except httpx.HTTPError:
        return False


@dataclass
class SigtermResult:
    sent: int
    answers: Counter[str] = field(default_factory=Counter)  # "200", "503 shutting_down", ...
    resets: int = 0  # requests that got no HTTP answer at all
    counted: float = 0.0  # image_generation_total increase over the run, all statuses
    victim_held: int = 0  # requests the SIGTERMed worker held when it got the signal


def sigterm_worker_under_load(
    server: RunningServer, body: dict[str, object], clients: int, requests_per_client: int,
    victim_holding: int,
) -> SigtermResult:
    """Closed-loop clients on fresh connections; SIGTERM the busiest worker as soon as it
    holds ``victim_holding`` requests. Bounded: ``clients * requests_per_client`` requests."""
    before = _counted(server)
    result = SigtermResult(sent=clients * requests_per_client)
    lock = threading.Lock()

    def client() -> None:
        for _ in range(requests_per_client):
            outcome = _post(server, body)
            with lock:
                if outcome is None:
                    result.resets += 1
                else:
                    result.answers[outcome] += 1

    with ThreadPoolExecutor(clients) as pool:
        futures = [pool.submit(client) for _ in range(clients)]
        result.victim_held = _sigterm_busiest(server, victim_holding, futures)
        for future in futures:
            future.result()
    result.counted = _counted(server) - before
    return result


def _sigterm_busiest(server: RunningServer, holding: int, futures: list[Future[None]]) -> int:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and not all(future.done() for future in futures):
        held = {pid: established_connections(pid, server.port) for pid in server.worker_pids()}
        busiest = max(held, key=held.__getitem__, default=None)
        if busiest is not None and held[busiest] >= holding:
            os.kill(busiest, signal.SIGTERM)
            return held[busiest]
        time.sleep(0.02)
    raise AssertionError(f"no worker ever held {holding} requests")


def _post(server: RunningServer, body: dict[str, object]) -> str | None:
    try:
        response = httpx.post(server.url + GENERATE, json=body, timeout=120,
                              headers={"connection": "close"})
    except httpx.HTTPError:
        return None
    if response.status_code == 200:
        return "200"
    return f"{response.status_code} {response.json()['error']['code']}"


def _counted(server: RunningServer) -> float:
    text = fresh_get(server, "/metrics", timeout=10).text
    return value(text, "image_generation_total")
