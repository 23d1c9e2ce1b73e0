"""Queue, batching, deadlines, cancel and OOM handling, on the real demo pipeline."""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import torch

from app.contract.images import ImageGenerationRequest
from app.errors import (
    Cancelled,
    DeadlineExceeded,
    InferenceFailed,
    InvalidRequest,
    QueueFull,
    ServiceUnavailable,
)
from app.observability import metrics
from app.serving.admission import build_generation
from app.serving.engine import Engine, InferenceThread
from app.serving.generation import Generation
from app.serving.runner import ANSWERING_HORIZON_S, Runner
from app.settings import Settings
from tests.support.waiting import async_wait_until

# A batch wait no test could outlast: a call held for batch-mates would never start in time.
LONG_BATCH_WAIT_S = 600.0


def sample(metric: object, **labels: str) -> float:
    from prometheus_client import REGISTRY

    name = {metrics.CUDA_OOM: "cuda_oom_total", metrics.STEPS: "inference_steps_total"}.get(
        metric, "image_generation_total"  # type: ignore[call-overload]
    )
    found = REGISTRY.get_sample_value(name, labels or None)
    assert found is not None, f"no sample {name}{labels or ''}: a missing metric is not a 0"
    return found


@pytest.fixture
async def engine(demo_model_dir: Path) -> AsyncIterator[tuple[Engine, InferenceThread]]:
    settings = Settings(
        demo_model_dir=demo_model_dir, device="cpu", fault_injection=True, warmup=False,
        max_steps=1000,
        default_steps=2,
    )
    metrics.initialise_request_series()  # as the service does at startup
    engine = Engine(settings)
    thread = InferenceThread()
    await thread.run(engine.load)
    yield engine, thread
    engine.faults.release()
    thread.stop(timeout=10)


def make_runner(
    engine: tuple[Engine, InferenceThread], max_batch: int = 4, max_queue: int = 8,
    batch_wait_s: float = 0.02, on_died: object = None,
) -> Runner:
    runner = Runner(engine[0], engine[1], max_queue=max_queue, max_batch=max_batch,
                    batch_wait_s=batch_wait_s)
    runner.start(on_died)  # type: ignore[arg-type]
    return runner


def job(
    engine: tuple[Engine, InferenceThread], prompt: str = "a lighthouse", **fields: object
) -> Generation:
    body = ImageGenerationRequest.model_validate({"prompt": prompt, "size": "64x64", **fields})
    model = engine[0].model
    assert model is not None
    request_id = f"test-{time.monotonic_ns()}"
    return build_generation(body, engine[0].settings, model, request_id=request_id)


async def test_runner_two_compatible_requests_share_one_pipeline_call(engine) -> None:
    runner = make_runner(engine)
    steps_before = sample(metrics.STEPS)
    first, second = job(engine, seed=1), job(engine, seed=2)
    runner.submit(first)
    runner.submit(second)
    results = await asyncio.gather(first.future, second.future)
    assert [len(images) for images in results] == [1, 1]
    assert first.started_at == second.started_at  # dispatched as one batch
    # One call of 2 steps advances the step counter by 2, not 2 x 2.
    assert sample(metrics.STEPS) - steps_before == 2
    await runner.stop(Cancelled("test over"))


async def test_runner_incompatible_sizes_run_as_separate_calls(engine) -> None:
    runner = make_runner(engine)
    small = job(engine)
    other = job(engine, size="128x64")
    runner.submit(small)
    runner.submit(other)
    await asyncio.gather(small.future, other.future)
    assert small.started_at != other.started_at
    await runner.stop(Cancelled("test over"))


async def test_runner_batch_split_gives_each_request_the_images_of_its_own_seeds(
    engine,
) -> None:
    runner = make_runner(engine)
    batched = [job(engine, n=n, seed=10 * n) for n in (1, 2, 3)]
    for item in batched:
        runner.submit(item)
    results = await asyncio.gather(*(item.future for item in batched))
    assert len({item.started_at for item in batched}) == 1  # one pipeline call
    alone_runner = make_runner(engine, max_batch=1)
    references = {}
    for seed in (10, 20, 21, 30, 31, 32):
        single = job(engine, seed=seed)
        alone_runner.submit(single)
        references[seed] = pixels((await single.future)[0])
    for item, images in zip(batched, results, strict=True):
        for seed, image in zip(item.seeds, images, strict=True):
            distances = {other: (pixels(image) - ref).abs().max().item()
                         for other, ref in references.items()}
            # Its own seed's image, up to batched rounding; far from every other seed's.
            assert distances[seed] <= 2, (seed, distances)
            assert min(d for other, d in distances.items() if other != seed) > 20, distances
    await runner.stop(Cancelled("test over"))
    await alone_runner.stop(Cancelled("test over"))


def pixels(image: object) -> torch.Tensor:
    return torch.from_numpy(image).to(torch.int16)  # type: ignore[arg-type]


async def test_runner_batch_results_keep_request_order_and_seeds(engine) -> None:
    runner = make_runner(engine)
    jobs = [job(engine, n=n, seed=10 * n) for n in (1, 2, 3)]
    for item in jobs:
        runner.submit(item)
    results = await asyncio.gather(*(item.future for item in jobs))
    assert [len(images) for images in results] == [1, 2, 3]
    assert [item.seeds for item in jobs] == [[10], [20, 21], [30, 31, 32]]
    await runner.stop(Cancelled("test over"))


async def test_runner_full_queue_retry_after_tracks_the_real_wait(engine) -> None:
    # The engine's first call is cold (lazy set-up, far slower on a busy machine): spent on
    # a runner of its own, so the estimate below is timed on warm calls, as the wait is.
    cold = make_runner(engine)
    first = job(engine, num_inference_steps=2)
    cold.submit(first)
    await first.future
    await cold.stop(Cancelled("warmed up"))
    runner = make_runner(engine, max_batch=1, max_queue=2)
    # Steps slowed to >= 0.1 s each, so a busy CPU moves both durations alike.
    slow = "[[slow=0.1]] paced"
    calibration = job(engine, prompt=slow, num_inference_steps=10)
    runner.submit(calibration)
    await calibration.future  # the runner has now timed real steps on this machine
    long_jobs = [job(engine, prompt=slow, num_inference_steps=10) for _ in range(3)]
    runner.submit(long_jobs[0])
    await async_wait_until(lambda: long_jobs[0].steps_done > 0, 60, what="first job running")
    runner.submit(long_jobs[1])
    runner.submit(long_jobs[2])  # two wait: the queue is full
    rejected_before = sample(metrics.GENERATIONS, status="rejected", kind="generate")
    with pytest.raises(QueueFull) as caught:
        runner.submit(job(engine))
    refused_at = time.monotonic()
    estimate = caught.value.retry_after_s
    assert caught.value.status_code == 429
    assert sample(metrics.GENERATIONS, status="rejected", kind="generate") == rejected_before + 1
    await asyncio.gather(*(item.future for item in long_jobs))
    actual = time.monotonic() - refused_at  # when a request refused then could have started
    # Two queued jobs of 10 paced steps wait behind the running one; every paced step sleeps
    # at least 0.1 s, so an estimate made of measured steps is at least 2 s on any machine.
    assert estimate is not None and estimate >= 20 * 0.1, estimate
    # A relation between two durations of the same run (not a timing budget): the estimate
    # comes from measured step times, so it follows the real wait. The band is wide because
    # CI shares its cores: load that starts or stops between the calibration and the wait
    # moved the ratio to 0.39 and 3.0 in runs beside other suites.
    assert 0.25 * actual <= estimate <= 4.0 * actual, (estimate, actual)
    assert caught.value.headers()["Retry-After"] == str(max(1, math.ceil(estimate)))
    await runner.stop(Cancelled("test over"))


async def test_runner_deadline_passed_in_queue_never_reaches_pipeline(engine) -> None:
    runner = make_runner(engine, max_batch=1)
    blocker = job(engine, num_inference_steps=20)
    expired = job(engine)
    expired.deadline = time.monotonic() + 0.01
    runner.submit(blocker)
    runner.submit(expired)
    with pytest.raises(DeadlineExceeded):
        await expired.future
    assert expired.steps_done == 0 and expired.started_at is None
    await blocker.future
    await runner.stop(Cancelled("test over"))


async def test_runner_cancel_while_running_stops_at_next_step(engine) -> None:
    runner = make_runner(engine)
    long_job = job(engine, num_inference_steps=400)
    runner.submit(long_job)
    while long_job.steps_done < 3:
        await asyncio.sleep(0.01)
    runner.cancel(long_job, Cancelled("client went away"))
    with pytest.raises(Cancelled):
        await long_job.future
    # The step callback notices at the next step; the pipeline call then ends.
    await async_wait_until(lambda: not engine[0].progress.running, 60, what="run stopped")
    steps_at_stop = long_job.steps_done
    assert 3 <= steps_at_stop < 400
    await async_wait_until(lambda: runner.idle, 10, what="runner idle")
    assert long_job.steps_done == steps_at_stop  # nothing ran after the stop
    await runner.stop(Cancelled("test over"))


async def test_runner_cancel_while_queued_leaves_queue_at_once(engine) -> None:
    runner = make_runner(engine, max_batch=1)
    blocker, waiting = job(engine, num_inference_steps=20), job(engine)
    runner.submit(blocker)
    runner.submit(waiting)
    await async_wait_until(lambda: blocker.started_at is not None, 30, what="blocker running")
    assert waiting in runner.queue
    runner.cancel(waiting, Cancelled("client went away"))
    assert waiting not in runner.queue
    await blocker.future
    assert waiting.steps_done == 0
    await runner.stop(Cancelled("test over"))


async def test_runner_oom_in_batch_retries_each_request_alone(engine) -> None:
    runner = make_runner(engine)
    ooms_before = sample(metrics.CUDA_OOM)
    victim, mate = job(engine, prompt="[[oom-batch]] a cat"), job(engine, prompt="a dog")
    runner.submit(victim)
    runner.submit(mate)
    results = await asyncio.gather(victim.future, mate.future)
    assert [len(images) for images in results] == [1, 1]
    assert sample(metrics.CUDA_OOM) == ooms_before + 1
    await runner.stop(Cancelled("test over"))


async def test_runner_oom_alone_answers_503_and_keeps_serving(engine) -> None:
    runner = make_runner(engine)
    fits = job(engine)
    runner.submit(fits)
    await fits.future  # 64x64 has fit on this model, so a later OOM at 64x64 is the worker's
    doomed = job(engine, prompt="[[oom]] a cat")
    runner.submit(doomed)
    with pytest.raises(ServiceUnavailable) as caught:
        await doomed.future
    assert caught.value.code == "out_of_memory" and "Retry-After" in caught.value.headers()
    assert runner.failure_streak == 1
    healthy = job(engine)
    runner.submit(healthy)
    assert len(await healthy.future) == 1
    assert runner.failure_streak == 0
    await runner.stop(Cancelled("test over"))


async def test_runner_oom_of_request_larger_than_anything_fitted_is_not_the_workers_fault(
    engine,
) -> None:
    runner = make_runner(engine)
    fits = job(engine)  # 4096 pixels fit
    runner.submit(fits)
    await fits.future
    oversized = job(engine, prompt="[[oom]] two", n=2)  # 8192 pixels: never fitted here
    runner.submit(oversized)
    with pytest.raises(ServiceUnavailable):
        await oversized.future
    assert runner.failure_streak == 0  # a client cannot recycle the worker this way
    with pytest.raises(InvalidRequest) as refused:  # admission has learned the ceiling
        job(engine, n=2)
    assert refused.value.param == "n" and refused.value.code == "insufficient_gpu_memory"
    small = job(engine)
    runner.submit(small)
    assert len(await small.future) == 1
    await runner.stop(Cancelled("test over"))


async def test_runner_failed_batch_counts_once_in_the_failure_streak(engine) -> None:
    runner = make_runner(engine, batch_wait_s=0.2)
    batch = [job(engine, prompt=f"[[fail]] {index}") for index in range(4)]
    for item in batch:
        runner.submit(item)
    outcomes = await asyncio.gather(*(item.future for item in batch), return_exceptions=True)
    assert all(isinstance(outcome, InferenceFailed) for outcome in outcomes)
    assert len({item.started_at for item in batch}) == 1  # one dispatch, retried one by one
    assert runner.failure_streak == 1  # not 4: the streak counts dispatches
    lone = job(engine, prompt="[[fail]] alone")
    runner.submit(lone)
    with pytest.raises(InferenceFailed):
        await lone.future
    assert runner.failure_streak == 2
    await runner.stop(Cancelled("test over"))


async def test_runner_scheduler_crash_answers_everyone_and_reports_it(engine) -> None:
    reasons: list[str] = []
    runner = make_runner(engine, max_batch=1, on_died=reasons.append)
    crash, queued = job(engine, prompt="[[crash-scheduler]]"), job(engine)
    runner.submit(crash)
    runner.submit(queued)
    outcomes = await asyncio.gather(crash.future, queued.future, return_exceptions=True)
    assert all(isinstance(outcome, ServiceUnavailable) for outcome in outcomes)
    assert {outcome.code for outcome in outcomes} == {"scheduler_failed"}  # type: ignore[union-attr]
    assert reasons and "SchedulerCrash" in reasons[0]
    assert runner.scheduler_error is not None and not runner.accepting
    with pytest.raises(ServiceUnavailable):
        runner.submit(job(engine))
    await runner.stop(Cancelled("test over"))


async def test_runner_failing_request_spares_its_batch_mates(engine) -> None:
    runner = make_runner(engine)
    bad, good = job(engine, prompt="[[fail]] x"), job(engine, prompt="fine")
    runner.submit(bad)
    runner.submit(good)
    outcomes = await asyncio.gather(bad.future, good.future, return_exceptions=True)
    assert isinstance(outcomes[0], InferenceFailed)
    assert isinstance(outcomes[1], list) and len(outcomes[1]) == 1
    assert bad.started_at == good.started_at
    await runner.stop(Cancelled("test over"))


async def test_runner_draining_refuses_new_work_and_finishes_queued(engine) -> None:
    runner = make_runner(engine, max_batch=1)
    queued = [job(engine, num_inference_steps=5) for _ in range(3)]
    for item in queued:
        runner.submit(item)
    drain = asyncio.create_task(runner.drain(timeout_s=30))
    await asyncio.sleep(0)
    with pytest.raises(ServiceUnavailable):
        runner.submit(job(engine))
    assert await drain
    assert all(item.future.done() and not item.future.exception() for item in queued)
    await runner.stop(Cancelled("test over"))


async def test_runner_lone_client_with_nobody_being_answered_skips_the_batch_wait(
    engine,
) -> None:
    runner = make_runner(engine, batch_wait_s=LONG_BATCH_WAIT_S)
    for _ in range(2):  # a concurrency-1 client: the next request once the last is answered
        lone = job(engine)
        runner.submit(lone)
        assert await dispatched_without_holding(runner, lone)
        await lone.future
        runner.release(lone)
    await runner.stop(Cancelled("test over"))


async def dispatched_without_holding(runner: Runner, generation: Generation) -> bool:
    """Wait for ``generation``'s pipeline call to start; False if the runner held it for
    batch-mates first (a hold of ``LONG_BATCH_WAIT_S`` cannot end before the bound)."""
    held = []

    def started() -> bool:
        held.append(runner.holding)
        return generation.started_at is not None

    await async_wait_until(started, within_s=60, what="dispatch without a batch wait")
    return not any(held)


async def test_runner_arrival_while_another_is_answered_waits_and_shares_a_call(
    engine,
) -> None:
    runner = make_runner(engine, batch_wait_s=1.0)
    first = job(engine, seed=1)
    runner.submit(first)
    await first.future  # answered; its caller is still encoding: its client may come back
    second = job(engine, seed=2)
    runner.submit(second)
    await async_wait_until(lambda: runner.holding, within_s=5, what="the batch wait begun")
    third = job(engine, seed=3)
    runner.submit(third)
    await asyncio.gather(second.future, third.future)
    assert second.started_at == third.started_at  # one pipeline call
    assert second.queue_seconds() >= 0.9  # held for the batch wait, not dispatched alone
    await runner.stop(Cancelled("test over"))


async def test_runner_batch_wait_ends_as_soon_as_the_call_is_full(engine) -> None:
    runner = make_runner(engine, max_batch=2, batch_wait_s=30.0)
    first = job(engine, seed=1)
    runner.submit(first)
    await first.future  # being answered: the next arrival waits for company
    second = job(engine, seed=2)
    runner.submit(second)
    await async_wait_until(lambda: runner.holding, within_s=5, what="the batch wait begun")
    third = job(engine, seed=3)
    runner.submit(third)  # fills the call of 2: it starts now, not in 30 s
    await async_wait_until(lambda: second.started_at is not None, within_s=5,
                           what="dispatch of the full call")
    await asyncio.gather(second.future, third.future)
    assert second.started_at == third.started_at
    await runner.stop(Cancelled("test over"))


async def test_runner_unreleased_answer_stops_holding_calls_after_the_horizon(engine) -> None:
    runner = make_runner(engine, batch_wait_s=LONG_BATCH_WAIT_S)
    forgotten = job(engine)
    runner.submit(forgotten)
    await forgotten.future  # never released, as by a caller with a bug
    answered_at = time.monotonic()
    await async_wait_until(lambda: time.monotonic() - answered_at > ANSWERING_HORIZON_S,
                           within_s=ANSWERING_HORIZON_S + 1)
    later = job(engine)
    runner.submit(later)
    assert await dispatched_without_holding(runner, later)
    await later.future
    await runner.stop(Cancelled("test over"))


async def test_engine_same_seed_gives_same_pixels(engine) -> None:
    runner = make_runner(engine, max_batch=1)
    first, second = job(engine, seed=1234), job(engine, seed=1234)
    runner.submit(first)
    runner.submit(second)
    images_a, images_b = await asyncio.gather(first.future, second.future)
    assert images_a[0].tobytes() == images_b[0].tobytes()
    other = job(engine, seed=1235)
    runner.submit(other)
    assert (await other.future)[0].tobytes() != images_a[0].tobytes()
    await runner.stop(Cancelled("test over"))


@pytest.mark.parametrize("batch", [1, 2])
async def test_engine_deadline_passing_mid_run_stops_with_deadline_exceeded(
    engine, batch: int
) -> None:
    # The inference thread may notice a deadline before the loop's timer answers it; the
    # outcome is still the 504, never the 499 meant for a client that left.
    generations = [job(engine, "[[slow=0.05]] a fox", num_inference_steps=400)
                   for _ in range(batch)]
    for generation in generations:
        generation.deadline = time.monotonic() + 0.5
    outcomes = await engine[1].run(lambda: engine[0].run(generations))
    assert [type(outcome) for outcome in outcomes] == [DeadlineExceeded] * batch
    assert all(0 < generation.steps_done < 400 for generation in generations)
