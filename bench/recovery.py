"""Recovery under faults, on a real gunicorn: prints one table per scenario.

    .venv/bin/python bench/recovery.py [--runs 3]

1. Stall: a [[stall]] generation with SLEEPWELL_STALL_TIMEOUT_S=2 on one worker: when
   liveness turned 503, whether the dying pid ever said 200 again, when a replacement was
   ready. Beside it, kill -9 of an idle worker: its boot + load time, the floor for any
   replacement. The goal: stall -> ready <= stall timeout + that load time + 2 s.
2. SIGTERM under load: two workers, clients on fresh connections, the busiest worker gets
   SIGTERM with a 3 s grace: answers by status and code, connection resets, requests
   counted in image_generation_total against requests sent.
3. Failed load: every worker's model fails (a bad SLEEPWELL_MODEL): seconds until the
   master exits and its exit status; one slot failing: what share of requests succeed.
"""

from __future__ import annotations

import argparse
import os
import signal
import statistics
import sys
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.loadgen import print_table  # noqa: E402
from tests.support.recovery import (  # noqa: E402
    fresh_get,
    sigterm_worker_under_load,
    stall_and_replace,
)
from tests.support.server import gunicorn_server  # noqa: E402
from tests.support.waiting import wait_until  # noqa: E402

QUIET = {"SLEEPWELL_LOG_LEVEL": "warning"}
STALL_TIMEOUT_S = 2.0


def spread(values: list[float]) -> str:
    if not values:
        return "-"
    if len(values) == 1:
        return f"{values[0]:.2f}"
    return (f"{statistics.median(values):.2f} (min {min(values):.2f}, max {max(values):.2f}, "
            f"n={len(values)})")


def kill_to_ready_s() -> float:
    """kill -9 of an idle worker -> a new pid answering /health/ready 200: boot + load."""
    with gunicorn_server(QUIET) as server:
        victim = server.worker_pids()[0]
        os.kill(victim, signal.SIGKILL)
        started = time.monotonic()

        def replaced() -> bool:
            pids = server.worker_pids()
            try:
                return bool(pids) and victim not in pids and (
                    fresh_get(server, "/health/ready").status_code == 200)
            except httpx.HTTPError:
                return False

        wait_until(replaced, 120, period=0.05, what="replacement ready")
        return time.monotonic() - started


def stall_scenario(runs: int) -> None:
    env = QUIET | {"SLEEPWELL_FAULT_INJECTION": "true",
                   "SLEEPWELL_STALL_TIMEOUT_S": str(STALL_TIMEOUT_S)}
    detected, ready, alive_after, floors = [], [], 0, []
    for _ in range(runs):
        floors.append(kill_to_ready_s())
        with gunicorn_server(env) as server:
            timeline = stall_and_replace(server)
        if timeline.detected_after_s is not None:
            detected.append(timeline.detected_after_s)
        if timeline.replacement_ready_after_s is not None:
            ready.append(timeline.replacement_ready_after_s)
        alive_after += timeline.stalled_pid_alive_after_detection
    overhead = [r - STALL_TIMEOUT_S - f for r, f in zip(ready, floors, strict=False)]
    print(f"\nstall: SLEEPWELL_STALL_TIMEOUT_S={STALL_TIMEOUT_S:g}, 1 worker, {runs} run(s)")
    print_table(
        ["liveness 503 after s", "dying pid said 200", "replacement ready after s",
         "kill -9 -> ready s (boot+load)", "ready - timeout - boot+load s"],
        [[spread(detected), alive_after, spread(ready), spread(floors), spread(overhead)]],
    )


def sigterm_scenario(runs: int) -> None:
    env = QUIET | {"SLEEPWELL_FAULT_INJECTION": "true", "SLEEPWELL_MAX_BATCH_SIZE": "1",
                   "SLEEPWELL_GRACEFUL_TIMEOUT_S": "3"}
    body = {"prompt": "[[slow=0.25]] long", "size": "64x64", "num_inference_steps": 8}
    rows = []
    for _ in range(runs):
        with gunicorn_server(env, workers=2) as server:
            result = sigterm_worker_under_load(server, body, clients=8, requests_per_client=3,
                                               victim_holding=3)
        rows.append([result.sent, result.victim_held, dict(result.answers), result.resets,
                     int(result.counted)])
    print("\nSIGTERM under load: 2 workers, 8 clients x 3 requests (2 s each), grace 3 s, "
          "the busiest worker signalled")
    print_table(["sent", "victim held", "answers", "resets", "counted"], rows)


def failed_load_scenario() -> None:
    env = QUIET | {"SLEEPWELL_MODEL": "/nonexistent/model", "SLEEPWELL_LOAD_ATTEMPTS": "3"}
    started = time.monotonic()
    with gunicorn_server(env, wait=False, workers=2) as server:
        code = server.process.wait(300)
    all_fail_s = time.monotonic() - started
    one_env = QUIET | {"SLEEPWELL_FAULT_INJECTION": "true",
                       "SLEEPWELL_FAULT_LOAD_FAILURE_SLOTS": "1"}
    with gunicorn_server(one_env, wait=False, workers=2) as server:
        server.wait_ready(timeout=120)
        statuses = [httpx.post(server.url + "/v1/images/generations", timeout=60,
                               json={"prompt": "x", "size": "64x64"},
                               headers={"connection": "close"}).status_code for _ in range(40)]
        master_up = server.process.poll() is None
    print("\nfailed load: SLEEPWELL_LOAD_ATTEMPTS=3, SLEEPWELL_LOAD_BACKOFF_S=2 (doubling)")
    print_table(
        ["case", "outcome"],
        [["every worker fails (2 workers)", f"master exited {code} after {all_fail_s:.1f}s"],
         ["slot 1 of 2 fails", f"{statuses.count(200)}/40 requests 200, master up: {master_up}"]],
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    stall_scenario(args.runs)
    sigterm_scenario(args.runs)
    failed_load_scenario()


if __name__ == "__main__":
    main()
