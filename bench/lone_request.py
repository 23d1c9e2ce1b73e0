"""A lone client (c=1): the default configuration against 1 worker x every core, interleaved.

bench/throughput.py measures each configuration in its own window, so drift between
windows (large on a shared 2-core box) lands in the c=1 ratio. Here every configuration's
server is up at once (idle servers cost nothing), and rounds of sequential requests go to
each in turn, so all of them see the same machine. Per run: client p50 and the server's own
``Server-Timing`` total p50; then median (min-max) over runs. Nothing is asserted.

    .venv/bin/python bench/lone_request.py [--runs 3] [--rounds 6] [--per-round 15]
"""

from __future__ import annotations

import argparse
import re
import statistics
import sys
import time
from contextlib import ExitStack
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.support.server import gunicorn_server  # noqa: E402

TOTAL = re.compile(r"total;dur=([0-9.]+)")
BODY = {"prompt": "a lighthouse", "size": "64x64", "num_inference_steps": 4}
# name -> (environment, workers)
CONFIGS = {
    "1 worker x 2 threads": ({"SLEEPWELL_TORCH_THREADS": "2"}, 1),
    "defaults (2 workers, adaptive)": ({}, 2),
    "2 workers x 2 threads, pinned": ({"SLEEPWELL_TORCH_THREADS": "2"}, 2),
}


def one_run(clients: dict[str, httpx.Client], rounds: int, per_round: int) -> dict[str, tuple[
        float, float]]:
    client_ms: dict[str, list[float]] = {name: [] for name in clients}
    server_ms: dict[str, list[float]] = {name: [] for name in clients}
    for _ in range(rounds):
        for name, client in clients.items():
            for _ in range(per_round):
                sent = time.monotonic()
                response = client.post("/v1/images/generations", json=BODY)
                client_ms[name].append((time.monotonic() - sent) * 1000)
                total = TOTAL.search(response.headers.get("server-timing", ""))
                if response.status_code == 200 and total:
                    server_ms[name].append(float(total.group(1)))
    return {name: (statistics.median(client_ms[name]), statistics.median(server_ms[name]))
            for name in clients}


def spread(values: list[float]) -> str:
    return f"{statistics.median(values):.1f} ({min(values):.1f}-{max(values):.1f})"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--per-round", type=int, default=15)
    args = parser.parse_args()
    with ExitStack() as stack:
        clients = {}
        for name, (env, workers) in CONFIGS.items():
            server = stack.enter_context(gunicorn_server(env, workers=workers, ready_timeout=300))
            clients[name] = stack.enter_context(httpx.Client(base_url=server.url, timeout=60))
        for client in clients.values():  # warm every worker's first calls
            for _ in range(6):
                client.post("/v1/images/generations", json=BODY)
        runs = [one_run(clients, args.rounds, args.per_round) for _ in range(args.runs)]
    print(f"c=1, 64x64, 4 steps, demo model; {args.runs} runs of {args.rounds} interleaved rounds"
          f" x {args.per_round} requests: median (min-max) of the runs' p50")
    print("| configuration | client p50 ms | server total p50 ms | / 1 worker x 2 threads |")
    print("|---|---|---|---|")
    base = [run["1 worker x 2 threads"][0] for run in runs]
    for name in CONFIGS:
        client = [run[name][0] for run in runs]
        server = [run[name][1] for run in runs]
        ratio = [mine / theirs for mine, theirs in zip(client, base, strict=True)]
        print(f"| {name} | {spread(client)} | {spread(server)} | "
              f"{statistics.median(ratio):.2f} ({min(ratio):.2f}-{max(ratio):.2f}) |")


if __name__ == "__main__":
    main()
