"""The bounded queue and the one task that owns it: admission, batching, dispatch, settling.

Everything here runs on the event loop; only ``Engine.run`` runs on the inference thread.
A generation's future is settled in exactly one place (``settle``), which is also where its final
status is counted, so every request gets one answer and one metric.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from collections import deque
from typing import Any

from app.errors import (
    Cancelled,
    DeadlineExceeded,
    InferenceFailed,
    QueueFull,
    ServiceUnavailable,
    SleepwellError,
)
from app.observability import metrics
from app.serving.engine import Engine, InferenceThread, Outcome
from app.serving.generation import Generation

logger = logging.getLogger("sleepwell.runner")

_DEFAULT_RUN_SECONDS = 2.0
_EWMA_WEIGHT = 0.3


# Refusals that cost no GPU time and say nothing about the worker's health.
_REJECTIONS = {"queue_full", "draining", "shutting_down"}


def status_of(outcome: Outcome) -> str:
    """The image_generation_total status of a request's final answer."""
    if not isinstance(outcome, SleepwellError):
        return "success"
    if isinstance(outcome, DeadlineExceeded):
        return "timeout"
    if isinstance(outcome, Cancelled):
        return "cancelled"
    return "rejected" if outcome.code in _REJECTIONS else "failed"  # OOM, stall, errors


class Runner:
    def __init__(
        self, engine: Engine, thread: InferenceThread, *, max_queue: int, max_batch: int,
        batch_wait_s: float,
    ) -> None:
        self.engine = engine
        self.thread = thread
        self.max_queue = max_queue
        self.max_batch = max_batch
        self.batch_wait_s = batch_wait_s
        self.queue: deque[Generation] = deque()
        self.inflight: list[Generation] = []
        self.accepting = True
        self.failure_streak = 0
        self._run_seconds = _DEFAULT_RUN_SECONDS
        self._wakeup = asyncio.Event()
        self._idle = asyncio.Event()
        self._idle.set()
        self._task: asyncio.Task[None] | None = None

    # --- admission --------------------------------------------------------------------
    def submit(self, generation: Generation) -> None:
        if not self.accepting:
            self._reject(ServiceUnavailable(
                "This worker is shutting down; retry and another will answer.",
                code="draining", retry_after_s=1,
            ))
        if len(self.queue) >= self.max_queue:
            self._reject(QueueFull(
                f"The queue is full ({self.max_queue} requests waiting); retry later.",
                retry_after_s=self.estimated_wait_s(),
            ))
        self.queue.append(generation)
        self._idle.clear()
        metrics.QUEUE_DEPTH.inc()
        self._wakeup.set()

    def _reject(self, error: SleepwellError) -> None:
        metrics.GENERATIONS.labels(status=status_of(error)).inc()
        raise error

    def estimated_wait_s(self) -> float:
        """Seconds until a new request would start, from the real recent run times."""
        batches_ahead = math.ceil((len(self.queue) + 1) / self.max_batch)
        running = 1 if self.inflight else 0
        return max(1.0, (batches_ahead + running) * self._run_seconds)

    def spare_capacity(self) -> int:
        """Free slots of the next pipeline call: what background work (jobs) may fill
        without making a waiting request wait longer. 0 while not accepting."""
        if not self.accepting:
            return 0
        return max(0, self.max_batch - len(self.queue) - len(self.inflight))

    def cancel(self, generation: Generation, reason: SleepwellError) -> None:
        """Answer ``generation`` with ``reason`` now; if queued, it leaves the queue at once."""
        if generation in self.queue:
            self.queue.remove(generation)
            metrics.QUEUE_DEPTH.dec()
            self._note_if_idle()
        self.settle(generation, reason)

    def settle(self, generation: Generation, outcome: Outcome) -> None:
        if generation.future.done():
            return
        status = status_of(outcome)
        metrics.GENERATIONS.labels(status=status).inc()
        if isinstance(outcome, SleepwellError):
            generation.future.set_exception(outcome)
        else:
            metrics.IMAGES.inc(len(outcome))
            metrics.LATENCY.observe(time.monotonic() - generation.arrived_at)
            generation.future.set_result(outcome)
        if status == "success":
            self.failure_streak = 0
        elif status == "failed":
            self.failure_streak += 1

    # --- the scheduler task -----------------------------------------------------------
    def start(self) -> None:
        self._task = asyncio.create_task(self._schedule_forever(), name="sleepwell-scheduler")

    async def _schedule_forever(self) -> None:
        while True:
            batch = await self._next_batch()
            if batch:
                await self._execute(batch)
            self._note_if_idle()

    async def _next_batch(self) -> list[Generation]:
        while not self._drop_abandoned():
            self._wakeup.clear()
            await self._wakeup.wait()
        key = self.queue[0].params.batch_key
        if self.max_batch > 1 and self.batch_wait_s > 0 and self._compatible(key) < self.max_batch:
            # A short wait lets concurrent arrivals share this call instead of queueing behind it.
            await asyncio.sleep(self.batch_wait_s)
            self._drop_abandoned()
        return self._take(key) if self.queue else []

    def _compatible(self, key: tuple[Any, ...]) -> int:
        return sum(1 for generation in self.queue if generation.params.batch_key == key)

    def _take(self, key: tuple[Any, ...]) -> list[Generation]:
        batch = [g for g in self.queue if g.params.batch_key == key][: self.max_batch]
        for generation in batch:
            self.queue.remove(generation)
        metrics.QUEUE_DEPTH.dec(len(batch))
        return batch

    def _drop_abandoned(self) -> bool:
        """Answer queued generations whose deadline passed; True if any generation is left."""
        now = time.monotonic()
        for generation in [g for g in self.queue if g.future.done() or now >= g.deadline]:
            self.cancel(generation, deadline_exceeded(generation))
        return bool(self.queue)

    async def _execute(self, batch: list[Generation]) -> None:
        dispatched = time.monotonic()
        for generation in batch:
            generation.started_at = dispatched
            metrics.QUEUE_WAIT.observe(dispatched - generation.arrived_at)
        metrics.BATCH_SIZE.observe(len(batch))
        metrics.INFLIGHT.inc(len(batch))
        self.inflight = batch
        try:
            outcomes = await self.thread.run(lambda: self.engine.run(batch))
        except Exception:
            logger.exception("inference thread raised outside the engine's guard")
            outcomes = [InferenceFailed("The generation failed on the server.")] * len(batch)
        finally:
            self.inflight = []
            metrics.INFLIGHT.dec(len(batch))
        elapsed = time.monotonic() - dispatched
        self._run_seconds += _EWMA_WEIGHT * (elapsed - self._run_seconds)
        for generation, outcome in zip(batch, outcomes, strict=True):
            self.settle(generation, outcome)

    # --- lifecycle --------------------------------------------------------------------
    def _note_if_idle(self) -> None:
        if not self.queue and not self.inflight:
            self._idle.set()

    async def drain(self, timeout_s: float) -> bool:
        """Stop admitting; let queued and running work finish. True if it all did."""
        self.accepting = False
        try:
            await asyncio.wait_for(self._idle.wait(), timeout_s)
        except TimeoutError:
            return False
        return True

    async def stop(self, reason: SleepwellError) -> None:
        """Answer everything still waiting with ``reason`` and stop the scheduler."""
        self.accepting = False
        for generation in [*self.queue, *self.inflight]:
            self.cancel(generation, reason)
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task


def deadline_exceeded(generation: Generation) -> DeadlineExceeded:
    """The one answer for a request whose deadline passed, queued or running."""
    return DeadlineExceeded(
        f"The request did not finish within {generation.deadline - generation.arrived_at:.0f}s "
        "(SLEEPWELL_REQUEST_TIMEOUT_S)."
    )
