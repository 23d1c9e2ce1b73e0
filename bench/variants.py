"""Service variants side by side: paired c=1 and c=8 windows against one raw loop.

    .venv/bin/python bench/variants.py [--rounds 6] [--seconds 8] NAME=KEY=VALUE,KEY=VALUE ...

Each NAME is one gunicorn server (1 worker, defaults plus the given environment, e.g.
``base=`` or ``spin=GOMP_SPINCOUNT=30000`` or ``bind=OMP_PROC_BIND=close,OMP_PLACES=cores``).
To compare uvloop + httptools, install them into .venv first (uvicorn picks them up when
present) and pin the baseline with ``h11=GUNICORN_CMD_ARGS=-k uvicorn_worker.UvicornH11Worker``.
All servers stay up, idle between turns; each round
measures the raw loop (best of batch 4 and 8, and batch 1) and then every server in turn:
c=1 p50 / raw batch-1 p50, c=8 images/s (with the 20 Hz prober) / raw best, health p99.
Two identical servers differed by up to 0.13 in one round on this box, so compare medians
over several rounds. Nothing is asserted.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from contextlib import ExitStack
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.loadgen import print_table, run_load  # noqa: E402
from bench.throughput import CORES, RawLoop, loaded, spread  # noqa: E402
from tests.support.server import RunningServer, gunicorn_server  # noqa: E402

BODY: dict[str, object] = {"prompt": "bench", "size": "64x64", "num_inference_steps": 4}
Figures = dict[str, list[float]]


def parse_variant(text: str) -> tuple[str, dict[str, str]]:
    name, _, settings = text.partition("=")
    return name, dict(item.split("=", 1) for item in settings.split(",") if item)


def one_round(raw: RawLoop, servers: dict[str, RunningServer], seconds: float,
              found: dict[str, Figures]) -> None:
    best = max(raw.measure(CORES, batch, seconds)[0] for batch in (4, 8))
    alone = raw.measure(CORES, 1, seconds)[1]
    for name, server in servers.items():
        url = server.url + "/v1/images/generations"
        single = asyncio.run(run_load(url, BODY, 1, 100_000, seconds))
        rate, health_p99, _ = loaded(url, server.url + "/health/live", BODY, seconds,
                                     server.worker_pids())
        found[name]["c1"].append(single.p50 / alone)
        found[name]["c8"].append(rate / best)
        found[name]["health"].append(health_p99 * 1000)
    print("round:", ", ".join(f"{name} c8 {found[name]['c8'][-1]:.2f}" for name in servers),
          flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--seconds", type=float, default=8.0)
    parser.add_argument("variants", nargs="+")
    args = parser.parse_args()
    variants = dict(parse_variant(text) for text in args.variants)
    found: dict[str, Figures] = {name: {"c1": [], "c8": [], "health": []} for name in variants}
    raw = RawLoop(4)
    try:
        with ExitStack() as stack:
            servers = {name: stack.enter_context(gunicorn_server(
                {"SLEEPWELL_MAX_QUEUE": "64", "SLEEPWELL_LOG_LEVEL": "warning", **env}))
                for name, env in variants.items()}
            for server in servers.values():  # warm
                asyncio.run(run_load(server.url + "/v1/images/generations", BODY, 8, 32, 60))
            for _ in range(args.rounds):
                one_round(raw, servers, args.seconds, found)
    finally:
        raw.close()
    rows: list[list[object]] = [
        [name, spread(figures["c1"]), spread(figures["c8"]), spread(figures["health"], 1)]
        for name, figures in found.items()
    ]
    print(f"{args.rounds} round(s) of {args.seconds:.0f} s windows: median (min-max)")
    print_table(["variant", "c=1 / raw bs1", "c=8 / raw best", "health p99 ms"], rows)


if __name__ == "__main__":
    main()
