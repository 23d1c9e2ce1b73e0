"""Fault scenarios against a real server: tests assert on them, bench/ prints them."""

from __future__ import annotations

import asyncio
import os
import signal
import time
from collections import Counter
from dataclasses import dataclass, field

import httpx

from tests.support.procnet import established_connections
from tests.support.server import RunningServer

GENERATE = "/v1/images/generations"
BODY = {"prompt": "load", "size": "64x64", "num_inference_steps": 4}
RETRYABLE = {429, 503}


@dataclass
class HealthSamples:
    latencies_s: dict[str, list[float]] = field(default_factory=dict)
    statuses: dict[str, Counter[int | str]] = field(default_factory=dict)

    def p99_ms(self, path: str) -> float:
        ordered = sorted(self.latencies_s.get(path, [0.0]))
        return ordered[min(len(ordered) - 1, int(0.99 * len(ordered)))] * 1000


@dataclass
class OverloadResult:
    offered_per_s: float
    capacity_per_s: float
    seconds: float
    statuses: Counter[int | str] = field(default_factory=Counter)
    missing_retry_after: int = 0
    health: HealthSamples = field(default_factory=HealthSamples)


async def _probe_health(base: str, stop: asyncio.Event, samples: HealthSamples) -> None:
    async with httpx.AsyncClient(timeout=5) as client:
        while not stop.is_set():
            for path in ("/health/live", "/health/ready"):
                sent = time.perf_counter()
                try:
                    status: int | str = (await client.get(base + path)).status_code
                except httpx.HTTPError as exc:
                    status = type(exc).__name__
                samples.latencies_s.setdefault(path, []).append(time.perf_counter() - sent)
                samples.statuses.setdefault(path, Counter())[status] += 1
            await asyncio.sleep(0.1)


async def measure_capacity(base: str, seconds: float = 4.0) -> float:
    """Images per second one client gets with requests back to back."""
    done = 0
    async with httpx.AsyncClient(timeout=60) as client:
        started = time.monotonic()
        while time.monotonic() - started < seconds:
            if (await client.post(base + GENERATE, json=BODY)).status_code == 200:
                done += 1
        return done / (time.monotonic() - started)


async def overload(server: RunningServer, factor: float, seconds: float) -> OverloadResult:
    """Offer ``factor`` x capacity, open loop, for ``seconds``; every answer is recorded."""
    capacity = await measure_capacity(server.url)
    rate = capacity * factor
    result = OverloadResult(offered_per_s=rate, capacity_per_s=capacity, seconds=seconds)
    stop = asyncio.Event()
    prober = asyncio.create_task(_probe_health(server.url, stop, result.health))
    limits = httpx.Limits(max_connections=400, max_keepalive_connections=50)
    async with httpx.AsyncClient(timeout=60, limits=limits) as client:

        async def one() -> None:
            try:
                response = await client.post(server.url + GENERATE, json=BODY)
            except httpx.HTTPError as exc:
                result.statuses[type(exc).__name__] += 1
                return
            result.statuses[response.status_code] += 1
            if response.status_code in RETRYABLE and "retry-after" not in response.headers:
                result.missing_retry_after += 1

        tasks = []
        started = time.monotonic()
        for index in range(int(rate * seconds)):  # bounded in count and, below, in time
            await asyncio.sleep(max(0.0, started + index / rate - time.monotonic()))
            tasks.append(asyncio.create_task(one()))
        await asyncio.wait_for(asyncio.gather(*tasks), timeout=120)
    stop.set()
    await prober
    return result


@dataclass
class CrashResult:
    victim_pid: int
    victim_held: int  # requests the killed worker had accepted and not answered
    seconds_to_ready: float
    statuses: Counter[int | str] = field(default_factory=Counter)

    @property
    def failed(self) -> int:
        return sum(count for status, count in self.statuses.items() if status != 200)


async def crash(
    server: RunningServer, clients: int, seconds: float, kill_after: float
) -> CrashResult:
    """Closed-loop load; SIGKILL one worker mid-way; time until a replacement is ready."""
    statuses: Counter[int | str] = Counter()
    stop_at = time.monotonic() + seconds

    async def client_loop() -> None:
        # A fresh connection per request: only requests really in flight can be lost.
        async with httpx.AsyncClient(timeout=60, headers={"connection": "close"}) as client:
            while time.monotonic() < stop_at:
                try:
                    statuses[(await client.post(server.url + GENERATE, json=BODY)).status_code] += 1
                except httpx.HTTPError as exc:
                    statuses[type(exc).__name__] += 1

    loops = [asyncio.create_task(client_loop()) for _ in range(clients)]
    await asyncio.sleep(kill_after)  # the load generator's schedule, not a wait on state
    before = server.worker_pids()
    victim = before[0]
    # Frozen first, so what it holds can be counted exactly: its open connections are its
    # accepted, unanswered requests (one request per connection).
    os.kill(victim, signal.SIGSTOP)
    held = established_connections(victim, server.port)
    os.kill(victim, signal.SIGKILL)
    killed_at = time.monotonic()
    ready_after = await asyncio.to_thread(_wait_replacement_ready, server, before, 60.0)
    ready_seconds = ready_after - killed_at
    await asyncio.gather(*loops)
    return CrashResult(victim, held, ready_seconds, statuses)


def _wait_replacement_ready(server: RunningServer, before: list[int], timeout: float) -> float:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        newcomers = set(server.worker_pids()) - set(before)
        if newcomers and newcomers <= server.ready_worker_pids():
            return time.monotonic()
        time.sleep(0.1)
    raise TimeoutError("no replacement worker became ready")
