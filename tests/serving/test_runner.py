"""Queue, batching, deadlines, cancel and OOM handling, on the real demo pipeline."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from app.api.schemas import ImageGenerationRequest
from app.errors import (
    Cancelled,
    DeadlineExceeded,
    InferenceFailed,
    QueueFull,
    ServiceUnavailable,
)
from app.observability import metrics
from app.serving.admission import build_generation
from app.serving.engine import Engine, InferenceThread
from app.serving.generation import Generation
from app.serving.runner import Runner
from app.settings import Settings


def sample(metric: object, **labels: str) -> float:
    from prometheus_client import REGISTRY

    name = {metrics.CUDA_OOM: "cuda_oom_total", metrics.STEPS: "inference_steps_total"}.get(
        metric, "image_generation_total"  # type: ignore[call-overload]
    )
    return REGISTRY.get_sample_value(name, labels or None) or 0.0


@pytest.fixture
async def engine(demo_model_dir: Path) -> AsyncIterator[tuple[Engine, InferenceThread]]:
    settings = Settings(
        demo_model_dir=demo_model_dir, device="cpu", fault_injection=True, warmup=False,
        max_steps=1000,
        default_steps=2,
    )
    engine = Engine(settings)
    thread = InferenceThread()
    await thread.run(engine.load)
    yield engine, thread
    engine.faults.release()
    thread.stop(timeout=10)


def make_runner(
    engine: tuple[Engine, InferenceThread], max_batch: int = 4, max_queue: int = 8,
    batch_wait_s: float = 0.02,
) -> Runner:
    runner = Runner(engine[0], engine[1], max_queue=max_queue, max_batch=max_batch,
                    batch_wait_s=batch_wait_s)
    runner.start()
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


async def test_runner_batch_results_keep_request_order_and_seeds(engine) -> None:
    runner = make_runner(engine)
    jobs = [job(engine, n=n, seed=10 * n) for n in (1, 2, 3)]
    for item in jobs:
        runner.submit(item)
    results = await asyncio.gather(*(item.future for item in jobs))
    assert [len(images) for images in results] == [1, 2, 3]
    assert [item.seeds for item in jobs] == [[10], [20, 21], [30, 31, 32]]
    await runner.stop(Cancelled("test over"))


async def test_runner_full_queue_rejects_with_retry_after(engine) -> None:
    runner = make_runner(engine, max_batch=1, max_queue=2)
    long_jobs = [job(engine, num_inference_steps=30) for _ in range(3)]
    runner.submit(long_jobs[0])
    while long_jobs[0].steps_done == 0:  # running, so it has left the queue
        await asyncio.sleep(0.01)
    runner.submit(long_jobs[1])
    runner.submit(long_jobs[2])  # two wait: the queue is full
    rejected_before = sample(metrics.GENERATIONS, status="rejected")
    with pytest.raises(QueueFull) as caught:
        runner.submit(job(engine))
    assert caught.value.status_code == 429
    assert int(caught.value.headers()["Retry-After"]) >= 1
    assert sample(metrics.GENERATIONS, status="rejected") == rejected_before + 1
    await asyncio.gather(*(item.future for item in long_jobs))
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
    # The step callback notices at the next step, however slow a step is on a busy machine.
    deadline = time.monotonic() + 60
    while engine[0].progress.running and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
    assert not engine[0].progress.running
    assert 3 <= long_job.steps_done < 400
    await runner.stop(Cancelled("test over"))


async def test_runner_cancel_while_queued_leaves_queue_at_once(engine) -> None:
    runner = make_runner(engine, max_batch=1)
    blocker, waiting = job(engine, num_inference_steps=20), job(engine)
    runner.submit(blocker)
    runner.submit(waiting)
    await asyncio.sleep(0.05)
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
    doomed = job(engine, prompt="[[oom]] a cat")
    runner.submit(doomed)
    with pytest.raises(ServiceUnavailable) as caught:
        await doomed.future
    assert caught.value.code == "out_of_memory" and "Retry-After" in caught.value.headers()
    healthy = job(engine)
    runner.submit(healthy)
    assert len(await healthy.future) == 1
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
