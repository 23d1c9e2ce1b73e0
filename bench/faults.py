"""Overload and crash scenarios against real gunicorn workers; prints tables.

    .venv/bin/python bench/faults.py [--overload-seconds 60] [--crash-seconds 30]

Overload: one worker, SLEEPWELL_MAX_QUEUE=4, four times its measured capacity, open loop.
Crash: two workers under closed-loop load; one is SIGKILLed; time until its replacement
is ready, and how many requests failed against how many the killed worker held.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.loadgen import print_table  # noqa: E402
from tests.support.scenarios import crash, overload  # noqa: E402
from tests.support.server import gunicorn_server  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--overload-seconds", type=float, default=60.0)
    parser.add_argument("--crash-seconds", type=float, default=30.0)
    args = parser.parse_args()
    env = {"SLEEPWELL_MAX_QUEUE": "4", "SLEEPWELL_LOG_LEVEL": "warning"}

    with gunicorn_server(env) as server:
        load = asyncio.run(overload(server, factor=4.0, seconds=args.overload_seconds))
    print(f"\noverload: 1 worker, queue 4, {load.seconds:.0f}s at 4x capacity")
    print_table(
        ["capacity/s", "offered/s", "answers", "200", "429", "503", "other", "no Retry-After",
         "live p99 ms", "ready p99 ms", "health statuses"],
        [[f"{load.capacity_per_s:.1f}", f"{load.offered_per_s:.1f}", sum(load.statuses.values()),
          load.statuses[200], load.statuses[429], load.statuses[503],
          sum(v for k, v in load.statuses.items() if k not in (200, 429, 503)),
          load.missing_retry_after, f"{load.health.p99_ms('/health/live'):.1f}",
          f"{load.health.p99_ms('/health/ready'):.1f}",
          {path: dict(counts) for path, counts in load.health.statuses.items()}]],
    )

    with gunicorn_server(env | {"SLEEPWELL_MAX_QUEUE": "16"}, workers=2) as server:
        killed = asyncio.run(crash(server, clients=6, seconds=args.crash_seconds, kill_after=5.0))
    seconds = args.crash_seconds
    print(f"\ncrash: 2 workers, 6 clients, kill -9 one worker after 5s of {seconds:.0f}s")
    print_table(
        ["requests the killed worker held", "failed", "seconds to replacement ready",
         "statuses"],
        [[killed.victim_held, killed.failed, f"{killed.seconds_to_ready:.2f}",
          dict(killed.statuses)]],
    )


if __name__ == "__main__":
    main()
