"""Two real gunicorn workers adapt their torch threads, as each reports in /health; and the
server-side cost every image answer reports (Server-Timing).

A worker alone in a call takes every core it may use; while its sibling also runs a call,
each takes half. Calls are held open on raw sockets: the worker that accepted one is read
from /proc (its socket's inode among the worker's fds), and closing the socket makes the
server cancel the call at its next step.
"""

from __future__ import annotations

import json
import re
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from app.serving.host_limits import usable_cores
from tests.support.server import RunningServer, gunicorn_server
from tests.support.waiting import wait_until

GENERATE = "/v1/images/generations"
# 0.25 s per step, far longer than the test needs: the socket's close ends it.
SLOW_CALL = {"prompt": "[[slow=0.25]] held", "size": "64x64", "num_inference_steps": 100}


@pytest.fixture(scope="module")
def pair(demo_model_dir: Path) -> Iterator[RunningServer]:
    with gunicorn_server({"SLEEPWELL_FAULT_INJECTION": "true"}, workers=2) as running:
        yield running


class HeldCall:
    """A generation request on its own connection, left unanswered until closed."""

    def __init__(self, server: RunningServer, body: dict[str, Any]) -> None:
        self.sock = socket.create_connection(("127.0.0.1", server.port), timeout=30)
        payload = json.dumps(body).encode()
        head = (f"POST {GENERATE} HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                f"Content-Type: application/json\r\nContent-Length: {len(payload)}\r\n\r\n")
        self.sock.sendall(head.encode() + payload)
        client_port = self.sock.getsockname()[1]
        self.worker: int = wait_until(lambda: holder(server, client_port), 30,
                                      what="a worker accepting the call")

    def close(self) -> None:
        self.sock.close()


def holder(server: RunningServer, client_port: int) -> int | None:
    """The worker pid holding the server side of our connection from ``client_port``."""
    inode = server_socket_inode(server.port, client_port)
    if inode is None:
        return None  # not accepted yet
    for pid in server.worker_pids():
        try:
            fds = list(Path(f"/proc/{pid}/fd").iterdir())
        except OSError:
            continue
        for fd in fds:
            try:
                if fd.readlink().name == f"socket:[{inode}]":
                    return pid
            except OSError:
                continue
    return None


def server_socket_inode(server_port: int, client_port: int) -> str | None:
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        local, remote, inode = fields[1], fields[2], fields[9]
        if (int(local.split(":")[1], 16) == server_port
                and int(remote.split(":")[1], 16) == client_port and inode != "0"):
            return inode
    return None


def worker_report(server: RunningServer, pid: int) -> dict[str, Any]:
    """/health as worker ``pid`` answers it: new connections until that worker takes one."""
    def from_pid() -> dict[str, Any] | None:
        body: dict[str, Any] = httpx.get(server.url + "/health", timeout=10,
                                         headers={"connection": "close"}).json()
        return body if body["worker"]["pid"] == pid else None
    return wait_until(from_pid, 30, period=0.01, what=f"/health from worker {pid}")


def wait_for_threads(server: RunningServer, pid: int, threads: int, what: str) -> None:
    """Until worker ``pid`` is in a call with ``threads`` torch threads."""
    def reached() -> bool:
        report = worker_report(server, pid)
        return report["state"] == "busy" and report["worker"]["torch_threads"] == threads
    wait_until(reached, 30, what=what)


def call_on_other_worker(server: RunningServer, busy: int) -> HeldCall:
    """A held call on the worker that is not ``busy``: calls the kernel hands to ``busy``
    are closed (cancelled while queued) and sent again, at most 12 times."""
    for _ in range(12):
        call = HeldCall(server, SLOW_CALL)
        if call.worker != busy:
            return call
        call.close()
    raise AssertionError(f"12 new connections in a row all went to worker {busy}")


def test_adaptive_threads_alone_every_core_beside_a_busy_sibling_half(pair) -> None:
    """Fails if the engine stops calling torch.set_num_threads (each worker loads with the
    static half) or stops adjusting per step (the first worker would keep every core)."""
    first = worker_report(pair, pair.worker_pids()[0])
    cores = first["worker"]["cores"]
    assert cores == usable_cores()  # the worker counts the cores the test process may use
    if cores < 2:
        pytest.skip("one core: alone and beside a sibling both get 1 thread")
    alone = HeldCall(pair, SLOW_CALL)
    try:
        wait_for_threads(pair, alone.worker, cores, "every core for a worker alone in a call")
        sibling = call_on_other_worker(pair, alone.worker)
        try:
            wait_for_threads(pair, sibling.worker, cores // 2, "half for the sibling")
            wait_for_threads(pair, alone.worker, cores // 2,
                             "half for the first worker, at a step after its sibling began")
        finally:
            sibling.close()
        wait_for_threads(pair, alone.worker, cores, "every core again once the sibling ended")
    finally:
        alone.close()


def test_server_timing_image_answer_ends_with_a_total_covering_its_parts(pair) -> None:
    response = httpx.post(pair.url + GENERATE, timeout=60,
                          json={"prompt": "timed", "size": "64x64"})
    assert response.status_code == 200, response.text
    timing = dict(re.findall(r"(\w+);dur=([\d.]+)", response.headers["server-timing"]))
    assert list(timing) == ["queue", "inference", "encode", "total"]
    parts = sum(float(timing[name]) for name in ("queue", "inference", "encode"))
    # Disjoint intervals inside the total's; each figure is rounded to 0.1 ms.
    assert float(timing["total"]) >= parts - 0.2
