"""The HTTP API through a real gunicorn server running the real demo pipeline."""

from __future__ import annotations

import base64
import contextlib
import json
import socket
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

from tests.support.scrape import scrape
from tests.support.server import RunningServer, gunicorn_server
from tests.support.waiting import wait_until

GENERATE = "/v1/images/generations"
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
# Room for requests queued behind a slow run under a CPU hog (10 s once gave a 504, 20 s
# too beside other suites); the deadline test has a server of its own (conftest.py).
TIMEOUT_S = 60


@pytest.fixture(scope="module")
def server() -> Iterator[RunningServer]:
    env = {
        "SLEEPWELL_FAULT_INJECTION": "true",
        "SLEEPWELL_MAX_QUEUE": "2",
        "SLEEPWELL_MAX_STEPS": "1000",
        "SLEEPWELL_REQUEST_TIMEOUT_S": str(TIMEOUT_S),
        "SLEEPWELL_MAX_BODY_BYTES": "65536",
        "SLEEPWELL_MAX_REQUEST_PIXELS": "16384",
    }
    with gunicorn_server(env) as running:
        yield running


def generate(server: RunningServer, timeout: float = 60, **body: object) -> httpx.Response:
    payload = {"prompt": "a lighthouse at dusk", "size": "64x64", **body}
    return httpx.post(server.url + GENERATE, json=payload, timeout=timeout)


def test_generate_valid_request_returns_images_seeds_and_timing(server) -> None:
    response = generate(server, n=2, seed=42)
    assert response.status_code == 200, response.text
    body = response.json()
    assert isinstance(body["created"], int)
    assert [item["seed"] for item in body["data"]] == [42, 43]
    for item in body["data"]:
        assert base64.b64decode(item["b64_json"]).startswith(PNG_MAGIC)
    timing = response.headers["server-timing"]
    assert all(part in timing for part in ("queue;dur=", "inference;dur=", "encode;dur="))
    assert response.headers["x-request-id"]


def test_generate_without_seed_reports_the_seed_used(server) -> None:
    first = generate(server).json()["data"][0]
    again = generate(server, seed=first["seed"]).json()["data"][0]
    assert again["b64_json"] == first["b64_json"]


def test_generate_same_seed_gives_same_bytes(server) -> None:
    images = [generate(server, seed=7).json()["data"][0]["b64_json"] for _ in range(2)]
    assert images[0] == images[1]
    assert generate(server, seed=8).json()["data"][0]["b64_json"] != images[0]


@pytest.mark.parametrize(
    ("output_format", "magic"), [("jpeg", b"\xff\xd8\xff"), ("webp", b"RIFF"), ("png", PNG_MAGIC)]
)
def test_generate_output_format_encodes_that_format(server, output_format, magic) -> None:
    response = generate(server, output_format=output_format)
    assert response.status_code == 200
    assert base64.b64decode(response.json()["data"][0]["b64_json"]).startswith(magic)


def test_openai_sdk_images_generate_works_against_real_server(server) -> None:
    from openai import OpenAI

    client = OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0)
    model = client.models.list().data[0].id
    result = client.images.generate(
        model=model, prompt="a red fox", n=2, size="64x64",  # type: ignore[arg-type]
        response_format="b64_json", extra_body={"seed": 5, "num_inference_steps": 2},
    )
    assert result.data is not None and len(result.data) == 2
    for image in result.data:
        assert base64.b64decode(image.b64_json or "").startswith(PNG_MAGIC)
    assert [image.model_extra["seed"] for image in result.data] == [5, 6]  # type: ignore[index]


def test_models_list_uses_openai_shape(server) -> None:
    body = httpx.get(server.url + "/v1/models").json()
    assert body["object"] == "list"
    assert body["data"][0]["object"] == "model" and body["data"][0]["id"]


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"size": "0x0"}, "size"),
        ({"size": "64"}, "size"),
        ({"size": "65x64"}, "size"),
        ({"size": "99999x99999"}, "size"),
        ({"size": "-64x64"}, "size"),
        ({"size": 64}, "size"),
        ({"n": 0}, "n"),
        ({"n": 99}, "n"),
        ({"n": "two"}, "n"),
        ({"n": 1.5}, "n"),
        ({"prompt": ""}, "prompt"),
        ({"prompt": "x" * 2001}, "prompt"),
        ({"prompt": None}, "prompt"),
        ({"num_inference_steps": 0}, "num_inference_steps"),
        ({"num_inference_steps": 1001}, "num_inference_steps"),
        ({"guidance_scale": "high"}, "guidance_scale"),
        ({"guidance_scale": -1}, "guidance_scale"),
        ({"seed": -1}, "seed"),
        ({"response_format": "url"}, "response_format"),
        ({"output_format": "gif"}, "output_format"),
        ({"size": "128x128", "n": 2}, "n"),
    ],
)
def test_generate_invalid_field_answers_400_naming_param(server, body, param) -> None:
    response = generate(server, **body)
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["type"] == "invalid_request_error"
    assert error["param"] == param
    assert set(error) == {"message", "type", "param", "code"}


def test_generate_missing_prompt_answers_400_naming_prompt(server) -> None:
    response = httpx.post(server.url + GENERATE, json={"size": "64x64"})
    assert response.status_code == 400
    assert response.json()["error"]["param"] == "prompt"


@pytest.mark.parametrize(
    ("raw", "content_type"),
    [
        (b'{"prompt": "x",', "application/json"),
        (b'{"prompt": "x", "guidance_scale": NaN}', "application/json"),
        (b"[1, 2, 3]", "application/json"),
        (b"prompt=x", "application/x-www-form-urlencoded"),
        (b"", "application/json"),
    ],
)
def test_generate_malformed_body_answers_400(server, raw, content_type) -> None:
    headers = {"content-type": content_type}
    response = httpx.post(server.url + GENERATE, content=raw, headers=headers)
    assert response.status_code == 400, response.text
    assert response.json()["error"]["type"] == "invalid_request_error"


def test_generate_huge_body_answers_413(server) -> None:
    response = generate(server, prompt="x" * 200_000)
    assert response.status_code == 413
    assert response.json()["error"]["code"] == "request_too_large"


def test_generate_unknown_model_answers_404(server) -> None:
    response = generate(server, model="dall-e-3")
    assert response.status_code == 404
    assert response.json()["error"]["param"] == "model"
    assert response.json()["error"]["code"] == "model_not_found"


def test_unknown_path_answers_404_in_openai_shape(server) -> None:
    response = httpx.get(server.url + "/v1/nothing-here")
    assert response.status_code == 404
    assert response.json()["error"]["type"] == "invalid_request_error"


def test_generate_inference_failure_answers_500_without_traceback(server) -> None:
    response = generate(server, prompt="[[fail]] boom")
    assert response.status_code == 500
    error = response.json()["error"]
    assert error["type"] == "server_error"
    assert "Traceback" not in response.text and "RuntimeError" not in response.text
    request_id = response.headers["x-request-id"]
    assert request_id in error["message"]
    assert request_id in server.log()  # the traceback is in the log, under the request id


def test_generate_event_loop_answers_health_during_long_generation(server) -> None:
    # Far longer than the deadline: it holds the inference thread until its client leaves.
    with held_generation(server, "[[slow=0.05]] patience"):
        wait_for_health(server, "inflight", 1)  # the generation holds the inference thread
        answers = [httpx.get(server.url + "/health/live", timeout=5).status_code
                   for _ in range(5)]
        still_running = httpx.get(server.url + "/health").json()["inflight"]
    assert answers == [200] * 5
    assert still_running == 1, "the generation ended before health was asked"
    wait_for_health(server, "inflight", 0)  # its client left: it stops at the next step


@contextlib.contextmanager
def held_generation(server: RunningServer, prompt: str) -> Iterator[socket.socket]:
    """A plain (not streamed) request of 1000 steps, in flight until the block ends; the
    client then closes its connection, which cancels the run at its next step."""
    payload = json.dumps({"prompt": prompt, "size": "64x64", "num_inference_steps": 1000})
    head = (f"POST {GENERATE} HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(payload)}\r\n\r\n")
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
        sock.sendall((head + payload).encode())
        yield sock


def wait_for_health(server: RunningServer, field: str, wanted: int, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while httpx.get(server.url + "/health").json()[field] != wanted:
        assert time.monotonic() < deadline, f"/health {field} never reached {wanted}"
        time.sleep(0.02)


def test_generate_full_queue_answers_429_with_retry_after(server) -> None:
    # Mostly sleep, little compute: it outlasts the few requests below on any machine, and
    # the two queued behind it stay far inside their deadline under a CPU hog.
    slow = {"prompt": "[[slow=1]] slow", "num_inference_steps": 3}
    with ThreadPoolExecutor(4) as pool:
        running = pool.submit(generate, server, **slow)
        wait_for_health(server, "inflight", 1)  # on the inference thread: the queue is empty
        queued = [pool.submit(generate, server) for _ in range(2)]
        wait_for_health(server, "queue_depth", 2)
        rejected = generate(server)
        statuses = [running.result().status_code, *(f.result().status_code for f in queued)]
    assert rejected.status_code == 429
    assert int(rejected.headers["retry-after"]) >= 1
    assert rejected.json()["error"]["code"] == "queue_full"
    assert statuses == [200, 200, 200]


def test_generate_client_disconnect_stops_generation_early(server) -> None:
    steps_before = scrape(server.url, "inference_steps_total")
    cancelled_before = scrape(server.url, "image_generation_total", status="cancelled")
    with held_generation(server, "a lighthouse") as sock:
        wait_until(lambda: scrape(server.url, "inference_steps_total") > steps_before, 30,
                   period=0.1, what="the run's first step")
        sock.setblocking(False)
        with pytest.raises(BlockingIOError):
            sock.recv(1)  # no answer yet: the client leaves mid-run
    wait_until(lambda: scrape(server.url, "image_generation_total", status="cancelled")
               > cancelled_before, 10, period=0.1, what="the cancel counted")
    wait_for_health(server, "inflight", 0)  # the run has stopped: steps no longer grow
    steps_run = scrape(server.url, "inference_steps_total") - steps_before
    print(f"disconnected generation ran {steps_run:.0f} of 1000 steps")
    assert scrape(server.url, "image_generation_total", status="cancelled") == cancelled_before + 1
    assert 0 < steps_run < 1000


def test_generate_past_deadline_answers_504_and_stops(short_deadline_server) -> None:
    server = short_deadline_server
    timeouts_before = scrape(server.url, "image_generation_total", status="timeout")
    steps_before = scrape(server.url, "inference_steps_total")
    # 1000 steps of at least 0.05 s: 50 s of sleep alone, well past the deadline.
    response = generate(server, prompt="[[slow=0.05]] long", num_inference_steps=1000)
    assert response.status_code == 504
    assert response.json()["error"]["code"] == "deadline_exceeded"
    wait_for_health(server, "inflight", 0)  # the run has stopped at its next step
    assert scrape(server.url, "image_generation_total", status="timeout") == timeouts_before + 1
    assert scrape(server.url, "inference_steps_total") - steps_before < 1000
    assert generate(server).status_code == 200  # and it keeps serving
