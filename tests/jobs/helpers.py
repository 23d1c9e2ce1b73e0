"""Talking to /v1/jobs, and a local webhook receiver, for the jobs tests and the bench."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import TYPE_CHECKING, Any

import httpx

if TYPE_CHECKING:
    from tests.jobs.postgres import TestPostgres
    from tests.support.server import RunningServer

FINAL = {"succeeded", "failed", "cancelled"}
WEBHOOK_SECRET = "whsec_" + "c2xlZXB3ZWxsLXRlc3Qtd2ViaG9vay1zZWNyZXQ="


@dataclass
class Served:
    """A module's jobs server and the PostgreSQL (and database ``url``) it uses."""

    postgres: TestPostgres
    url: str
    server: RunningServer


def jobs_env(url: str, key: str, **settings: str) -> dict[str, str]:
    """A jobs server's environment: database ``url``, API key ``key``, fault injection on (the
    slow and stall prompts); ``settings`` add or override SLEEPWELL_* entries."""
    return {"SLEEPWELL_JOBS_ENABLED": "true", "SLEEPWELL_DATABASE_URL": url,
            "SLEEPWELL_FAULT_INJECTION": "true", "SLEEPWELL_API_KEYS": key, **settings}


def auth(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def submit(client: httpx.Client, key: str, prompt: str = "a red fox", steps: int = 2,
           **extra: Any) -> dict[str, Any]:
    body = {"prompt": prompt, "size": "64x64", "num_inference_steps": steps, **extra}
    response = client.post("/v1/jobs", json=body, headers=auth(key))
    assert response.status_code == 202, response.text
    job: dict[str, Any] = response.json()
    return job


def wait_job(client: httpx.Client, key: str, job_id: str, until: Callable[[dict[str, Any]], bool],
             timeout: float = 90.0) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    last: dict[str, Any] = {}
    while time.monotonic() < deadline:
        try:
            response = client.get(f"/v1/jobs/{job_id}", headers=auth(key))
        except httpx.TransportError:  # the worker holding our connection was killed
            time.sleep(0.1)
            continue
        if response.status_code == 200:
            last = response.json()
            if until(last):
                return last
        time.sleep(0.1)
    raise TimeoutError(f"job {job_id} never matched; last seen {last}")


def wait_final(
    client: httpx.Client, key: str, job_id: str, timeout: float = 90.0
) -> dict[str, Any]:
    return wait_job(client, key, job_id, lambda job: job["status"] in FINAL, timeout)


@dataclass
class Receiver:
    """A local webhook endpoint that answers ``fail_first`` requests with 500, then 200."""

    fail_first: int = 0
    requests: list[tuple[dict[str, str], bytes, int]] = field(default_factory=list)
    port: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hook"

    def answer(self, headers: dict[str, str], body: bytes) -> int:
        with self.lock:
            status = 500 if len(self.requests) < self.fail_first else 200
            self.requests.append((headers, body, status))
        return status

    def delivered(self) -> list[tuple[dict[str, str], dict[str, Any]]]:
        with self.lock:
            return [(h, json.loads(b)) for h, b, s in self.requests if s == 200]


@contextmanager
def webhook_receiver(fail_first: int = 0) -> Iterator[Receiver]:
    receiver = Receiver(fail_first=fail_first)

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("content-length", "0")))
            status = receiver.answer({k.lower(): v for k, v in self.headers.items()}, body)
            self.send_response(status)
            self.send_header("content-length", "0")
            self.end_headers()

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    receiver.port = server.server_address[1]
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield receiver
    finally:
        server.shutdown()
        server.server_close()
