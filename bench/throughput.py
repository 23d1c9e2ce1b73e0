"""Throughput and latency against the raw pipeline's limits, as ratios in one run.

    .venv/bin/python bench/throughput.py [--runs 3] [--seconds 10] [--configs 1:auto 1:1 2:auto]

Per configuration WORKERS:THREADS ("auto" = the default policy of
app/serving/gunicorn_support.py), one gunicorn server and one raw-loop process stay up, and
each run measures, one after the other while the other side idles:
(a) the raw pipeline in a plain loop (the service's own loader): batch sizes 1, 2, 4 and 8
    with one torch thread per core (the machine's limit), and batch 1 with the configured
    thread count if that differs: images/s and per-call p50 latency;
(b) the service: concurrency 1 (p50 latency) and concurrency 8 (images/s, closed loop),
    with /health/live probed 20 times a second from its own process during the
    concurrency-8 load (p99; a keep-alive http.client connection unless --prober httpx),
    then concurrency 8 again without the prober (its 20 probes a second are 4-5x the
    generation requests here and take CPU from the model; a kubelet probes every 1-10 s).
    The load generator (httpx, the OpenAI SDK's client) runs on the same machine.
(c) where the CPU went in each concurrency-8 window (bench/cpu_account.py): the shares of
    the machine taken by the worker's model threads (inference, OpenMP, encoding), its
    event loop, the load generator and the prober, and the model threads' CPU per image
    against the raw loop's at its best batch;
(d) the server's side of the latency: the ``total`` of each answer's Server-Timing (from
    the outermost middleware receiving the request to the answer's start), p50 and mean,
    beside the client's, at c=1 and c=8 (unprobed): the difference is the HTTP path
    outside the app, the client and the handoffs between them, on the same 2 cores.
"Cores" are those this process may use (affinity, CPU quota: app/serving/host_limits.py).
Alternating the two sides within a run keeps the machine's drift (which on this box is
larger than the gaps measured) out of the ratios. Ratios, per run, then median (min-max):
c=1 p50 / raw batch-1 p50 at the threads a lone request gets, every core by default
(goal <= 1.05); c=8 images/s / raw best
batch with all cores (goal >= 0.9). 64x64, ``--steps`` steps, demo model, CPU; nothing is
asserted.
"""

from __future__ import annotations

import argparse
import asyncio
import http.client
import multiprocessing
import statistics
import sys
import time
from collections.abc import Callable
from multiprocessing.connection import Connection
from multiprocessing.synchronize import Event
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from app.serving.gunicorn_support import cpu_threads_per_worker  # noqa: E402
from app.serving.host_limits import usable_cores  # noqa: E402
from app.settings import Settings  # noqa: E402
from bench.cpu_account import CpuShares, WorkerSnapshot, self_cpu_s  # noqa: E402
from bench.loadgen import LoadResult, print_table, run_load  # noqa: E402
from tests.support.server import DEMO_MODEL_DIR, gunicorn_server  # noqa: E402

BATCHES = (1, 2, 4, 8)
CORES = usable_cores()
Sweep = dict[int, tuple[float, float, float]]  # batch -> (images/s, p50 s/call, CPU s/image)


def best_batch(sweep: Sweep) -> tuple[float, float, float]:
    """The raw loop's figures at its fastest batch (most images/s)."""
    return max(sweep.values())


def spread(values: list[float], digits: int = 2) -> str:
    if len(values) == 1:
        return f"{values[0]:.{digits}f}"
    return (f"{statistics.median(values):.{digits}f} "
            f"({min(values):.{digits}f}-{max(values):.{digits}f})")


def raw_loop_process(conn: Connection, steps: int) -> None:
    """Hold the model; answer (threads, batch, seconds) with (images/s, p50 s per call,
    CPU s per image of the whole process)."""
    import torch

    from app.serving.demo_model import ensure_demo_model
    from app.serving.model import load_model

    ensure_demo_model(DEMO_MODEL_DIR)
    model = load_model(Settings(demo_model_dir=DEMO_MODEL_DIR, device="cpu"))
    conn.send("ready")
    while (ask := conn.recv()) is not None:
        threads, batch, seconds = ask
        torch.set_num_threads(threads)
        calls: list[float] = []
        cpu = time.process_time()
        started = time.monotonic()
        while time.monotonic() - started < seconds:
            call = time.perf_counter()
            with torch.inference_mode():
                model.pipeline(prompt=["bench"] * batch, width=64, height=64,
                               num_inference_steps=steps, output_type="pt",
                               generator=[torch.Generator("cpu").manual_seed(s)
                                          for s in range(batch)])
            calls.append(time.perf_counter() - call)
        cpu_per_image = (time.process_time() - cpu) / (batch * len(calls))
        conn.send((batch * len(calls) / sum(calls), statistics.median(calls), cpu_per_image))


class RawLoop:
    """The raw loop in its own (spawned, so torch-free parent) process, idle between asks."""

    def __init__(self, steps: int) -> None:
        context = multiprocessing.get_context("spawn")
        self._conn, child = context.Pipe()
        self._process = context.Process(target=raw_loop_process, args=(child, steps))
        self._process.start()
        if not self._conn.poll(120) or self._conn.recv() != "ready":
            raise RuntimeError("the raw loop did not start")

    def measure(self, threads: int, batch: int, seconds: float) -> tuple[float, float, float]:
        self._conn.send((threads, batch, seconds))
        result: tuple[float, float, float] = self._conn.recv()
        return result

    def close(self) -> None:
        self._conn.send(None)
        self._process.join(timeout=30)


def health_getter(url: str, client: str) -> Callable[[], object]:
    """One keep-alive GET of ``url`` per call. "stdlib" (http.client) costs about a third
    of httpx's client CPU per probe, closer to a kubelet's or blackbox exporter's (Go)
    probe; with httpx the client's own time is a large part of the figure on a busy box."""
    if client == "httpx":
        session = httpx.Client(timeout=10)
        return lambda: session.get(url)
    parts = urlsplit(url)
    connection = http.client.HTTPConnection(parts.hostname or "", parts.port, timeout=10)

    def get() -> bytes:
        connection.request("GET", parts.path)
        return connection.getresponse().read()
    return get


def probe_health(url: str, client: str, seconds: float, ready: Event, go: Event,
                 found: multiprocessing.Queue[tuple[list[float], float]]) -> None:
    """GET ``url`` 20 times a second for ``seconds`` once ``go`` is set, in its own process,
    so the load generator's event loop and GIL are not in the figure. Hands back the
    latencies and the CPU seconds the probing took."""
    latencies = []
    get = health_getter(url, client)
    get()  # connect before the window
    ready.set()
    go.wait()
    cpu = time.process_time()
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        sent = time.perf_counter()
        get()
        latencies.append(time.perf_counter() - sent)
        time.sleep(0.05)
    found.put((latencies, time.process_time() - cpu))


def loaded(url: str, health: str, body: dict[str, object], seconds: float,
           worker_pids: list[int], prober: str = "stdlib") -> tuple[float, float, CpuShares]:
    """(c=8 images/s, health p99 s, CPU shares) under closed-loop concurrency 8."""
    context = multiprocessing.get_context("spawn")
    found: multiprocessing.Queue[tuple[list[float], float]] = context.Queue()
    ready, go = context.Event(), context.Event()
    probing = context.Process(target=probe_health,
                              args=(health, prober, seconds, ready, go, found))
    probing.start()
    ready.wait(timeout=60)
    before, own_cpu = WorkerSnapshot.take(worker_pids), self_cpu_s()
    go.set()
    result = asyncio.run(run_load(url, body, 8, 100_000, seconds))
    used, load_generator_s = WorkerSnapshot.take(worker_pids) - before, self_cpu_s() - own_cpu
    latencies, prober_s = found.get(timeout=seconds + 30)
    probing.join(timeout=30)
    latencies.sort()
    shares = CpuShares.of(used, load_generator_s, prober_s, result.images, result.seconds)
    return result.images_per_s, latencies[int(0.99 * (len(latencies) - 1))], shares


def measure_config(workers: int, threads: int | None, args: argparse.Namespace,
                   extra_env: dict[str, str]) -> list[dict[str, Any]]:
    """Every run of one configuration: raw sweep, raw bs1 at its threads, served figures."""
    used = threads_of(workers, threads)
    env = {"SLEEPWELL_MAX_QUEUE": "64", "SLEEPWELL_LOG_LEVEL": "warning", **extra_env}
    if threads is not None:
        env["SLEEPWELL_TORCH_THREADS"] = str(threads)
    body = {"prompt": "bench", "size": "64x64", "num_inference_steps": args.steps}
    runs = []
    raw = RawLoop(args.steps)
    try:
        with gunicorn_server(env, workers=workers) as server:
            url = server.url + "/v1/images/generations"
            asyncio.run(run_load(url, body, 8, 32, 60))  # warm every worker
            for _ in range(args.runs):
                sweep = {b: raw.measure(CORES, b, args.seconds) for b in BATCHES}
                alone = sweep[1] if used == CORES else raw.measure(used, 1, args.seconds)
                single = asyncio.run(run_load(url, body, 1, 100_000, args.seconds))
                rate, health_p99, shares = loaded(url, server.url + "/health/live", body,
                                                  args.seconds, server.worker_pids(), args.prober)
                unprobed = asyncio.run(run_load(url, body, 8, 100_000, args.seconds))
                runs.append({"sweep": sweep, "alone_p50": alone[1], "c1_p50": single.p50,
                             "c8": rate, "health_p99": health_p99, "cpu": shares,
                             "c8_unprobed": unprobed.images_per_s,
                             "c1_sides": sides(single), "c8_sides": sides(unprobed)})
    finally:
        raw.close()
    return runs


def sides(result: LoadResult) -> dict[str, float]:
    """Client and server (Server-Timing total) latency, p50 and mean, in ms."""
    def ms(values: list[float], stat: Callable[[list[float]], float]) -> float:
        return stat(values) * 1000 if values else float("nan")
    return {"client_p50": ms(result.latencies, statistics.median),
            "client_mean": ms(result.latencies, statistics.fmean),
            "server_p50": ms(result.server_totals, statistics.median),
            "server_mean": ms(result.server_totals, statistics.fmean)}


def parse_config(text: str) -> tuple[int, int | None]:
    workers, threads = text.split(":")
    return int(workers), None if threads == "auto" else int(threads)


def threads_of(workers: int, threads: int | None) -> int:
    """Threads a lone request runs with: all cores by default, adaptive or single worker
    (app/serving/cpu_share.py), so c=1 is compared with the raw loop at every core."""
    return threads if threads is not None else CORES


def threads_label(workers: int) -> str:
    if workers == 1:
        return f"{CORES}"
    return f"cores / busy workers, {cpu_threads_per_worker(workers, CORES)}-{CORES}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--configs", nargs="+", default=["1:auto", "1:1", "2:auto"])
    parser.add_argument("--env", nargs="*", default=[], help="KEY=VALUE for the service")
    parser.add_argument("--prober", choices=("stdlib", "httpx"), default="stdlib",
                        help="the health prober's HTTP client (see health_getter)")
    args = parser.parse_args()
    extra_env = dict(item.split("=", 1) for item in args.env)
    results = {config: measure_config(*parse_config(config), args, extra_env)
               for config in args.configs}
    print_report(args, results)


def print_report(args: argparse.Namespace, results: dict[str, list[dict[str, Any]]]) -> None:
    print(f"\n64x64, {args.steps} steps, demo model, CPU ({CORES} cores), "
          f"{args.seconds:.0f} s per measurement, {args.runs} run(s) per configuration: "
          "median (min-max)")
    sweeps = [run["sweep"] for runs in results.values() for run in runs]
    rows: list[list[object]] = [
        [batch, spread([s[batch][0] for s in sweeps]),
         spread([s[batch][1] * 1000 for s in sweeps], 0)]
        for batch in BATCHES
    ]
    print_table([f"(a) raw loop, {CORES} threads: batch", "images/s", "p50 ms per call"], rows)
    rows = []
    for config, runs in results.items():
        workers, threads = parse_config(config)
        used = threads_of(workers, threads)
        best = [best_batch(run["sweep"])[0] for run in runs]
        rows.append([
            f"{workers} worker(s) x {used} thread(s)" if threads is not None
            else f"{workers} worker(s), default threads ({threads_label(workers)})",
            spread([run["alone_p50"] * 1000 for run in runs], 0),
            spread([run["c1_p50"] * 1000 for run in runs], 0),
            spread([run["c1_p50"] / run["alone_p50"] for run in runs]),
            spread([run["c8"] for run in runs]),
            spread([run["c8"] / b for run, b in zip(runs, best, strict=True)]),
            spread([run["health_p99"] * 1000 for run in runs], 1),
            spread([run["c8_unprobed"] / b for run, b in zip(runs, best, strict=True)]),
        ])
    print_table(["(b) served", "raw bs1 p50 ms", "c=1 p50 ms", "ratio (<= 1.05)",
                 "c=8 images/s", "/ raw best (>= 0.9)", "health p99 ms (c=8)",
                 "c=8 unprobed / raw best"], rows)
    print_cpu_report(results)
    print_server_side_report(results)


def print_server_side_report(results: dict[str, list[dict[str, Any]]]) -> None:
    rows: list[list[object]] = []
    for config, runs in results.items():
        for load in ("c1_sides", "c8_sides"):
            figures = [run[load] for run in runs]
            rows.append([f"{config} c={load[1]}", *(
                spread([figure[name] for figure in figures], 1)
                for name in ("client_p50", "server_p50", "client_mean", "server_mean"))])
            rows[-1].append(spread([f["client_p50"] - f["server_p50"] for f in figures], 1))
    print_table(["(d) latency ms", "client p50", "server total p50", "client mean",
                 "server total mean", "client - server p50"], rows)


def print_cpu_report(results: dict[str, list[dict[str, Any]]]) -> None:
    rows: list[list[object]] = []
    for config, runs in results.items():
        shares: list[CpuShares] = [run["cpu"] for run in runs]
        raw_cpu = [best_batch(run["sweep"])[2] for run in runs]
        rows.append([
            config,
            *(spread([100 * getattr(s, name) for s in shares], 1) for name in
              ("model_threads", "event_loop", "load_generator", "prober")),
            spread([s.model_cpu_s_per_image / raw
                    for s, raw in zip(shares, raw_cpu, strict=True)]),
        ])
    print_table(["(c) c=8, % of the machine", "model threads", "event loop",
                 "load generator", "prober", "model CPU per image / raw best"], rows)


if __name__ == "__main__":
    main()
