"""One worker's service: the engine, its thread, the runner, health, and background tasks.

``create_app``'s lifespan owns exactly one of these; start() and stop() bracket every
resource it holds.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import sys
import threading
from typing import Any

import torch

from app import __version__
from app.errors import ServiceUnavailable, SleepwellError
from app.observability import metrics
from app.serving import gpu
from app.serving.engine import Engine, InferenceThread
from app.serving.health import SERVING_STATES, Health, WorkerState
from app.serving.model import LoadedModel
from app.serving.model_swap import DesiredModelStore, ModelSwapper
from app.serving.runner import Runner
from app.settings import DeviceChoice, Settings

logger = logging.getLogger("sleepwell.service")
_WATCHDOG_PERIOD_S = 0.5
_GIL_SWITCH_INTERVAL_S = 0.001
_RECONCILE_PERIOD_S = 1.0


class Service:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.engine = Engine(settings)
        self.thread = InferenceThread()
        self.runner = Runner(
            self.engine,
            self.thread,
            max_queue=settings.max_queue,
            max_batch=settings.max_batch_size,
            batch_wait_s=settings.batch_wait_ms / 1000,
        )
        self.health = Health(settings, self.engine, self.runner)
        self.health.facts.gpu_required = settings.device is DeviceChoice.CUDA
        self.swapper = ModelSwapper(
            settings, self.engine, self.thread, DesiredModelStore(settings.state_dir),
            self.health.facts,
        )
        self._tasks: list[asyncio.Task[Any]] = []
        self._loaded = asyncio.Event()
        self._waiting_for_load = 0

    @property
    def model_name(self) -> str:
        model = self.engine.model
        return model.name if model is not None else self.settings.served_model_name

    # --- lifecycle --------------------------------------------------------------------
    async def start(self) -> None:
        # The inference thread holds the GIL through the pipeline's Python code; a 1 ms
        # switch interval (default 5 ms) lets health checks in sooner under load.
        sys.setswitchinterval(_GIL_SWITCH_INTERVAL_S)
        metrics.initialise_request_series()
        metrics.MODEL_READY.set(0)
        self.runner.start()
        reconcile = self.swapper.reconcile_forever(_RECONCILE_PERIOD_S)
        for coroutine in (self._load(), self._watch(), reconcile):
            self._tasks.append(asyncio.create_task(coroutine))

    async def stop(self) -> None:
        self.begin_drain()
        drained = await self.runner.drain(self.settings.graceful_timeout_s)
        if not drained:
            logger.warning("grace period over with work left; answering it with 503")
        shutting_down = ServiceUnavailable(
            "The server is shutting down.", code="shutting_down", retry_after_s=1
        )
        await self.runner.stop(shutting_down)
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self.engine.faults.release()
        if not self.thread.stop(timeout=5.0):
            logger.error("inference thread did not stop; exiting without it")
        metrics.MODEL_READY.set(0)

    def begin_drain(self) -> None:
        """Readiness turns 503 at once and no new work is admitted."""
        if not self.health.facts.draining:
            logger.info("draining: refusing new work, finishing %d queued and %d running",
                        len(self.runner.queue), len(self.runner.inflight))
        self.health.facts.draining = True
        self.runner.accepting = False
        metrics.MODEL_READY.set(0)

    async def serving_model(self) -> LoadedModel:
        """The model to run a new request on; while loading, wait a little for it."""
        if self.health.state() is WorkerState.STARTING:
            await self._wait_for_load()
        state = self.health.state()
        model = self.engine.model
        if model is not None and state not in (WorkerState.DRAINING, WorkerState.STALLED):
            return model
        reasons = "; ".join(self.health.unready_reasons()) or state.value
        code = {WorkerState.STARTING: "model_loading", WorkerState.FAILED: "model_load_failed"}
        metrics.GENERATIONS.labels(status="rejected").inc()
        raise ServiceUnavailable(
            f"The model is not ready to serve: {reasons}.",
            code=code.get(state, state.value),
            retry_after_s=30 if state is WorkerState.FAILED else 5,
        )

    async def _wait_for_load(self) -> None:
        # A freshly (re)spawned worker shares the listening socket and gets connections at
        # once; holding them briefly beats bouncing them with 503 while the model loads.
        # Bounded in time (SLEEPWELL_LOAD_WAIT_S) and in number (SLEEPWELL_MAX_QUEUE).
        if self._waiting_for_load >= self.settings.max_queue:
            return
        self._waiting_for_load += 1
        try:
            await asyncio.wait_for(self._loaded.wait(), self.settings.load_wait_s)
        except TimeoutError:
            pass
        finally:
            self._waiting_for_load -= 1

    # --- background tasks -------------------------------------------------------------
    async def _load(self) -> None:
        facts = self.health.facts
        try:
            settings = self.swapper.startup_settings()
            model = await self.thread.run(lambda: self.engine.load(settings))
        except SleepwellError as exc:
            facts.load_error = exc.message
            logger.error("model load failed: %s", exc.message)
        except Exception as exc:
            facts.load_error = f"{type(exc).__name__}: {exc}"
            logger.exception("model load failed")
        else:
            metrics.MODEL_LOAD_SECONDS.set(model.load_seconds)
            metrics.BUILD_INFO.labels(version=__version__, model=model.name).set(1)
            logger.info("model %s ready on %s in %.2fs", model.name, model.device,
                        model.load_seconds)
            if model.device.type == "cuda":
                self.health.facts.gpu_required = True
                self._tasks.append(asyncio.create_task(self._monitor_gpu(model.device)))
        finally:
            facts.loading = False
            self._loaded.set()

    async def _monitor_gpu(self, device: torch.device) -> None:
        index = gpu.physical_index(self.settings.cuda_visible_devices)
        label = str(index if index is not None else self.settings.cuda_visible_devices)
        while True:
            try:
                snapshot = await asyncio.wait_for(
                    asyncio.to_thread(gpu.probe, device, index),
                    self.settings.health_check_timeout_s * 4,
                )
            except TimeoutError:
                snapshot = gpu.GpuSnapshot(ok=False, error="GPU probe timed out")
            self.health.facts.gpu = snapshot
            gpu.publish(snapshot, label)
            await asyncio.sleep(self.settings.gpu_probe_interval_s)

    async def _watch(self) -> None:
        """Keep model_ready true to health, and replace this worker if it is stalled."""
        while True:
            state = self.health.state()
            metrics.MODEL_READY.set(1 if state in SERVING_STATES else 0)
            if state is WorkerState.STALLED and self.settings.exit_on_stall:
                await self._replace_stalled_worker()
                return
            if self._failure_streak_reached() and self.settings.recycle_on_failure_streak:
                self._recycle()
                return
            await asyncio.sleep(_WATCHDOG_PERIOD_S)

    def _failure_streak_reached(self) -> bool:
        return self.runner.failure_streak >= self.settings.failure_streak_limit

    def _recycle(self) -> None:
        """A fresh process gets a fresh CUDA context: drain, exit, let gunicorn respawn."""
        streak = self.runner.failure_streak
        self.health.facts.last_error = f"{streak} consecutive failures; recycling the worker"
        logger.error("recycling worker after %d consecutive failures", streak)
        self.begin_drain()
        self._exit_for_replacement()

    async def _replace_stalled_worker(self) -> None:
        reason = self.health.unready_reasons()
        logger.critical("worker stalled (%s); answering its requests and exiting", reason)
        self.health.facts.last_error = "; ".join(reason)
        await self.runner.stop(ServiceUnavailable(
            "The worker running this request stopped making progress and is being replaced.",
            code="worker_stalled", retry_after_s=5,
        ))
        # Keep reporting the stall on /health/live for a moment, then let gunicorn respawn us.
        await asyncio.sleep(self.settings.stall_exit_delay_s)
        self.engine.faults.release()
        self._exit_for_replacement()

    def _exit_for_replacement(self) -> None:
        """Shut down gracefully (SIGTERM to ourselves) so gunicorn spawns a fresh worker.

        A timer backs it up: a wedged inference thread must never keep this process alive.
        """
        timer = threading.Timer(self.settings.graceful_timeout_s + 5, os._exit, args=(70,))
        timer.daemon = True
        timer.start()
        os.kill(os.getpid(), signal.SIGTERM)
