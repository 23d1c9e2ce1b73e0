"""What a little CPU taken by something else costs the raw pipeline loop.

    .venv/bin/python bench/contention.py [--rounds 3] [--seconds 8] [--batch 4]

The raw loop (bench/throughput.py's, all cores as torch threads) runs alone, then beside a
process that keeps a core busy for B ms of every 30 ms, alternating, per round. On a box
where the torch threads use every core, whatever else runs (a server's event loop, its
clients, a health prober) preempts one OpenMP thread and its partner waits at the next
barrier, so a disturbance costs more throughput than the CPU it takes. Images/s and the
loop's CPU per image; median (min-max) over rounds. Nothing is asserted.
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import sys
import time
from multiprocessing.synchronize import Event
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.loadgen import print_table  # noqa: E402
from bench.throughput import CORES, RawLoop, spread  # noqa: E402

PERIOD_MS = 30.0
BUSY_MS = (0.0, 1.0, 3.0)


def burn(busy_ms: float, stop: Event) -> None:
    """Spin ``busy_ms`` of every PERIOD_MS until ``stop`` is set."""
    while not stop.is_set():
        started = time.perf_counter()
        while time.perf_counter() - started < busy_ms / 1000:
            pass
        time.sleep(max(0.0, PERIOD_MS / 1000 - (time.perf_counter() - started)))


def measure_beside(raw: RawLoop, busy_ms: float, args: argparse.Namespace) -> tuple[
        float, float]:
    """(images/s, CPU s per image) of the raw loop beside a burner of ``busy_ms``."""
    context = multiprocessing.get_context("spawn")
    stop = context.Event()
    burner = context.Process(target=burn, args=(busy_ms, stop)) if busy_ms else None
    if burner is not None:
        burner.start()
    try:
        rate, _, cpu_per_image = raw.measure(CORES, args.batch, args.seconds)
    finally:
        stop.set()
        if burner is not None:
            burner.join(timeout=30)
    return rate, cpu_per_image


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=8.0)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--steps", type=int, default=4)
    args = parser.parse_args()
    found: dict[float, list[tuple[float, float]]] = {busy: [] for busy in BUSY_MS}
    raw = RawLoop(args.steps)
    try:
        for _ in range(args.rounds):
            for busy in BUSY_MS:
                found[busy].append(measure_beside(raw, busy, args))
    finally:
        raw.close()
    alone = [rate for rate, _ in found[0.0]]
    rows: list[list[object]] = []
    for busy, results in found.items():
        share = busy / PERIOD_MS / (os.cpu_count() or 1)
        rows.append([f"{busy:.0f} ms of {PERIOD_MS:.0f}", f"{100 * share:.1f}",
                     spread([rate for rate, _ in results]),
                     spread([rate / base for (rate, _), base in zip(results, alone, strict=True)]),
                     spread([cpu * 1000 for _, cpu in results], 0)])
    print(f"raw loop, batch {args.batch}, {CORES} torch threads, 64x64, {args.steps} steps, "
          f"{args.seconds:.0f} s windows, {args.rounds} round(s): median (min-max)")
    print_table(["beside a burner", "% of the machine", "images/s", "/ alone (same round)",
                 "loop CPU ms per image"], rows)


if __name__ == "__main__":
    main()
