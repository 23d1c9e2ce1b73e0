"""Sync latency with and without a job backlog: "sync first, jobs fill idle capacity".

One service (1 worker), one PostgreSQL. Phase 1: sequential sync requests, no jobs.
Phase 2: the same requests while a backlog of jobs runs. A sync request waits at most for
the pipeline call already running (jobs never queue ahead of it in the runner).

    .venv/bin/python bench/jobs_fairness.py --requests 20 --jobs 40
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.jobs.postgres import TestPostgres, query  # noqa: E402
from tests.support.server import gunicorn_server  # noqa: E402

BODY = {"prompt": "a lighthouse", "size": "64x64", "num_inference_steps": 4}


def latencies(client: httpx.Client, count: int) -> list[float]:
    found = []
    for _ in range(count):
        started = time.monotonic()
        client.post("/v1/images/generations", json=BODY).raise_for_status()
        found.append(time.monotonic() - started)
    return found


def line(name: str, values: list[float]) -> str:
    p95 = sorted(values)[max(0, round(len(values) * 0.95) - 1)]
    return (f"{name:<26}{statistics.median(values) * 1000:>9.0f}{p95 * 1000:>9.0f}"
            f"{max(values) * 1000:>9.0f}")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--requests", type=int, default=20)
    parser.add_argument("--jobs", type=int, default=40)
    args = parser.parse_args()
    postgres = TestPostgres()
    postgres.start()
    url = postgres.new_database()
    env = {"SLEEPWELL_JOBS_ENABLED": "true", "SLEEPWELL_DATABASE_URL": url,
           "SLEEPWELL_LOG_LEVEL": "warning"}
    try:
        with gunicorn_server(env) as server, server.client() as client:
            latencies(client, 3)  # warm
            idle = latencies(client, args.requests)
            for _ in range(args.jobs):
                client.post("/v1/jobs", json=BODY).raise_for_status()
            time.sleep(1.0)  # let the backlog start running (the phase under test)
            busy = latencies(client, args.requests)
            done = query(url, "SELECT count(*) FROM sleepwell_jobs WHERE status='succeeded'")
    finally:
        postgres.close()
    print(f"1 worker, 64x64, 4 steps; {args.requests} sequential sync requests per phase")
    print(f"{'phase':<26}{'p50 ms':>9}{'p95 ms':>9}{'max ms':>9}")
    print(line("sync, no jobs", idle))
    print(line(f"sync, {args.jobs}-job backlog", busy))
    print(f"jobs finished during the busy phase: {done[0][0]} of {args.jobs}")


if __name__ == "__main__":
    main()
