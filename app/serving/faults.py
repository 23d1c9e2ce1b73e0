"""Test-only fault injection at the pipeline boundary.

With ``SLEEPWELL_FAULT_INJECTION=true`` a prompt may carry markers that make the pipeline
boundary misbehave the way a GPU would: ``[[oom]]`` raises CUDA OOM, ``[[oom-batch]]`` raises
it only when batched with others, ``[[fail]]`` raises a plain error, ``[[stall]]`` stops
making step progress (a hung kernel), ``[[slow=S]]`` sleeps S seconds per step (slow but
alive), ``[[crash-scheduler]]`` raises past every guard, as a bug in our own code would, and
kills the scheduler task. Off by default; markers are then ordinary prompt text.
"""

from __future__ import annotations

import re
import threading
from dataclasses import dataclass

import torch

_SLOW = re.compile(r"\[\[slow=(\d+(?:\.\d+)?)\]\]")
STALL_SECONDS = 3600.0


class SchedulerCrash(BaseException):
    """Injected: escapes ``except Exception`` everywhere, so the scheduler task dies of it."""


@dataclass(frozen=True)
class FaultPlan:
    oom: bool = False
    fail: bool = False
    stall: bool = False
    slow_step_s: float = 0.0
    crash_scheduler: bool = False

    @property
    def any(self) -> bool:
        return self.oom or self.fail or self.stall or self.slow_step_s > 0 or self.crash_scheduler


NO_FAULTS = FaultPlan()


def plan_for(prompts: list[str], requests_in_batch: int, enabled: bool) -> FaultPlan:
    if not enabled:
        return NO_FAULTS
    text = " ".join(prompts)
    slow = [float(value) for value in _SLOW.findall(text)]
    return FaultPlan(
        oom="[[oom]]" in text or ("[[oom-batch]]" in text and requests_in_batch > 1),
        fail="[[fail]]" in text,
        stall="[[stall]]" in text,
        slow_step_s=max(slow, default=0.0),
        crash_scheduler="[[crash-scheduler]]" in text,
    )


class FaultInjector:
    """Applies a plan: before the call (OOM, failure) and at each step (stall, slowness)."""

    def __init__(self) -> None:
        self._release = threading.Event()

    def before_call(self, plan: FaultPlan) -> None:
        if plan.crash_scheduler:
            raise SchedulerCrash("scheduler crash (injected by [[crash-scheduler]])")
        if plan.oom:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory (injected by [[oom]])")
        if plan.fail:
            raise RuntimeError("pipeline failure (injected by [[fail]])")

    def at_step(self, plan: FaultPlan) -> None:
        if plan.stall:
            self._release.wait(STALL_SECONDS)
        elif plan.slow_step_s > 0:
            self._release.wait(plan.slow_step_s)

    def release(self) -> None:
        """Unblock stalled steps so a worker that is shutting down can exit."""
        self._release.set()


class InjectedLoadFailure(RuntimeError):
    """Raised instead of loading the model in a slot named by the load-failure fault."""


def check_load_fault(enabled: bool, failing_slots: str | None, slot: int | None) -> None:
    """With fault injection on, make the model load fail in the listed worker slots."""
    if not enabled or not failing_slots or slot is None:
        return
    if str(slot) in {part.strip() for part in failing_slots.split(",")}:
        raise InjectedLoadFailure(f"model load failure injected for worker slot {slot}")
