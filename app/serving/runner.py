"""The bounded queue and the one task that owns it: admission, batching, dispatch, settling.

Everything here runs on the event loop; only ``Engine.run`` runs on the inference thread.
A generation's future is settled in exactly one place (``settle``), which is also where its
final status is counted; a request refused before it is queued is counted by ``refuse``.
So every request gets one answer and one count.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import Callable
from typing import Any, NoReturn

from app.contract.images import WorkKind
from app.errors import (
    InferenceFailed,
    QueueFull,
    ServiceUnavailable,
    SleepwellError,
)
from app.observability import metrics
from app.serving.engine import Engine, InferenceThread
from app.serving.generation import Generation, deadline_exceeded
from app.serving.outcomes import Outcome, count_answer, status_of
from app.serving.streak import FailureStreak

logger = logging.getLogger("sleepwell.runner")

_EWMA_WEIGHT = 0.3
# Used only until the first real call (or the warm-up) has been timed.
_UNMEASURED_SECONDS_PER_STEP = 0.5
# An answered request that was never released (a caller that forgot) stops counting as
# "being answered" after this long, so the set cannot grow and the wait cannot stick.
ANSWERING_HORIZON_S = 1.0

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
        self.streak = FailureStreak()
        self.seconds_per_step: float | None = None  # measured, per pipeline call
        self.scheduler_error: str | None = None
        # Settled generations whose caller is still encoding or sending the answer: their
        # clients are the likeliest next arrivals, so they are what a batch wait waits for.
        self._answering: dict[Generation, float] = {}
        self._wakeup = asyncio.Event()
        self._idle = asyncio.Event()
        self._idle.set()
        self._task: asyncio.Task[None] | None = None
        self._stopping = False
        self.holding = False  # a call with room is waiting for batch-mates right now

    @property
    def failure_streak(self) -> int:
        return self.streak.count

    # --- admission --------------------------------------------------------------------
    def submit(self, generation: Generation) -> None:
        if not self.accepting:
            self.refuse(ServiceUnavailable(
                "This worker is shutting down; retry and another will answer.",
                code="draining", retry_after_s=1,
            ), generation.arrived_at, generation.params.kind)
        if len(self.queue) >= self.max_queue:
            self.refuse(QueueFull(
                f"The queue is full ({self.max_queue} requests waiting); retry later.",
                retry_after_s=self.estimated_wait_s(),
            ), generation.arrived_at, generation.params.kind)
        self.queue.append(generation)
        self._idle.clear()
        metrics.QUEUE_DEPTH.inc()
        self._wakeup.set()

    def refuse(self, error: SleepwellError, arrived_at: float, kind: WorkKind) -> NoReturn:
        """Count and raise the answer for a request that never entered the queue."""
        count_answer(kind, status_of(error), time.monotonic() - arrived_at)
        raise error

    def estimated_wait_s(self) -> float:
        """Seconds until a request arriving now would start, from measured step times.

        The running call's remaining steps, then each call the queue ahead will make
        (compatible requests share calls of up to ``max_batch``).
        """
        per_step = self.seconds_per_step or self.engine.warmup_seconds_per_step()
        per_step = per_step or _UNMEASURED_SECONDS_PER_STEP
        steps = 0
        if self.inflight:
            steps += max(0, self.inflight[0].params.denoising_steps - self.inflight[0].steps_done)
        queued = list(self.queue)
        for start in range(0, len(queued), self.max_batch):
            steps += max(g.params.denoising_steps for g in queued[start : start + self.max_batch])
        return steps * per_step

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
            metrics.QUEUE_WAIT.labels(outcome="abandoned", kind=generation.params.kind.value
                                      ).observe(generation.queue_seconds())
        self.settle(generation, reason)
        self._note_if_idle()

    def settle(self, generation: Generation, outcome: Outcome) -> None:
        if generation.future.done():
            return
        status = status_of(outcome)
        elapsed = time.monotonic() - generation.arrived_at
        images = 0 if isinstance(outcome, SleepwellError) else len(outcome)
        count_answer(generation.params.kind, status, elapsed, images)
        if isinstance(outcome, SleepwellError):
            generation.future.set_exception(outcome)
        else:
            generation.future.set_result(outcome)
        self._answering[generation] = time.monotonic()

    def release(self, generation: Generation) -> None:
        """The caller has built its answer to ``generation`` (sync, stream or job)."""
        self._answering.pop(generation, None)

    # --- the scheduler task -----------------------------------------------------------
    def start(self, on_died: Callable[[str], None] | None = None) -> None:
        """Start the scheduler; ``on_died`` hears why if it ever ends on its own."""
        self._task = asyncio.create_task(self._schedule_forever(), name="sleepwell-scheduler")
        self._task.add_done_callback(lambda task: self._scheduler_done(task, on_died))

    def _scheduler_done(
        self, task: asyncio.Task[None], on_died: Callable[[str], None] | None
    ) -> None:
        if self._stopping or task.cancelled():
            return  # stopped on purpose, or the loop itself is closing
        error = task.exception()
        self.scheduler_error = f"{type(error).__name__}: {error}" if error else "it returned"
        logger.critical("the scheduler task died (%s); no request can run on this worker",
                        self.scheduler_error, exc_info=error)
        self.accepting = False
        self._answer_all(ServiceUnavailable(
            "The worker's scheduler failed; it is being replaced. Retry shortly.",
            code="scheduler_failed", retry_after_s=5,
        ))
        if on_died is not None:
            on_died(self.scheduler_error)

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
        if self._worth_waiting(key):
            await self._gather_company(key)
        return self._take(key) if self.queue else []

    async def _gather_company(self, key: tuple[Any, ...]) -> None:
        """Hold the call until it is full or ``batch_wait_s`` has passed, whichever is first."""
        deadline = time.monotonic() + self.batch_wait_s
        self.holding = True
        try:
            while self.queue and self._compatible(key) < self.max_batch:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                self._wakeup.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wakeup.wait(), remaining)
        finally:
            self.holding = False
        self._drop_abandoned()

    def _worth_waiting(self, key: tuple[Any, ...]) -> bool:
        """Whether to hold a call that has room for ``batch_wait_s`` for more arrivals.

        Only while another request is still being answered: its client is likely to send
        the next one now, and sharing the call beats queueing behind it. A lone client
        (concurrency 1) would otherwise pay the wait on every call for nothing.
        """
        if self.max_batch <= 1 or self.batch_wait_s <= 0:
            return False
        if self._compatible(key) >= self.max_batch:
            return False
        horizon = time.monotonic() - ANSWERING_HORIZON_S
        for generation, settled_at in list(self._answering.items()):
            if settled_at < horizon:
                del self._answering[generation]
        return bool(self._answering)

    def _compatible(self, key: tuple[Any, ...]) -> int:
        return sum(1 for generation in self.queue if generation.params.batch_key == key)

    def _take(self, key: tuple[Any, ...]) -> list[Generation]:
        batch = [g for g in self.queue if g.params.batch_key == key][: self.max_batch]
        for generation in batch:
            self.queue.remove(generation)
        metrics.QUEUE_DEPTH.dec(len(batch))
        return batch

    def _drop_abandoned(self) -> bool:
        """Answer queued generations whose deadline passed; True if any is left."""
        now = time.monotonic()
        for generation in [g for g in self.queue if g.future.done() or now >= g.deadline]:
            self.cancel(generation, deadline_exceeded(generation))
        return bool(self.queue)

    async def _execute(self, batch: list[Generation]) -> None:
        dispatched = time.monotonic()
        kind = batch[0].params.kind.value  # one kind per call: it is part of the batch key
        for generation in batch:
            generation.started_at = dispatched
            metrics.QUEUE_WAIT.labels(outcome="dispatched", kind=kind).observe(
                generation.queue_seconds())
        metrics.BATCH_SIZE.labels(kind=kind).observe(len(batch))
        metrics.INFLIGHT.inc(len(batch))
        self.inflight = batch
        try:
            outcomes = await self.thread.run(lambda: self.engine.run(batch))
        except Exception:
            logger.exception("inference thread raised outside the engine's guard")
            outcomes = [InferenceFailed("The generation failed on the server.")] * len(batch)
        finally:
            metrics.INFLIGHT.dec(len(batch))
        # Cleared only here: if anything else escaped, the batch stays in ``inflight`` for
        # the scheduler's done-callback to answer.
        self.inflight = []
        self._measure(batch, time.monotonic() - dispatched)
        model = self.engine.model
        if model is not None:
            self.streak.record(batch, outcomes, model.budget)
        for generation, outcome in zip(batch, outcomes, strict=True):
            self.settle(generation, outcome)

    def _measure(self, batch: list[Generation], elapsed: float) -> None:
        steps = max(generation.steps_done for generation in batch)
        if steps <= 0:
            return  # stopped before its first step: says nothing about speed
        sample = elapsed / steps
        previous = self.seconds_per_step
        self.seconds_per_step = sample if previous is None else (
            previous + _EWMA_WEIGHT * (sample - previous)
        )

    # --- lifecycle --------------------------------------------------------------------
    def _note_if_idle(self) -> None:
        if not self.queue and not self.inflight:
            self._idle.set()

    @property
    def idle(self) -> bool:
        return self._idle.is_set()

    async def drain(self, timeout_s: float) -> bool:
        """Stop admitting; let queued and running work finish. True if it all did."""
        self.accepting = False
        try:
            await asyncio.wait_for(self._idle.wait(), max(0.0, timeout_s))
        except TimeoutError:
            return False
        return True

    def _answer_all(self, reason: SleepwellError) -> int:
        """Answer every queued and running generation with ``reason``; how many there were."""
        waiting = [*self.queue, *self.inflight]
        for generation in waiting:
            self.cancel(generation, reason)
        self._idle.set()
        return len(waiting)

    async def stop(self, reason: SleepwellError) -> int:
        """Answer everything still waiting with ``reason`` and stop the scheduler."""
        self.accepting = False
        self._stopping = True
        answered = self._answer_all(reason)
        if self._task is not None and not self._task.done():  # a dead one was reported
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        return answered
