"""What each middleware costs on a trivial request (GET /v1/models), in-process.

    .venv/bin/python bench/middleware_cost.py [--requests 3000] [--runs 3]

The real app from ``create_app`` with the demo model loaded, called through
``httpx.ASGITransport`` (no sockets, so only our code and Starlette's are measured), once
with every middleware, then without each one in turn, then with none. Logging is on, at
info, into /dev/null: the access line is written and formatted as in production. Each
figure is microseconds per request, median of ``--runs`` runs (min-max).
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import statistics
import sys
import time
from pathlib import Path
from typing import TextIO

import httpx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from app.main import create_app  # noqa: E402
from app.settings import Settings  # noqa: E402
from bench.loadgen import print_table  # noqa: E402

SETTINGS = Settings(device="cpu", log_level="info", jobs_enabled=False)


def middleware_names() -> list[str]:
    return [m.cls.__name__ for m in create_app(SETTINGS).user_middleware]  # type: ignore[attr-defined]


async def per_request_us(without: set[str], requests: int, devnull: TextIO) -> float:
    app = create_app(SETTINGS)
    app.user_middleware = [m for m in app.user_middleware
                           if m.cls.__name__ not in without]  # type: ignore[attr-defined]
    for handler in logging.getLogger("sleepwell").handlers:
        if isinstance(handler, logging.StreamHandler):
            handler.setStream(devnull)
    async with app.router.lifespan_context(app):
        service = app.state.service
        while service.engine.model is None:  # the model loads in the background
            await asyncio.sleep(0.05)
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://bench") as client:
            for _ in range(200):  # warm
                await client.get("/v1/models")
            started = time.perf_counter()
            for _ in range(requests):
                response = await client.get("/v1/models")
            elapsed = time.perf_counter() - started
            assert response.status_code == 200
    return elapsed / requests * 1e6


def measure(without: set[str], requests: int, runs: int) -> tuple[str, float]:
    with open(os.devnull, "w") as devnull:
        values = [asyncio.run(per_request_us(without, requests, devnull)) for _ in range(runs)]
    median = statistics.median(values)
    return f"{median:.0f} ({min(values):.0f}-{max(values):.0f})", median


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--requests", type=int, default=3000)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    names = middleware_names()
    shown, full = measure(set(), args.requests, args.runs)
    rows: list[list[object]] = [["all middleware", shown, "-"]]
    for name in names:
        shown, value = measure({name}, args.requests, args.runs)
        rows.append([f"without {name}", shown, f"{full - value:.0f}"])
    shown, value = measure(set(names), args.requests, args.runs)
    rows.append(["no middleware", shown, f"{full - value:.0f}"])
    print(f"GET /v1/models in-process, {args.requests} requests x {args.runs} runs")
    print_table(["stack", "us per request: median (min-max)", "cost us"], rows)


if __name__ == "__main__":
    main()
