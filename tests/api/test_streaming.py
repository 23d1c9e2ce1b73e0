"""``"stream": true``: Server-Sent Events through a real gunicorn and the real pipeline."""

from __future__ import annotations

import base64
import io
import json
import re
import socket
import threading
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from PIL import Image

from tests.support.access_log import access_entries
from tests.support.scrape import value
from tests.support.server import RunningServer, gunicorn_server
from tests.support.waiting import wait_until

GENERATE = "/v1/images/generations"
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
# Long enough for a run queued behind another under a CPU hog (make test-stress saw > 8 s);
# the deadline test has a server of its own (conftest.py), so a long one costs nothing.
TIMEOUT_S = 60


# More images than the sockets can buffer for a client that reads nothing (below).
MANY_IMAGES = 16


@pytest.fixture(scope="module")
def server() -> Iterator[RunningServer]:
    env = {"SLEEPWELL_FAULT_INJECTION": "true", "SLEEPWELL_REQUEST_TIMEOUT_S": str(TIMEOUT_S),
           "SLEEPWELL_MAX_IMAGES": str(MANY_IMAGES)}
    with gunicorn_server(env) as running:
        yield running


def body(**fields: Any) -> dict[str, Any]:
    # These tests follow the run through our progress events: ask for them (opt-in).
    return {"prompt": "a lighthouse", "size": "64x64", "stream": True, "stream_progress": True,
            **fields}


def parse_events(lines: Iterator[str]) -> Iterator[tuple[str, dict[str, Any]]]:
    """(event name, data) per Server-Sent Event, as a browser's parser splits them."""
    name, data = "message", []
    for line in lines:
        if not line:
            if data:
                yield name, json.loads("\n".join(data))
            name, data = "message", []
        elif line.startswith("event:"):
            name = line[6:].strip()
        elif line.startswith("data:"):
            data.append(line[5:].strip())


def stream(server: RunningServer, **fields: Any) -> tuple[httpx.Response, list[tuple[str, Any]]]:
    with httpx.stream("POST", server.url + GENERATE, json=body(**fields), timeout=60) as answer:
        events = list(parse_events(answer.iter_lines()))
    return answer, events


def of(events: list[tuple[str, Any]], name: str) -> list[dict[str, Any]]:
    return [data for event, data in events if event == name]


def counts(server: RunningServer) -> dict[str, float]:
    text = httpx.get(server.url + "/metrics", timeout=10).text
    return {
        **{status: value(text, "image_generation_total", status=status)
           for status in ("success", "cancelled", "failed", "timeout")},
        "images": value(text, "images_generated_total"),
        "latency": value(text, "image_generation_latency_seconds_count"),
        "steps": value(text, "inference_steps_total"),
        "inflight": value(text, "image_generation_inflight"),
    }


def access_lines(server: RunningServer, request_id: str) -> list[dict[str, Any]]:
    return [line for line in access_entries(server.log()) if line.get("request_id") == request_id]


def stream_until_first_image(server: RunningServer, **fields: Any) -> tuple[str, int]:
    """Open a stream on a socket with a tiny receive buffer, read until the first image
    event begins, then close it: (request id, bytes read). The server can push only what
    the sockets buffer, a few images at most, before the client is gone."""
    payload = json.dumps(body(**fields)).encode()
    head = (f"POST {GENERATE} HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(payload)}\r\n\r\n").encode()
    received = b""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # before connect: fixed
        sock.settimeout(TIMEOUT_S)
        sock.connect(("127.0.0.1", server.port))
        sock.sendall(head + payload)
        deadline = time.monotonic() + TIMEOUT_S
        while b"event: image_generation.completed" not in received:  # bounded: deadline
            assert time.monotonic() < deadline, received[-500:]
            chunk = sock.recv(1024)
            assert chunk, f"closed before any image: {received[-500:]!r}"
            received += chunk
    found = re.search(rb"x-request-id: (\w+)", received, re.IGNORECASE)
    assert found, received[:500]
    return found.group(1).decode(), len(received)



def test_stream_progress_counts_steps_then_one_completed_event_per_image(server) -> None:
    answer, events = stream(server, prompt="[[slow=0.2]] steps", num_inference_steps=5, n=2,
                            seed=5)
    assert answer.status_code == 200
    assert answer.headers["content-type"].startswith("text/event-stream")
    assert "content-length" not in answer.headers
    progress = of(events, "sleepwell.progress")
    running = [p["step"] for p in progress if p["phase"] == "running"]
    assert running == sorted(running) and all(p["steps"] == 5 for p in progress)
    assert any(0 < step < 5 for step in running), running  # intermediate steps were sent
    assert progress[-1]["phase"] == "encoding"
    completed = of(events, "image_generation.completed")
    assert [(c["index"], c["seed"]) for c in completed] == [(0, 5), (1, 6)]
    for event in completed:
        assert event["type"] == "image_generation.completed"
        assert event["size"] == "64x64" and event["output_format"] == "png"
        image = base64.b64decode(event["b64_json"])
        assert image.startswith(PNG_MAGIC)
        assert Image.open(io.BytesIO(image)).size == (64, 64)
    assert [name for name, _ in events][-2:] == ["image_generation.completed"] * 2


def test_stream_is_counted_once_in_metrics_and_logged_once(server) -> None:
    before = counts(server)
    answer, events = stream(server, n=2, output_format="webp")
    after = counts(server)
    assert len(of(events, "image_generation.completed")) == 2
    assert after["success"] - before["success"] == 1
    assert after["images"] - before["images"] == 2
    assert after["latency"] - before["latency"] == 1
    request_id = answer.headers["x-request-id"]
    wait_until(lambda: access_lines(server, request_id), 5)
    [line] = access_lines(server, request_id)
    assert line["status"] == 200 and line["stream"] is True and line["outcome"] == "success"
    assert {"queue_ms", "inference_ms", "encode_ms"} <= set(line)


@pytest.mark.parametrize(
    ("fields", "param"),
    [({"num_inference_steps": 1000}, "num_inference_steps"), ({"stream": "yes"}, "stream"),
     ({"size": "65x64"}, "size")],
)
def test_stream_bad_input_is_a_json_400_before_any_event(server, fields, param) -> None:
    response = httpx.post(server.url + GENERATE, json=body(**fields), timeout=30)
    assert response.status_code == 400
    assert response.headers["content-type"] == "application/json"
    assert response.json()["error"]["param"] == param


def test_stream_client_disconnect_stops_the_run_at_the_next_step(server) -> None:
    before = counts(server)
    steps = 40
    fields = body(prompt="[[slow=0.3]] cancel me", num_inference_steps=steps)
    with httpx.stream("POST", server.url + GENERATE, json=fields, timeout=60) as answer:
        request_id = answer.headers["x-request-id"]
        for _, data in parse_events(answer.iter_lines()):
            if data.get("step", 0) >= 2:
                break  # leaving the block closes the connection mid-run
    wait_until(lambda: counts(server)["cancelled"] == before["cancelled"] + 1, 15)
    wait_until(lambda: counts(server)["inflight"] == 0, 15)
    after = counts(server)
    assert after["steps"] - before["steps"] < steps  # stopped, not run to the end
    assert after["success"] == before["success"]
    # Nothing of the cancelled run is still going: a 2-step run adds exactly 2 steps.
    assert httpx.post(server.url + GENERATE, json={**fields, "stream": False, "prompt": "x",
                                                   "num_inference_steps": 2}).status_code == 200
    assert counts(server)["steps"] == after["steps"] + 2
    wait_until(lambda: access_lines(server, request_id), 5)
    [line] = access_lines(server, request_id)
    assert line["outcome"] == "cancelled"


def test_stream_client_gone_once_answered_encodes_and_sends_no_more_images(server) -> None:
    """Uvicorn drops sends to a closed connection without a word: the stream itself must
    see the client leave, or it encodes every remaining image for nobody."""
    before = counts(server)
    request_id, _ = stream_until_first_image(server, n=MANY_IMAGES, num_inference_steps=1)
    [line] = wait_until(lambda: access_lines(server, request_id), 30, what="the access line")
    print(f"client left; {line.get('images_sent')} of {MANY_IMAGES} images were sent")
    assert line["outcome"] == "success" and line["client_left"] is True, line
    assert 1 <= line["images_sent"] < MANY_IMAGES, line
    assert counts(server)["success"] == before["success"] + 1  # answered once, counted once


def test_stream_failure_after_start_becomes_an_error_event(server) -> None:
    before = counts(server)
    answer, events = stream(server, prompt="[[fail]] broken")
    assert answer.status_code == 200
    [error] = of(events, "error")
    assert error["status"] == 500 and error["error"]["code"] == "inference_failed"
    assert set(error["error"]) == {"message", "type", "param", "code"}
    assert not of(events, "image_generation.completed")
    assert counts(server)["failed"] == before["failed"] + 1


def test_stream_past_its_deadline_ends_with_a_504_error_event(short_deadline_server) -> None:
    server = short_deadline_server
    before = counts(server)
    _, events = stream(server, prompt="[[slow=1]] too slow", num_inference_steps=60)
    [error] = of(events, "error")
    assert error["status"] == 504 and error["error"]["code"] == "deadline_exceeded"
    assert counts(server)["timeout"] == before["timeout"] + 1
    wait_until(lambda: counts(server)["inflight"] == 0, 15)


def test_stream_waiting_behind_another_run_reports_its_queue_position(server) -> None:
    first_running = threading.Event()

    def first() -> None:
        fields = body(prompt="[[slow=0.3]] first", num_inference_steps=8)
        with httpx.stream("POST", server.url + GENERATE, json=fields, timeout=60) as answer:
            for _, data in parse_events(answer.iter_lines()):
                if data.get("step", 0) >= 1:
                    first_running.set()

    thread = threading.Thread(target=first)
    thread.start()
    try:
        assert first_running.wait(30)
        # Another size: it can never join the running batch, so it must wait its turn.
        _, events = stream(server, prompt="second", size="128x64", num_inference_steps=2)
    finally:
        thread.join(60)
    queued = [p for p in of(events, "sleepwell.progress") if p["phase"] == "queued"]
    assert queued and queued[0]["queue_position"] == 1 and queued[0]["queue_length"] >= 1
    assert len(of(events, "image_generation.completed")) == 1


def test_openai_sdk_stream_true_reads_the_events(server) -> None:
    from openai import APIError, OpenAI

    client = OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0)
    events = list(client.images.generate(
        prompt="a red fox", n=2, size="64x64", stream=True,  # type: ignore[arg-type]
        extra_body={"seed": 11, "num_inference_steps": 3},
    ))
    completed = [e for e in events if e.type == "image_generation.completed"]
    assert [e.seed for e in completed] == [11, 12]  # type: ignore[attr-defined]
    assert all(base64.b64decode(e.b64_json).startswith(PNG_MAGIC) for e in completed)
    # Only the SDK's own event types: progress events are opt-in (stream_progress).
    assert [e.type for e in events] == ["image_generation.completed"] * 2
    with pytest.raises(APIError, match="generation failed"):
        list(client.images.generate(prompt="[[fail]] x", size="64x64", stream=True))  # type: ignore[arg-type]
