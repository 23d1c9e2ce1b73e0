"""What "stream": true costs next to the plain JSON answer, on the real service.

    .venv/bin/python bench/streaming.py [--runs 3] [--requests 10] [--steps 10]

For each run: the same sequential requests (64x64, fixed seed) once as JSON and once
streamed. Reports the mean wall time per request, the time to the first event (the
playground's first feedback) and the events per request. Also the cost of waiting streams
on the loop (each polls its generation every 50 ms): /health/live p50 while a long run holds
the worker, with no stream waiting and with STREAMS streams queued behind it.
Prints a table; nothing is asserted.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import threading
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.loadgen import print_table  # noqa: E402
from tests.support.server import gunicorn_server  # noqa: E402

GENERATE = "/v1/images/generations"


def one_json(base: str, body: dict[str, object]) -> float:
    started = time.perf_counter()
    response = httpx.post(base + GENERATE, json=body, timeout=120)
    response.raise_for_status()
    return time.perf_counter() - started


def one_stream(base: str, body: dict[str, object]) -> tuple[float, float, int]:
    started = time.perf_counter()
    first, events = 0.0, 0
    # As the playground asks: with our progress events (the first feedback it shows).
    with httpx.stream("POST", base + GENERATE, json={**body, "stream": True,
                                                      "stream_progress": True},
                      timeout=120) as response:
        for line in response.iter_lines():
            if line.startswith("event:"):
                events += 1
                first = first or time.perf_counter() - started
    return time.perf_counter() - started, first, events


def compare(base: str, requests: int, steps: int) -> list[float]:
    body = {"prompt": "bench", "size": "64x64", "seed": 1, "num_inference_steps": steps}
    plain: list[float] = []
    streamed: list[tuple[float, float, int]] = []
    for _ in range(requests):  # interleaved, so drift in the machine's load hits both alike
        plain.append(one_json(base, body))
        streamed.append(one_stream(base, body))
    return [statistics.mean(plain) * 1000, statistics.mean(s[0] for s in streamed) * 1000,
            statistics.mean(s[1] for s in streamed) * 1000,
            statistics.mean(s[2] for s in streamed)]


def read_stream(url: str, body: dict[str, object]) -> None:
    with httpx.stream("POST", url, json=body, timeout=120) as response:
        for _ in response.iter_lines():
            pass


def idle_streams_cost(base: str, streams: int) -> float:
    """/health/live p50 (ms) while ``streams`` streams poll their queued generations."""
    blocker = {"prompt": "[[slow=0.2]] block", "size": "64x64", "num_inference_steps": 40}
    waiting = {"prompt": "wait", "size": "64x64", "num_inference_steps": 1, "stream": True}
    threads = [threading.Thread(target=httpx.post, args=(base + GENERATE,),
                                kwargs={"json": blocker, "timeout": 120})]
    threads += [threading.Thread(target=read_stream, args=(base + GENERATE, waiting))
                for _ in range(streams)]
    for thread in threads:
        thread.start()
        time.sleep(0.05)
    latencies = []
    for _ in range(100):
        sent = time.perf_counter()
        httpx.get(base + "/health/live", timeout=10)
        latencies.append(time.perf_counter() - sent)
    for thread in threads:
        thread.join(120)
    return statistics.median(latencies) * 1000


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--requests", type=int, default=10)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--streams", type=int, default=12)
    args = parser.parse_args()
    env = {"SLEEPWELL_FAULT_INJECTION": "true", "SLEEPWELL_MAX_QUEUE": str(args.streams + 4)}
    rows: list[list[object]] = []
    with gunicorn_server(env) as server:
        for run in range(1, args.runs + 1):
            plain, streamed, first, events = compare(server.url, args.requests, args.steps)
            alone = idle_streams_cost(server.url, 0)
            idle = idle_streams_cost(server.url, args.streams)
            rows.append([run, f"{plain:.1f}", f"{streamed:.1f}", f"{streamed - plain:+.1f}",
                         f"{first:.1f}", f"{events:.1f}", f"{alone:.2f}", f"{idle:.2f}"])
    print(f"{args.requests} sequential requests per run, 64x64, {args.steps} steps, 1 worker; "
          "/health/live p50 while a long run holds the worker")
    print_table(["run", "json ms", "stream ms", "delta ms", "first event ms", "events/req",
                 "live p50 ms, no stream", f"live p50 ms, {args.streams} queued streams"], rows)


if __name__ == "__main__":
    main()
