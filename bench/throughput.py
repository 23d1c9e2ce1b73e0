"""Throughput: the pipeline called directly vs served over HTTP, and batching on vs off.

    .venv/bin/python bench/throughput.py [--steps 4] [--seconds 20]

Same work everywhere: 64x64 images, --steps denoising steps, the demo model, CPU.
Prints one table; nothing is asserted.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from app.serving.gunicorn_support import cpu_threads_per_worker  # noqa: E402
from app.settings import Settings  # noqa: E402
from bench.loadgen import print_table, run_load  # noqa: E402
from tests.support.server import DEMO_MODEL_DIR, gunicorn_server  # noqa: E402


def direct_images_per_s(steps: int, seconds: float, threads: int | None) -> float:
    """(a) The pipeline in a plain loop, loaded through the service's own loader."""
    import torch

    from app.serving.demo_model import ensure_demo_model
    from app.serving.model import load_model

    ensure_demo_model(DEMO_MODEL_DIR)
    model = load_model(Settings(demo_model_dir=DEMO_MODEL_DIR, device="cpu",
                                torch_threads=threads))
    images, seed = 0, 0
    started = time.monotonic()
    while time.monotonic() - started < seconds:
        with torch.inference_mode():
            model.pipeline(prompt="bench", width=64, height=64, num_inference_steps=steps,
                           generator=[torch.Generator("cpu").manual_seed(seed)])
        images += 1
        seed += 1
    return images / (time.monotonic() - started)


def served(steps: int, seconds: float, concurrency: int, max_batch: int) -> list[object]:
    """(b)/(c) One gunicorn worker, loaded by ``concurrency`` clients."""
    env = {"SLEEPWELL_MAX_BATCH_SIZE": str(max_batch), "SLEEPWELL_MAX_QUEUE": "64",
           "SLEEPWELL_LOG_LEVEL": "warning"}
    body = {"prompt": "bench", "size": "64x64", "num_inference_steps": steps}
    with gunicorn_server(env) as server:
        url = server.url + "/v1/images/generations"
        asyncio.run(run_load(url, body, concurrency, concurrency * 2, 30))  # warm
        result = asyncio.run(run_load(url, body, concurrency, 10_000, seconds))
    return [concurrency, max_batch, f"{result.images_per_s:.2f}",
            f"{result.p50 * 1000:.0f}", f"{result.percentile(0.99) * 1000:.0f}",
            dict(result.statuses)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--seconds", type=float, default=20.0)
    args = parser.parse_args()

    import torch

    default_threads = torch.get_num_threads()
    served_threads = cpu_threads_per_worker(1)
    rows: list[list[object]] = []
    direct = 0.0
    for threads in sorted({default_threads, served_threads}, reverse=True):
        rate = direct_images_per_s(args.steps, args.seconds, threads)
        rows.append([f"(a) direct loop, {threads} torch threads", "-", "-", f"{rate:.2f}", "-",
                     "-", "-", "-"])
        direct = max(direct, rate)
    default_batch = Settings.model_fields["max_batch_size"].default
    for label, concurrency, batch in (
        ("(b) HTTP, 1 worker, defaults", 1, default_batch),
        ("(b) HTTP, 1 worker, defaults", 8, default_batch),
        ("(c) HTTP, batching off", 8, 1),
    ):
        row = served(args.steps, args.seconds, concurrency, batch)
        ratio = float(str(row[2])) / direct
        rows.append([label, *row[:2], *row[2:], f"{ratio:.2f}"])
    print(f"\n64x64, {args.steps} steps, demo model, CPU, {args.seconds:.0f}s per row; served "
          f"with {served_threads} torch thread(s) per worker; 'vs (a)' divides by the best (a)")
    print_table(["scenario", "concurrency", "max batch", "images/s", "p50 ms", "p99 ms",
                 "statuses", "vs (a)"], rows)


if __name__ == "__main__":
    main()
