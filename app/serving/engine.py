"""The inference thread and everything that runs on it: loading and pipeline calls.

The pipeline is touched only by this thread, so the event loop never blocks on the model
and no lock is needed around it. Failures are turned into per-request outcomes here, so one
bad request or an OOM never takes its batch-mates down with it.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import torch

from app.errors import Cancelled, InferenceFailed, ServiceUnavailable, SleepwellError
from app.observability import metrics
from app.serving.cpu_share import adaptive_share
from app.serving.encoding import to_uint8
from app.serving.faults import FaultInjector, FaultPlan, check_load_fault, plan_for
from app.serving.generation import Generation, deadline_exceeded
from app.serving.host_limits import usable_cores
from app.serving.model import LoadedModel, load_model, vram_budget
from app.serving.outcomes import Outcome
from app.serving.pipelines import plan_call
from app.serving.previews import Previewer, pipeline_inputs
from app.serving.usage import note_text_tokens
from app.settings import Settings

logger = logging.getLogger("sleepwell.engine")
T = TypeVar("T")


class GenerationInterrupted(Exception):
    """Raised from the step callback when every request in the batch was abandoned."""


@dataclass
class Progress:
    """Heartbeat of the inference thread, read by health checks on the loop."""

    running: bool = False
    run_started_at: float = 0.0
    last_step_at: float = 0.0
    steps_in_run: int = 0

    def start(self) -> None:
        now = time.monotonic()
        self.run_started_at = self.last_step_at = now
        self.steps_in_run = 0
        self.running = True

    def step(self) -> None:
        self.last_step_at = time.monotonic()
        self.steps_in_run += 1

    def stop(self) -> None:
        self.running = False

    def seconds_since_progress(self) -> float:
        return time.monotonic() - self.last_step_at if self.running else 0.0


class InferenceThread:
    """One dedicated daemon thread. Daemon, so a hung kernel cannot block process exit."""

    def __init__(self, name: str = "sleepwell-inference") -> None:
        self._tasks: queue.SimpleQueue[Callable[[], None] | None] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._loop, name=name, daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        while (task := self._tasks.get()) is not None:
            task()

    def run(self, fn: Callable[[], T]) -> asyncio.Future[T]:
        loop = asyncio.get_running_loop()
        future: asyncio.Future[T] = loop.create_future()

        def settle(value: T | None, error: BaseException | None) -> None:
            if future.done():
                return
            if error is not None:
                future.set_exception(error)
            else:
                future.set_result(value)  # type: ignore[arg-type]

        def task() -> None:
            try:
                value = fn()
            except BaseException as exc:  # handed to the awaiting coroutine
                loop.call_soon_threadsafe(settle, None, exc)
            else:
                loop.call_soon_threadsafe(settle, value, None)

        self._tasks.put(task)
        return future

    def stop(self, timeout: float) -> bool:
        """Ask the thread to finish; True if it did within ``timeout``."""
        self._tasks.put(None)
        self._thread.join(timeout)
        return not self._thread.is_alive()


class Engine:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.progress = Progress()
        self.faults = FaultInjector()
        self.previewer = Previewer(settings.preview_decoder)  # partial images
        self.model: LoadedModel | None = None
        # Cores this process may use (affinity, CPU quota), and torch's thread count as the
        # inference thread last read it: OpenMP's count belongs to the thread that sets it.
        self.cores = usable_cores(settings.cgroup_root)
        self.torch_threads: int | None = None
        self.cpu_share = adaptive_share(settings, self.cores, self._set_torch_threads)

    def load(self, settings: Settings | None = None) -> LoadedModel:
        settings = settings or self.settings
        model = load_model(settings)
        # Injected after the load, as a real failure (a bad file, a CUDA error) comes late.
        check_load_fault(settings.fault_injection, settings.fault_load_failure_slots,
                         settings.worker_slot)
        self.previewer.decoder(model)  # a bad SLEEPWELL_PREVIEW_DECODER fails the start
        self.model = model
        self.torch_threads = torch.get_num_threads()  # as loading left it, on this thread
        return self.model

    def _set_torch_threads(self, threads: int) -> None:
        """On the inference thread (a pipeline call or a step): take ``threads`` for torch."""
        torch.set_num_threads(threads)
        self.torch_threads = torch.get_num_threads()

    def install(self, model: LoadedModel) -> str | None:
        """Swap the serving model; the old one's name. On the inference thread: never mid-batch.

        The old model is dropped here, before the new budget is measured, so the memory it
        held counts as free: a budget measured beside it would stay too small for good.
        """
        old_name = self.model.name if self.model is not None else None
        self.model = model
        gc.collect()
        model.budget.vram_bytes = vram_budget(self.settings, model.device)
        return old_name

    def warmup_seconds_per_step(self) -> float | None:
        return self.model.warmup_seconds_per_step if self.model is not None else None

    def run(self, generations: list[Generation]) -> list[Outcome]:
        """Run a batch; if a merged batch fails for any reason, run its requests one by one."""
        try:
            if len(generations) == 1:
                return [self._run_alone(generations[0])]
            try:
                return self._call(generations)
            except GenerationInterrupted:
                return [_stopped(generation) for generation in generations]
            except torch.cuda.OutOfMemoryError as exc:
                self._after_oom(exc, generations)
            except Exception as exc:
                logger.warning("batch of %d failed (%s); retrying one by one", len(generations),
                               exc)
            return [self._run_alone(generation) for generation in generations]
        finally:
            self.progress.stop()

    def _run_alone(self, generation: Generation) -> Outcome:
        if generation.abandoned():
            return _stopped(generation)
        try:
            return self._call([generation])[0]
        except GenerationInterrupted:
            return _stopped(generation)
        except torch.cuda.OutOfMemoryError as exc:
            self._after_oom(exc, [generation])
            return _oom_error()
        except Exception as exc:
            return self._failed(generation, exc)

    def _failed(self, generation: Generation, exc: Exception) -> SleepwellError:
        logger.error("generation failed request_id=%s", generation.request_id, exc_info=exc)
        return InferenceFailed(
            f"The generation failed on the server (request id {generation.request_id})."
        )

    def _after_oom(self, exc: BaseException, generations: list[Generation]) -> None:
        metrics.CUDA_OOM.inc()
        ids = ",".join(generation.request_id for generation in generations)
        logger.warning(
            "CUDA out of memory in a batch of %d (request_ids=%s): %s", len(generations), ids, exc
        )
        if torch.cuda.is_available():
            torch.cuda.empty_cache()

    def _call(self, generations: list[Generation]) -> list[Outcome]:
        assert self.model is not None, "run() before load()"
        prompts = [generation.prompt for generation in generations for _ in generation.seeds]
        plan = plan_for(prompts, len(generations), self.settings.fault_injection)
        self.progress.start()
        note_text_tokens(self.model.pipeline, generations)  # usage; why here: serving/usage.py
        self.faults.before_call(plan)
        started = time.monotonic()
        for generation in generations:
            generation.started_at = generation.started_at or started
        if self.cpu_share is not None:
            self.cpu_share.begin()
        try:
            pixels = self._denoise(generations, prompts, plan)
        finally:
            if self.cpu_share is not None:
                self.cpu_share.end()
        self.model.budget.record_success(sum(g.pixels for g in generations))
        return _split(list(pixels), generations)

    def _denoise(self, generations: list[Generation], prompts: list[str],
                 plan: FaultPlan) -> Any:
        assert self.model is not None, "run() before load()"
        params = generations[0].params
        call = plan_call(self.model.pipeline, generations)  # edits: app/serving/pipelines.py
        if call.unchanged:
            return call.passthrough()
        with torch.inference_mode():
            output = call.pipeline(
                prompt=prompts,
                negative_prompt=_negative_prompts(generations),
                **call.kwargs,
                num_inference_steps=params.steps,
                guidance_scale=params.guidance_scale,
                # CPU generators: the same seed gives the same noise on any device.
                generator=[torch.Generator("cpu").manual_seed(s)
                           for g in generations for s in g.seeds],
                # Tensors, not PIL: PIL and encoding run in the encode pool, off this thread.
                output_type="pt",
                callback_on_step_end=self._step_callback(generations, plan),
                **pipeline_inputs(generations),  # partial images: app/serving/previews.py
            )
            return call.finish(to_uint8(output.images))

    def _step_callback(self, generations: list[Generation], plan: FaultPlan) -> Callable[..., Any]:
        def on_step_end(pipe: Any, step: int, _timestep: Any, kwargs: dict[str, Any]) -> Any:
            if plan.any:
                self.faults.at_step(plan)
            if self.cpu_share is not None:
                self.cpu_share.adjust()
            self.progress.step()
            metrics.STEPS.inc()
            for generation in generations:
                generation.steps_done += 1
            if all(generation.abandoned() for generation in generations):
                raise GenerationInterrupted
            self.previewer.after_step(self.model, generations, pipe, step, kwargs)
            return kwargs

        return on_step_end


def _negative_prompts(generations: list[Generation]) -> list[str] | None:
    if all(generation.negative_prompt is None for generation in generations):
        return None
    return [g.negative_prompt or "" for g in generations for _ in g.seeds]


def _split(images: list[Any], generations: list[Generation]) -> list[Outcome]:
    finished = time.monotonic()
    outcomes: list[Outcome] = []
    offset = 0
    for generation in generations:
        outcomes.append(images[offset : offset + generation.image_count])
        offset += generation.image_count
        generation.finished_at = finished
    return outcomes


def _stopped(generation: Generation) -> SleepwellError:
    """Why an abandoned generation stopped. Past its deadline it is a 504, whichever thread
    notices first: the loop's timer may fire a little after this thread's step check."""
    if not generation.future.done() and time.monotonic() >= generation.deadline:
        return deadline_exceeded(generation)
    return Cancelled("generation stopped: nobody is waiting for it")


def _oom_error() -> SleepwellError:
    return ServiceUnavailable(
        "The GPU ran out of memory for this request; try again shortly or ask for fewer or "
        "smaller images.",
        code="out_of_memory",
        retry_after_s=5,
    )
