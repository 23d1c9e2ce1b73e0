"""A small bounded HTTP load generator shared by the bench scripts (loopback only)."""

from __future__ import annotations

import asyncio
import re
import statistics
import time
from collections import Counter
from dataclasses import dataclass, field

import httpx

_TOTAL = re.compile(r"\btotal;dur=([\d.]+)")


@dataclass
class LoadResult:
    seconds: float
    latencies: list[float] = field(default_factory=list)
    statuses: Counter[int | str] = field(default_factory=Counter)
    images: int = 0
    # Server-Timing "total" of each 200 answer (s): the server's side of its latency.
    server_totals: list[float] = field(default_factory=list)

    @property
    def images_per_s(self) -> float:
        return self.images / self.seconds if self.seconds else 0.0

    def percentile(self, q: float) -> float:
        if not self.latencies:
            return float("nan")
        ordered = sorted(self.latencies)
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))]

    @property
    def p50(self) -> float:
        return statistics.median(self.latencies) if self.latencies else float("nan")


async def run_load(
    url: str, body: dict[str, object], concurrency: int, requests: int, max_seconds: float,
    request_timeout_s: float = 120.0,
) -> LoadResult:
    """Send ``requests`` POSTs with ``concurrency`` in flight; stop early at ``max_seconds``."""
    remaining = iter(range(requests))
    started = time.monotonic()
    stop_at = started + max_seconds
    result = LoadResult(seconds=0.0)
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(timeout=request_timeout_s, limits=limits) as client:

        async def worker() -> None:
            for _ in remaining:
                if time.monotonic() > stop_at:
                    return
                sent = time.monotonic()
                try:
                    response = await client.post(url, json=body)
                except httpx.HTTPError as exc:
                    result.statuses[type(exc).__name__] += 1
                    continue
                result.statuses[response.status_code] += 1
                if response.status_code == 200:
                    result.latencies.append(time.monotonic() - sent)
                    result.images += len(response.json()["data"])
                    total = _TOTAL.search(response.headers.get("server-timing", ""))
                    if total:
                        result.server_totals.append(float(total.group(1)) / 1000)

        await asyncio.gather(*(worker() for _ in range(concurrency)))
    result.seconds = time.monotonic() - started
    return result


def print_table(headers: list[str], rows: list[list[object]]) -> None:
    cells = [list(headers)] + [[str(cell) for cell in row] for row in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    for index, row in enumerate(cells):
        print(" | ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)))
        if index == 0:
            print("-+-".join("-" * width for width in widths))
