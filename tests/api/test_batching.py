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

GENERATE = "/v1/images/generations"
BATCH_WAIT_MS = 3000


@pytest.fixture(scope="module")
def server() -> Iterator[RunningServer]:
    env = {"SLEEPWELL_BATCH_WAIT_MS": str(BATCH_WAIT_MS), "SLEEPWELL_REQUEST_TIMEOUT_S": "60"}
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
    with ThreadPoolExecutor(1) as pool, httpx.stream(
        "POST", server.url + GENERATE, timeout=60,
        json={"prompt": "a long run", "size": "64x64", "stream": True,
              "num_inference_steps": 50},
    ) as answer:
        lines = answer.iter_lines()
        for line in lines:  # until the long run is on the inference thread
            if '"phase":"running"' in line:
                break
        queued = pool.submit(generate, server)
        assert any("image_generation.completed" in line for line in lines)
        wait = queue_ms(queued.result(timeout=60))
    assert wait >= BATCH_WAIT_MS * 0.9, wait


def test_batching_single_worker_keeps_keepalive_connections_while_busy(server) -> None:
    """Shedding a connection hands it to a sibling worker; one worker has none to give."""
    bodies = [{"num_inference_steps": steps} for steps in (20, 21)]  # one waits for the other
    with ThreadPoolExecutor(2) as pool:
        answers = list(pool.map(lambda fields: generate(server, **fields), bodies))
    assert [answer.headers.get("connection") for answer in answers] == [None, None]
