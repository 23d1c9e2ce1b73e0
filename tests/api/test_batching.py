"""The batch wait through a real gunicorn: paid only while another request is answered
(and, with one worker, keep-alive connections are never shed).

The wait is set far above a 64x64 call (3 s), so whether a request paid it shows in its
``Server-Timing`` queue duration whatever the machine's load.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

from tests.support.server import RunningServer, gunicorn_server
from tests.support.waiting import wait_until

GENERATE = "/v1/images/generations"
BATCH_WAIT_MS = 3000


@pytest.fixture(scope="module")
def server() -> Iterator[RunningServer]:
    env = {"SLEEPWELL_BATCH_WAIT_MS": str(BATCH_WAIT_MS), "SLEEPWELL_REQUEST_TIMEOUT_S": "60",
           "SLEEPWELL_FAULT_INJECTION": "true"}
    with gunicorn_server(env) as running:
        yield running


def generate(server: RunningServer, **fields: object) -> httpx.Response:
    body = {"prompt": "a lighthouse", "size": "64x64", **fields}
    response = httpx.post(server.url + GENERATE, json=body, timeout=60)
    assert response.status_code == 200, response.text
    return response


def queue_ms(response: httpx.Response) -> float:
    found = re.search(r"queue;dur=([\d.]+)", response.headers["server-timing"])
    assert found, response.headers["server-timing"]
    return float(found.group(1))


def test_batching_sequential_client_never_pays_the_batch_wait(server) -> None:
    waits = [queue_ms(generate(server)) for _ in range(3)]
    assert max(waits) < BATCH_WAIT_MS / 2, waits


def test_batching_request_after_a_finished_stream_never_pays_the_batch_wait(server) -> None:
    with httpx.stream("POST", server.url + GENERATE, timeout=60,
                      json={"prompt": "a lighthouse", "size": "64x64", "stream": True}) as answer:
        assert answer.status_code == 200
        assert "image_generation.completed" in answer.read().decode()
    assert queue_ms(generate(server)) < BATCH_WAIT_MS / 2


def test_batching_request_queued_behind_a_run_waits_for_company(server) -> None:
    """Queued while another run goes on, it is dispatched as that run's answer goes out:
    the likeliest moment for that client's next request, so it waits to share a call."""
    # At least 4 s of sleep and few steps of compute: long enough to queue behind on any
    # machine, short enough for the deadline under a CPU hog (50 steps once took > 60 s).
    long_run = {"prompt": "[[slow=0.25]] a long run", "size": "64x64", "stream": True,
                "stream_progress": True, "num_inference_steps": 16}
    with ThreadPoolExecutor(1) as pool, httpx.stream(
        "POST", server.url + GENERATE, timeout=60, json=long_run,
    ) as answer:
        lines = answer.iter_lines()
        for line in lines:  # until the long run is on the inference thread
            if '"phase":"running"' in line:
                break
        queued = pool.submit(generate, server)
        # Queued while the long run still runs: the order under test, observed, not hoped.
        health = wait_until(lambda: health_with(server, queue_depth=1), 30,
                            what="the second request queued")
        assert health["inflight"] == 1, health
        assert any("image_generation.completed" in line for line in lines)
        wait = queue_ms(queued.result(timeout=60))
    assert wait >= BATCH_WAIT_MS * 0.9, wait


def health_with(server: RunningServer, **wanted: int) -> dict[str, object] | None:
    health: dict[str, object] = httpx.get(server.url + "/health", timeout=10).json()
    return health if all(health[name] == count for name, count in wanted.items()) else None


def test_batching_single_worker_keeps_keepalive_connections_while_busy(server) -> None:
    """Shedding a connection hands it to a sibling worker; one worker has none to give."""
    bodies = [{"num_inference_steps": steps} for steps in (20, 21)]  # one waits for the other
    with ThreadPoolExecutor(2) as pool:
        answers = list(pool.map(lambda fields: generate(server, **fields), bodies))
    assert [answer.headers.get("connection") for answer in answers] == [None, None]
