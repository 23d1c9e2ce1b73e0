"""Faults injected into real processes: overload, a killed worker, repeated OOM."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator

import httpx
import pytest

from tests.support.scenarios import crash, overload
from tests.support.scrape import scrape
from tests.support.server import RunningServer, gunicorn_server
from tests.support.waiting import wait_until

# One worker for overload, then the OOM streak (which recycles it, so it runs last).
ONE_WORKER_ENV = {"SLEEPWELL_MAX_QUEUE": "4", "SLEEPWELL_REQUEST_TIMEOUT_S": "30",
                  "SLEEPWELL_FAULT_INJECTION": "true", "SLEEPWELL_FAILURE_STREAK_LIMIT": "3"}
# The queue is full within a second at 4x capacity; 8 s of it is well over a hundred answers.
OVERLOAD_SECONDS = 8.0


@pytest.fixture(scope="module")
def one_worker(demo_model_dir) -> Iterator[RunningServer]:
    with gunicorn_server(ONE_WORKER_ENV) as server:
        yield server


def test_overload_four_times_capacity_every_request_gets_one_clean_answer(
    one_worker: RunningServer,
) -> None:
    result = asyncio.run(overload(one_worker, factor=4.0, seconds=OVERLOAD_SECONDS))
    print(f"\noverload: capacity {result.capacity_per_s:.1f}/s, offered "
          f"{result.offered_per_s:.1f}/s for {result.seconds:.0f}s -> {dict(result.statuses)}; "
          f"health p99 live {result.health.p99_ms('/health/live'):.1f} ms, "
          f"ready {result.health.p99_ms('/health/ready'):.1f} ms")
    assert sum(result.statuses.values()) == int(result.offered_per_s * result.seconds)
    assert set(result.statuses) == {200, 429}, result.statuses  # overload is 429, never 5xx
    assert result.statuses[200] > 0 and result.statuses[429] > 0
    assert result.missing_retry_after == 0
    for path in ("/health/live", "/health/ready"):
        assert set(result.health.statuses[path]) == {200}, result.health.statuses


def test_crash_kill9_one_worker_only_its_inflight_requests_fail(demo_model_dir) -> None:
    with gunicorn_server(workers=2) as server:
        # The kill needs requests in flight, not a long run: the replacement is awaited
        # on its own deadline, whatever is left of the load.
        result = asyncio.run(crash(server, clients=6, seconds=10.0, kill_after=3.0))
        after = httpx.post(server.url + "/v1/images/generations",
                           json={"prompt": "back", "size": "64x64"}, timeout=60)
    print(f"\ncrash: worker {result.victim_pid} killed holding {result.victim_held} requests; "
          f"{result.failed} failed; replacement ready after {result.seconds_to_ready:.2f}s; "
          f"{dict(result.statuses)}")
    failures = {status for status in result.statuses if status != 200}
    assert failures <= {"RemoteProtocolError", "ReadError"}, result.statuses  # clean, no hang
    assert result.failed <= result.victim_held  # only the victim's own requests were lost
    assert after.status_code == 200


def test_oom_streak_turns_unready_recycles_and_comes_back(one_worker: RunningServer) -> None:
    server = one_worker  # SLEEPWELL_FAILURE_STREAK_LIMIT=3
    first_pid = server.worker_pids()[0]
    ooms_before = scrape(server.url, "cuda_oom_total")
    answers = [httpx.post(server.url + "/v1/images/generations", timeout=60,
                          json={"prompt": "[[oom]]", "size": "64x64"}) for _ in range(3)]
    started = time.monotonic()
    assert [answer.status_code for answer in answers] == [503] * 3
    assert all(answer.json()["error"]["code"] == "out_of_memory" for answer in answers)
    assert all(int(answer.headers["retry-after"]) >= 1 for answer in answers)

    def replaced_and_ready() -> bool:
        pids = server.worker_pids()
        if not pids or pids == [first_pid]:
            return False
        try:
            return server.ready_worker_pids() == set(pids)
        except httpx.HTTPError:  # no worker accepts while the replacement boots
            return False

    wait_until(replaced_and_ready, 90, period=0.2, what="a fresh worker ready")
    back_after = time.monotonic() - started
    print(f"\noom: 3 in a row -> recycled and ready again after {back_after:.2f}s")
    assert server.worker_pids() != [first_pid]
    assert scrape(server.url, "cuda_oom_total") == ooms_before + 3  # counters survive
    ok = httpx.post(server.url + "/v1/images/generations",
                    json={"prompt": "fine", "size": "64x64"}, timeout=60)
    assert ok.status_code == 200
