"""Health-endpoint latency while the GPU (here: CPU) is saturated and the queue is full.

    .venv/bin/python bench/health_latency.py [--probes 400] [--workers 1]

Keeps every worker busy with long generations and its queue full (new requests get 429),
then times /health/live and /health/ready. Prints one table; nothing is asserted.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.loadgen import print_table, run_load  # noqa: E402
from tests.support.server import gunicorn_server  # noqa: E402


async def probe(url: str, probes: int) -> tuple[list[float], dict[int, int]]:
    latencies: list[float] = []
    statuses: dict[int, int] = {}
    async with httpx.AsyncClient(timeout=10) as client:
        for _ in range(probes):
            sent = time.perf_counter()
            response = await client.get(url)
            latencies.append(time.perf_counter() - sent)
            statuses[response.status_code] = statuses.get(response.status_code, 0) + 1
            await asyncio.sleep(0.01)
    return latencies, statuses


def quantile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000


async def measure(base: str, probes: int, max_queue: int, workers: int) -> list[list[object]]:
    body = {"prompt": "saturate", "size": "64x64", "num_inference_steps": 60}
    flood = asyncio.create_task(
        # More clients than queue + batch + 2: every queue stays full, extras get 429.
        run_load(base + "/v1/images/generations", body, (max_queue + 6) * workers, 10_000, 60)
    )
    await asyncio.sleep(2.0)  # let the queue fill
    rows: list[list[object]] = []
    for path in ("/health/live", "/health/ready"):
        latencies, statuses = await probe(base + path, probes)
        rows.append([path, len(latencies), f"{quantile(latencies, 0.5):.2f}",
                     f"{quantile(latencies, 0.99):.2f}", f"{max(latencies) * 1000:.2f}", statuses])
    async with httpx.AsyncClient() as client:
        depth = (await client.get(base + "/health")).json()["queue_depth"]
    flood.cancel()
    rows.append(["(queue depth during probes)", depth, "", "", "", ""])
    load = await asyncio.gather(flood, return_exceptions=True)
    del load
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--probes", type=int, default=400)
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--max-queue", type=int, default=4)
    args = parser.parse_args()
    env = {"SLEEPWELL_MAX_QUEUE": str(args.max_queue), "SLEEPWELL_LOG_LEVEL": "warning",
           "SLEEPWELL_MAX_STEPS": "200"}
    with gunicorn_server(env, workers=args.workers) as server:
        rows = asyncio.run(measure(server.url, args.probes, args.max_queue, args.workers))
    print(f"\nhealth latency with every worker generating and its queue full "
          f"(workers={args.workers}, SLEEPWELL_MAX_QUEUE={args.max_queue})")
    print_table(["endpoint", "probes", "p50 ms", "p99 ms", "max ms", "statuses"], rows)


if __name__ == "__main__":
    main()
