"""One worker's service: the engine, its thread, the runner, health, and background tasks.

``create_app``'s lifespan owns exactly one of these; start() and stop() bracket every
resource it holds. Shutdown has two doors, both answering every request before the process
goes: SIGTERM (a deploy, gunicorn stopping us) drains within the grace period and answers
what is left with 503; a fault that makes this worker useless (a stall, a dead scheduler, a
model that will not load) answers everything at once and exits so gunicorn replaces us.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sys
from typing import Any

import torch

from app import __version__
from app.contract.images import WorkKind
from app.errors import ServiceUnavailable, SleepwellError
from app.observability import metrics
from app.serving import gpu
from app.serving.desired_model import DesiredModelBackend, DesiredModelStore
from app.serving.encoding import Encoder
from app.serving.engine import Engine, InferenceThread
from app.serving.health import SERVING_STATES, Health, WorkerState
from app.serving.lifecycle import LoadFailureLog, exit_for_replacement
from app.serving.model import LoadedModel
from app.serving.model_swap import ModelSwapper, record_failed_load
from app.serving.runner import Runner
from app.settings import DeviceChoice, Settings

logger = logging.getLogger("sleepwell.service")
_WATCHDOG_PERIOD_S = 0.25
_GIL_SWITCH_INTERVAL_S = 0.001
_RECONCILE_PERIOD_S = 1.0
# Answers to leftovers must be written before gunicorn's SIGKILL at the end of the grace.
_ANSWER_MARGIN_S = 2.0
# A broken worker has nothing left to finish: exit this soon even if its thread is wedged.
_FATAL_EXIT_DEADLINE_S = 5.0


class Service:
    def __init__(
        self, settings: Settings, desired_models: DesiredModelBackend | None = None
    ) -> None:
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
            settings, self.engine, self.thread,
            desired_models or DesiredModelStore(settings.state_dir), self.health.facts,
        )
        self.load_failures = LoadFailureLog(settings.state_dir, settings.worker_slot)
        self.encoder = Encoder(settings.encode_threads)
        self._tasks: list[asyncio.Task[Any]] = []
        self._waiters_released = asyncio.Event()  # the model loaded, or waiting is pointless
        self._waiting_for_load = 0
        self._shutdown: asyncio.Task[None] | None = None

    @property
    def model_name(self) -> str:
        model = self.engine.model
        return model.name if model is not None else self.settings.served_model_name

    async def wait_started(self) -> LoadedModel | None:
        """The model once the start-up load has ended; None if it failed or a drain began."""
        await self._waiters_released.wait()
        return self.engine.model

    # --- lifecycle --------------------------------------------------------------------
    async def start(self) -> None:
        # The inference thread holds the GIL through the pipeline's Python code; a 1 ms
        # switch interval (default 5 ms) lets health checks in sooner under load.
        sys.setswitchinterval(_GIL_SWITCH_INTERVAL_S)
        metrics.initialise_request_series()
        metrics.MODEL_READY.set(0)
        self.runner.start(on_died=self._scheduler_died)
        reconcile = self.swapper.reconcile_forever(_RECONCILE_PERIOD_S)
        for coroutine in (self._load(), self._watch(), reconcile):
            self._tasks.append(asyncio.create_task(coroutine))

    def request_shutdown(self) -> None:
        """SIGTERM, scheduled onto the loop: drain, then answer what is left. Idempotent."""
        if self._shutdown is None:
            self._shutdown = asyncio.create_task(self._drain_then_answer(), name="drain")

    async def _drain_then_answer(self) -> None:
        self.begin_drain()
        budget = self.settings.graceful_timeout_s
        budget -= min(_ANSWER_MARGIN_S, budget / 4)
        if await self.runner.drain(budget):
            return
        answered = await self.runner.stop(ServiceUnavailable(
            "The server is shutting down; retry and another worker will answer.",
            code="shutting_down", retry_after_s=1,
        ))
        logger.warning("grace period over: answered %d unfinished requests with 503", answered)

    async def stop(self) -> None:
        """Lifespan shutdown: uvicorn has already waited for the answers to be written."""
        self.request_shutdown()
        assert self._shutdown is not None
        await self._shutdown
        await self.runner.stop(ServiceUnavailable(
            "The server is shutting down.", code="shutting_down", retry_after_s=1
        ))
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self.engine.faults.release()
        self.encoder.close()
        # A wedged thread (a hung kernel) never ends; it is a daemon, so do not wait long.
        join_s = 0.5 if self.health.facts.fatal else 5.0
        if not self.thread.stop(timeout=join_s):
            logger.error("inference thread did not stop; exiting without it")
        metrics.MODEL_READY.set(0)

    def begin_drain(self) -> None:
        """Readiness turns 503 at once and no new work is admitted."""
        if not self.health.facts.draining:
            logger.info("draining: refusing new work, finishing %d queued and %d running",
                        len(self.runner.queue), len(self.runner.inflight))
        self.health.facts.draining = True
        self.runner.accepting = False
        self._waiters_released.set()  # requests held for the load: answer them now
        metrics.MODEL_READY.set(0)

    def shed_connection(self) -> bool:
        """Whether this response should end its keep-alive connection.

        A keep-alive client stays on the worker that accepted it: 8 pooled connections
        were seen all on one of 2 workers while the other idled (bench/throughput.py).
        While other requests run or queue here, closing makes the client reconnect, and a
        sibling with less to do is the likelier to accept. (The queue alone is no sign: the
        scheduler has already moved it onto the inference thread by the time this answer
        is built.) One worker has nobody to hand over to.
        """
        if (self.settings.workers or 1) <= 1 or not (self.runner.queue or self.runner.inflight):
            return False
        metrics.CONNECTIONS_SHED.inc()
        return True

    async def serving_model(
        self, arrived_at: float, requested: str | None = None, *, kind: WorkKind
    ) -> LoadedModel:
        """The model to run a new request of ``kind`` on; while loading, wait a little for
        it. A refusal here is counted under ``kind``."""
        if self.health.state() is WorkerState.STARTING:
            await self._wait_for_load()
        state = self.health.state()
        model = self.engine.model
        if model is None or state in (WorkerState.DRAINING, WorkerState.STALLED,
                                      WorkerState.FAILED):
            self.runner.refuse(self._not_serving(state), arrived_at, kind)
        if requested is not None and requested != model.name and (
                requested == await self.swapper.pending_model_name()):
            self.runner.refuse(ServiceUnavailable(
                f"This worker is still switching to '{requested}'; retry in a moment.",
                code="model_switching", retry_after_s=2,
            ), arrived_at, kind)
        return model

    def _not_serving(self, state: WorkerState) -> SleepwellError:
        reasons = "; ".join(self.health.unready_reasons()) or state.value
        codes = {WorkerState.STARTING: "model_loading", WorkerState.DRAINING: "draining",
                 WorkerState.STALLED: "worker_stalled"}
        code = codes.get(state, "model_load_failed")
        if state is WorkerState.FAILED and self.runner.scheduler_error is not None:
            code = "scheduler_failed"
        return ServiceUnavailable(
            f"The model is not ready to serve: {reasons}.", code=code,
            retry_after_s=1 if state is WorkerState.DRAINING else 5,
        )

    async def _wait_for_load(self) -> None:
        # A freshly (re)spawned worker shares the listening socket and gets connections at
        # once; holding them briefly beats bouncing them with 503 while the model loads.
        # Bounded in time (SLEEPWELL_LOAD_WAIT_S) and in number (SLEEPWELL_MAX_QUEUE).
        if self._waiting_for_load >= self.settings.max_queue:
            return
        self._waiting_for_load += 1
        try:
            await asyncio.wait_for(self._waiters_released.wait(), self.settings.load_wait_s)
        except TimeoutError:
            pass
        finally:
            self._waiting_for_load -= 1

    # --- background tasks -------------------------------------------------------------
    async def _load(self) -> None:
        facts = self.health.facts
        try:
            # The published model if any; it falling back to ours is not a failure here.
            model = await self.swapper.load_at_start(self._load_on_thread)
        except Exception as exc:
            self._load_failed(exc)
        else:
            self.load_failures.clear()
            metrics.MODEL_LOAD_SECONDS.set(model.load_seconds)
            metrics.BUILD_INFO.labels(version=__version__, model=model.name).set(1)
            logger.info("model %s ready on %s in %.2fs", model.name, model.device,
                        model.load_seconds)
            if model.device.type == "cuda":
                self.health.facts.gpu_required = True
                self._tasks.append(asyncio.create_task(self._monitor_gpu(model.device)))
        finally:
            facts.loading = False
            self._waiters_released.set()

    async def _load_on_thread(self, settings: Settings) -> LoadedModel:
        return await self.thread.run(lambda: self.engine.load(settings))

    def _load_failed(self, exc: BaseException) -> None:
        reason = record_failed_load(exc, f"configured model {self.settings.served_model_name!r}")
        self.health.facts.load_error = reason
        if self.settings.worker_slot is None:
            return  # not under gunicorn: nobody would respawn us; stay up, unready
        # Under gunicorn a failed worker leaves the rotation: its siblings take the traffic,
        # and the master respawns this slot with a backoff (gunicorn.conf.py).
        self.load_failures.record(reason)
        self._become_fatal(f"model failed to load: {reason}")

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
        while not self.health.facts.fatal:
            state = self.health.state()
            metrics.MODEL_READY.set(1 if state in SERVING_STATES else 0)
            if state is WorkerState.STALLED and self.settings.exit_on_stall:
                await self._replace_stalled_worker()
                return
            if self._failure_streak_reached() and self.settings.recycle_on_failure_streak:
                self._recycle()
                return
            await asyncio.sleep(_WATCHDOG_PERIOD_S)
        metrics.MODEL_READY.set(0)

    def _failure_streak_reached(self) -> bool:
        return self.runner.failure_streak >= self.settings.failure_streak_limit

    def _recycle(self) -> None:
        """A fresh process gets a fresh CUDA context: drain, exit, let gunicorn respawn."""
        streak = self.runner.failure_streak
        self.health.facts.last_error = f"{streak} consecutive failures; recycling the worker"
        logger.error("recycling worker after %d consecutive failed dispatches", streak)
        self.begin_drain()
        exit_for_replacement(self.settings.graceful_timeout_s + 5)

    async def _replace_stalled_worker(self) -> None:
        reasons = "; ".join(self.health.unready_reasons())
        logger.critical("worker stalled (%s); answering its requests and exiting", reasons)
        # Sticky: liveness stays 503 from now until the process is gone.
        self.health.facts.mark_fatal(reasons, WorkerState.STALLED)
        answered = await self.runner.stop(ServiceUnavailable(
            "The worker running this request stopped making progress and is being replaced.",
            code="worker_stalled", retry_after_s=5,
        ))
        logger.critical("answered %d requests of the stalled worker with 503", answered)
        # Keep reporting the stall for a moment (probes, scrapes), then let gunicorn respawn.
        await asyncio.sleep(self.settings.stall_exit_delay_s)
        self.engine.faults.release()
        exit_for_replacement(_FATAL_EXIT_DEADLINE_S)

    def _scheduler_died(self, reason: str) -> None:
        self._become_fatal(f"the scheduler task died: {reason}")

    def _become_fatal(self, reason: str) -> None:
        """This worker cannot serve any more: unready and not alive, answer all, exit."""
        self.health.facts.mark_fatal(reason)
        self.runner.accepting = False
        self._waiters_released.set()
        metrics.MODEL_READY.set(0)
        self.engine.faults.release()
        exit_for_replacement(_FATAL_EXIT_DEADLINE_S)
