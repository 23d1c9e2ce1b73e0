"""Throughput and latency against the raw pipeline's limits, as ratios in one run.

    .venv/bin/python bench/throughput.py [--runs 3] [--seconds 15] [--configs 1:auto 1:1 2:auto]

(a) The raw pipeline in a plain loop (the service's own loader), at batch sizes 1, 2, 4 and
    8, with the torch threads each served configuration uses: images/s, and per-call p50
    latency at batch 1.
(b) The service, through gunicorn, per configuration WORKERS:THREADS ("auto" = the
    default policy of app/serving/gunicorn_support.py): concurrency 1 (p50 latency) and
    concurrency 8 (images/s, closed loop), with /health/live probed 20 times a second during
    the concurrency-8 load (p99). The load generator runs on the same machine.
Ratios, per run, then median (min-max) over ``--runs``: c=1 p50 / raw batch-1 p50 of the
same thread count (goal <= 1.05), c=8 images/s / raw best batch (goal >= 0.9).
Work everywhere: 64x64, ``--steps`` steps, the demo model, CPU. Nothing is asserted.
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import os
import statistics
import sys
import time
from multiprocessing.synchronize import Event
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from app.serving.gunicorn_support import cpu_threads_per_worker  # noqa: E402
from app.settings import Settings  # noqa: E402
from bench.loadgen import print_table, run_load  # noqa: E402
from tests.support.server import DEMO_MODEL_DIR, gunicorn_server  # noqa: E402

BATCHES = (1, 2, 4, 8)


def spread(values: list[float], digits: int = 2) -> str:
    if len(values) == 1:
        return f"{values[0]:.{digits}f}"
    return (f"{statistics.median(values):.{digits}f} "
            f"({min(values):.{digits}f}-{max(values):.{digits}f})")


def raw_loop(steps: int, seconds: float, threads: int) -> dict[int, tuple[float, float]]:
    """Per batch size: (images/s, p50 seconds per call)."""
    import torch

    from app.serving.demo_model import ensure_demo_model
    from app.serving.model import load_model

    ensure_demo_model(DEMO_MODEL_DIR)
    model = load_model(Settings(demo_model_dir=DEMO_MODEL_DIR, device="cpu",
                                torch_threads=threads))
    found = {}
    for batch in BATCHES:
        calls: list[float] = []
        started = time.monotonic()
        while time.monotonic() - started < seconds:
            call = time.perf_counter()
            with torch.inference_mode():
                model.pipeline(prompt=["bench"] * batch, width=64, height=64,
                               num_inference_steps=steps, output_type="pt",
                               generator=[torch.Generator("cpu").manual_seed(s)
                                          for s in range(batch)])
            calls.append(time.perf_counter() - call)
        found[batch] = (batch * len(calls) / sum(calls), statistics.median(calls))
    return found


def probe_health(url: str, seconds: float, ready: Event, go: Event,
                 found: multiprocessing.Queue[list[float]]) -> None:
    """GET ``url`` 20 times a second for ``seconds`` once ``go`` is set, in its own process.

    Its own process, so the load generator's event loop and GIL are not in the figure.
    """
    latencies = []
    ready.set()
    go.wait()
    deadline = time.monotonic() + seconds
    with httpx.Client(timeout=10) as client:
        while time.monotonic() < deadline:
            sent = time.perf_counter()
            client.get(url)
            latencies.append(time.perf_counter() - sent)
            time.sleep(0.05)
    found.put(latencies)


def loaded(url: str, health: str, body: dict[str, object], seconds: float) -> tuple[
        float, float]:
    context = multiprocessing.get_context("spawn")  # no fork of a process holding torch
    found: multiprocessing.Queue[list[float]] = context.Queue()
    ready, go = context.Event(), context.Event()
    prober = context.Process(target=probe_health, args=(health, seconds, ready, go, found))
    prober.start()
    ready.wait(timeout=60)
    go.set()
    result = asyncio.run(run_load(url, body, 8, 100_000, seconds))
    latencies = sorted(found.get(timeout=seconds + 30))
    prober.join(timeout=30)
    return result.images_per_s, latencies[int(0.99 * (len(latencies) - 1))]


def served(workers: int, threads: int | None, steps: int, seconds: float,
           extra_env: dict[str, str]) -> tuple[float, float, float]:
    """(c=1 p50 s, c=8 images/s, health p99 s) for one configuration."""
    env = {"SLEEPWELL_MAX_QUEUE": "64", "SLEEPWELL_LOG_LEVEL": "warning", **extra_env}
    if threads is not None:
        env["SLEEPWELL_TORCH_THREADS"] = str(threads)
    body = {"prompt": "bench", "size": "64x64", "num_inference_steps": steps}
    with gunicorn_server(env, workers=workers) as server:
        url = server.url + "/v1/images/generations"
        asyncio.run(run_load(url, body, 8, 32, 60))  # warm every worker
        single = asyncio.run(run_load(url, body, 1, 100_000, seconds))
        rate, health_p99 = loaded(url, server.url + "/health/live", body, seconds)
    return single.p50, rate, health_p99


def parse_config(text: str) -> tuple[int, int | None]:
    workers, threads = text.split(":")
    return int(workers), None if threads == "auto" else int(threads)


def threads_of(workers: int, threads: int | None) -> int:
    return threads if threads is not None else cpu_threads_per_worker(workers)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--seconds", type=float, default=15.0)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--configs", nargs="+", default=["1:auto", "1:1", "2:auto"])
    parser.add_argument("--env", nargs="*", default=[], help="KEY=VALUE for the service")
    args = parser.parse_args()
    configs = [parse_config(text) for text in args.configs]
    extra_env = dict(item.split("=", 1) for item in args.env)
    raw: dict[int, list[dict[int, tuple[float, float]]]] = {}
    results: dict[tuple[int, int | None], list[tuple[float, float, float]]] = {}
    for _ in range(args.runs):
        for threads in sorted({threads_of(w, t) for w, t in configs}):
            raw.setdefault(threads, []).append(raw_loop(args.steps, args.seconds, threads))
        for workers, threads in configs:
            results.setdefault((workers, threads), []).append(
                served(workers, threads, args.steps, args.seconds, extra_env))
    print_report(args, raw, results)


def print_report(args: argparse.Namespace, raw: dict[int, list[dict[int, tuple[float, float]]]],
                 results: dict[tuple[int, int | None], list[tuple[float, float, float]]]) -> None:
    print(f"\n64x64, {args.steps} steps, demo model, CPU ({os.cpu_count()} cores), "
          f"{args.seconds:.0f} s per measurement, {args.runs} run(s): median (min-max)")
    rows: list[list[object]] = []
    for threads, runs in sorted(raw.items()):
        for batch in BATCHES:
            rows.append([f"raw loop, {threads} thread(s)", batch,
                         spread([run[batch][0] for run in runs]),
                         spread([run[batch][1] * 1000 for run in runs], 0)])
    print_table(["(a)", "batch", "images/s", "p50 ms per call"], rows)
    rows = []
    for (workers, threads), runs in results.items():
        used = threads_of(workers, threads)
        raw_runs = raw[used]
        p50_ratio = [r[0] / raw_runs[i][1][1] for i, r in enumerate(runs)]
        best = [max(rate for rate, _ in raw_runs[i].values()) for i in range(len(runs))]
        rate_ratio = [r[1] / best[i] for i, r in enumerate(runs)]
        rows.append([f"{workers} worker(s) x {used} thread(s)"
                     + (" (default)" if threads is None else ""),
                     spread([r[0] * 1000 for r in runs], 0), spread(p50_ratio),
                     spread([r[1] for r in runs]), spread(rate_ratio),
                     spread([r[2] * 1000 for r in runs], 1)])
    print_table(["(b) served", "c=1 p50 ms", "/ raw bs1 p50", "c=8 images/s",
                 "/ raw best", "health p99 ms (c=8)"], rows)


if __name__ == "__main__":
    main()
