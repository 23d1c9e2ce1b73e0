"""The worker's health as an explicit state, and the three views of it the API serves.

Every check reads facts that are already in memory (heartbeat, load status, last GPU probe),
so health answers in microseconds however busy the GPU is, and never raises.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from app import __version__
from app.serving.engine import Engine
from app.serving.gpu import GpuSnapshot
from app.serving.runner import Runner
from app.settings import Settings


class WorkerState(StrEnum):
    STARTING = "starting"  # model loading or warming up
    READY = "ready"  # idle, can take work
    BUSY = "busy"  # generating, steps progressing
    DEGRADED = "degraded"  # failure streak or failed GPU probe: alive but not trusted
    DRAINING = "draining"  # shutting down, finishing what it has
    FAILED = "failed"  # model could not be loaded
    STALLED = "stalled"  # a generation stopped making step progress: about to be replaced


SERVING_STATES = frozenset({WorkerState.READY, WorkerState.BUSY})


@dataclass
class HealthFacts:
    started_at: float = field(default_factory=time.monotonic)
    started_at_wall: float = field(default_factory=time.time)
    loading: bool = True
    load_error: str | None = None
    draining: bool = False
    gpu: GpuSnapshot | None = None  # None: CPU deployment, not applicable
    gpu_required: bool = False
    last_error: str | None = None
    swap_error: str | None = None
    model_mismatch: str | None = None  # a swap this worker could not apply yet
    # Why the served model is the one served: configured, or published by an operator when.
    model_origin: str | None = None
    # Set once this worker knows it cannot serve again and is on its way out (stalled,
    # scheduler dead, model failed to load); sticky, so no probe sees it alive meanwhile.
    fatal: str | None = None
    fatal_state: WorkerState = WorkerState.FAILED

    def mark_fatal(self, reason: str, state: WorkerState = WorkerState.FAILED) -> None:
        self.fatal, self.fatal_state, self.last_error = reason, state, reason


class Health:
    def __init__(self, settings: Settings, engine: Engine, runner: Runner) -> None:
        self.settings = settings
        self.engine = engine
        self.runner = runner
        self.facts = HealthFacts()

    def stalled(self) -> bool:
        return self.engine.progress.seconds_since_progress() > self.settings.stall_timeout_s

    def state(self) -> WorkerState:
        if self.facts.fatal is not None:
            return self.facts.fatal_state
        if self.stalled():
            return WorkerState.STALLED
        if self.facts.draining:
            return WorkerState.DRAINING
        if self.facts.load_error is not None:
            return WorkerState.FAILED
        if self.facts.loading or self.engine.model is None:
            return WorkerState.STARTING
        if self.unready_reasons():
            return WorkerState.DEGRADED
        return WorkerState.BUSY if self.engine.progress.running else WorkerState.READY

    def unready_reasons(self) -> list[str]:
        facts = self.facts
        reasons: list[str] = []
        if facts.fatal is not None and facts.fatal != facts.load_error:
            reasons.append(f"worker is being replaced: {facts.fatal}")
        if facts.load_error is not None:
            reasons.append(f"model failed to load: {facts.load_error}")
        elif facts.loading or self.engine.model is None:
            reasons.append("model is loading")
        if facts.draining:
            reasons.append("worker is draining")
        if self.stalled():
            reasons.append(self._stall_reason())
        streak, limit = self.runner.failure_streak, self.settings.failure_streak_limit
        if streak >= limit:
            reasons.append(f"{streak} consecutive inference failures (limit {limit})")
        if facts.model_mismatch is not None:
            reasons.append(f"model mismatch: {facts.model_mismatch}")
        if facts.gpu is not None and not facts.gpu.ok:
            reasons.append(facts.gpu.error or "GPU probe failed")
        return reasons

    def _stall_reason(self) -> str:
        silent = self.engine.progress.seconds_since_progress()
        limit = self.settings.stall_timeout_s
        return f"no denoising step completed for {silent:.1f}s (stall timeout {limit:g}s)"

    def liveness(self) -> tuple[bool, dict[str, Any]]:
        """Not alive when stalled, or when the worker has decided to replace itself.

        A graceful drain stays alive: a probe must never kill work that is finishing.
        """
        pid = os.getpid()
        if self.facts.fatal is not None:
            return False, {"status": self.facts.fatal_state.value, "reason": self.facts.fatal,
                           "pid": pid}
        if self.stalled():
            return False, {"status": "stalled", "reason": self._stall_reason(), "pid": pid}
        return True, {"status": "alive", "state": self.state().value, "pid": pid}

    def readiness(self) -> tuple[bool, dict[str, Any]]:
        reasons = self.unready_reasons()
        body: dict[str, Any] = {"status": "ready" if not reasons else "unready"}
        body["state"] = self.state().value
        if reasons:
            body["reasons"] = reasons
        return not reasons, body

    def report(self) -> tuple[bool, dict[str, Any]]:
        """The deep report, in the widely used {status, checks, gpu_memory} shape.

        ``status`` is "healthy", "unhealthy" (503: this worker cannot serve images) or
        "degraded" (200: images serve, something else does not: see ``with_jobs``).
        """
        reasons = self.unready_reasons()
        gpu = self.facts.gpu
        gpu_check = None if gpu is None and not self.facts.gpu_required else bool(gpu and gpu.ok)
        model = self.engine.model
        healthy = not reasons and gpu_check is not False and self.runner.scheduler_error is None
        body = {
            "status": "healthy" if healthy else "unhealthy",
            "checks": {"api": True, "model": model is not None and not self.facts.loading,
                       "scheduler": self.runner.scheduler_error is None, "gpu": gpu_check},
            "gpu_memory": gpu.memory_report() if gpu is not None and gpu.ok else None,
            "state": self.state().value,
            "reasons": reasons,
            "uptime_s": round(time.monotonic() - self.facts.started_at, 3),
            "model": model.name if model else self.settings.served_model_name,
            "model_source": model.source if model else None,
            "model_origin": self.facts.model_origin,
            "device": str(model.device) if model else None,
            "version": __version__,
            "queue_depth": len(self.runner.queue),
            "inflight": len(self.runner.inflight),
            "failure_streak": self.runner.failure_streak,
            "last_error": self.facts.last_error or self.facts.load_error,
            "last_swap_error": self.facts.swap_error,
            # torch_threads: as the inference thread last set it (adaptive: cores / busy
            # workers); cores: those this process may use (affinity, CPU quota).
            "worker": {"pid": os.getpid(), "slot": self.settings.worker_slot,
                       "torch_threads": self.engine.torch_threads,
                       "cores": self.engine.cores},
        }
        return healthy, body


def with_jobs(healthy: bool, body: dict[str, Any], available: bool,
              error: str | None) -> dict[str, Any]:
    """Add the jobs check to a deep report. A jobs outage never fails it (HTTP 200: the image
    API does not need the database, and /health/ready stays green), but a healthy worker
    whose jobs cannot run is "degraded", with the reason, never "healthy"."""
    body["checks"]["jobs"] = available
    if not available:
        reason = error or "not connected yet"
        body["jobs_error"] = reason
        body["reasons"] = [*body["reasons"], f"jobs unavailable: {reason}"]
        if healthy:
            body["status"] = "degraded"
    return body
