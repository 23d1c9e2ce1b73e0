"""Edits on the real demo pipeline, in process: which pipeline runs, what it changes, and
what batches with what (app/serving/pipelines.py, app/serving/admission.py)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from app.contract.edits import ImageEditRequest, ImageVariationRequest
from app.contract.images import ImageGenerationRequest
from app.errors import Cancelled, InvalidRequest
from app.serving.admission import build_edit, build_generation, build_variation, input_size
from app.serving.engine import Engine, InferenceThread
from app.serving.generation import Generation
from app.serving.pipelines import derived_pipeline
from app.serving.runner import Runner
from app.settings import Settings
from app.uploads.inputs import EditInputs
from tests.support.edit_inputs import picture

STEPS = 8


@pytest.fixture(scope="module")
def settings(demo_model_dir: Path) -> Settings:
    return Settings(demo_model_dir=demo_model_dir, device="cpu", warmup=False,
                    default_steps=2, max_pixels=128 * 128)


@pytest.fixture
async def engine(settings: Settings) -> AsyncIterator[tuple[Engine, InferenceThread]]:
    engine = Engine(settings)
    thread = InferenceThread()
    await thread.run(engine.load)
    yield engine, thread
    thread.stop(timeout=10)


def left_half_mask(width: int = 64, height: int = 64) -> Image.Image:
    mask = Image.new("L", (width, height), 0)
    mask.paste(255, (0, 0, width // 2, height))  # 255 = change
    return mask


def edit(engine: tuple[Engine, InferenceThread], mask: Image.Image | None = None,
         **fields: object) -> Generation:
    model = engine[0].model
    assert model is not None
    body = ImageEditRequest.model_validate({"prompt": "a fox", "seed": 3, **fields})
    return build_edit(body, EditInputs(picture(), mask), engine[0].settings, model,
                      f"edit-{time.monotonic_ns()}")


async def run_alone(engine: tuple[Engine, InferenceThread], generation: Generation
                    ) -> np.ndarray:
    outcomes = await engine[1].run(lambda: engine[0].run([generation]))
    images = outcomes[0]
    assert isinstance(images, list), images
    return np.asarray(images[0]).astype(np.int16)


async def test_pipelines_derived_share_every_weight_and_are_made_once(engine) -> None:
    base = engine[0].model.pipeline
    base_parameters = {id(p) for module in (base.unet, base.vae, base.text_encoder)
                       for p in module.parameters()}
    for inpaint in (False, True):
        derived = await engine[1].run(lambda inpaint=inpaint: derived_pipeline(base, inpaint))
        assert derived is derived_pipeline(base, inpaint)  # cached, not made per call
        assert type(derived) is not type(base)
        derived_parameters = {id(p) for module in derived.components.values()
                              if hasattr(module, "parameters") for p in module.parameters()}
        assert derived_parameters == base_parameters  # no extra weights, none copied


async def test_pipelines_strength_zero_gives_the_input_back(engine) -> None:
    pixels = await run_alone(engine, edit(engine, strength=0.0, size="64x64"))
    assert np.array_equal(pixels, np.asarray(picture()).astype(np.int16))


async def test_pipelines_img2img_difference_grows_with_strength(engine) -> None:
    """Measured against the lowest strength's image, not the input: the demo model's random
    VAE turns any input into noise on the way in and out (docs/edits.md), so what strength
    controls shows as how far the result moves from that VAE round trip."""
    strengths = (0.125, 0.375, 0.625, 1.0)  # 1, 3, 5 and 8 of 8 steps
    images = [await run_alone(engine, edit(engine, strength=s, num_inference_steps=STEPS))
              for s in strengths]
    distances = [float(np.abs(image - images[0]).mean()) for image in images[1:]]
    assert distances == sorted(distances) and distances[0] > 1.0, distances


async def test_pipelines_inpainting_changes_only_the_masked_area(engine) -> None:
    pixels = await run_alone(engine, edit(engine, mask=left_half_mask(),
                                          num_inference_steps=STEPS))
    original = np.asarray(picture()).astype(np.int16)
    assert np.array_equal(pixels[:, 32:], original[:, 32:])  # kept: exactly the input
    assert float(np.abs(pixels[:, :32] - original[:, :32]).mean()) > 10  # changed


async def test_pipelines_variation_runs_img2img_with_an_empty_prompt(engine) -> None:
    model = engine[0].model
    variation = build_variation(ImageVariationRequest(seed=3, n=2), EditInputs(picture()),
                                engine[0].settings, model, "variation")
    assert variation.prompt == "" and variation.params.strength == 0.6
    assert not variation.params.has_mask
    outcomes = await engine[1].run(lambda: engine[0].run([variation]))
    assert isinstance(outcomes[0], list) and len(outcomes[0]) == 2


async def test_pipelines_compatible_edits_share_a_call_never_with_a_generation(engine) -> None:
    runner = Runner(engine[0], engine[1], max_queue=8, max_batch=4, batch_wait_s=0.02)
    runner.start()
    model = engine[0].model
    generation = build_generation(ImageGenerationRequest(prompt="a fox", size="64x64"),
                                  engine[0].settings, model, "generate")
    first, second = edit(engine, seed=1), edit(engine, seed=2)
    other_strength = edit(engine, seed=3, strength=0.5)
    masked = edit(engine, mask=left_half_mask(), seed=4)
    queued = [first, generation, second, other_strength, masked]
    for item in queued:
        runner.submit(item)
    await asyncio.gather(*(item.future for item in queued))
    assert first.started_at == second.started_at  # one call
    others = [generation.started_at, other_strength.started_at, masked.started_at]
    assert len({first.started_at, *others}) == 4, others  # each its own call
    await runner.stop(Cancelled("test over"))


async def test_pipelines_batched_edits_match_their_runs_alone(engine) -> None:
    runner = Runner(engine[0], engine[1], max_queue=8, max_batch=4, batch_wait_s=0.02)
    runner.start()
    batched = [edit(engine, mask=left_half_mask(), seed=seed) for seed in (5, 6)]
    for item in batched:
        runner.submit(item)
    together = await asyncio.gather(*(item.future for item in batched))
    assert batched[0].started_at == batched[1].started_at
    for item, images in zip(batched, together, strict=True):
        alone = await run_alone(engine, edit(engine, mask=left_half_mask(), seed=item.seeds[0]))
        assert np.abs(np.asarray(images[0]).astype(np.int16) - alone).max() <= 2
    await runner.stop(Cancelled("test over"))


@pytest.mark.parametrize(("size", "expected"), [
    ((64, 64), (64, 64)),
    ((80, 48), (80, 48)),
    ((70, 50), (64, 48)),  # to the nearest multiple of 16 (8 latent pixels x VAE factor 2)
    ((1000, 500), (176, 80)),  # scaled down to SLEEPWELL_MAX_PIXELS, its shape kept
    ((3, 3), (16, 16)),  # never below one multiple
])
async def test_pipelines_input_size_rounds_and_clamps(engine, settings, size, expected) -> None:
    width, height = input_size(size, settings, engine[0].model)
    assert (width, height) == expected
    assert width * height <= settings.max_pixels


async def test_pipelines_default_steps_too_few_for_strength_are_raised_and_run(engine) -> None:
    """One default step at strength 0.7 would run int(0.7) = 0 steps and fail in diffusers
    (a turbo model's SLEEPWELL_DEFAULT_STEPS=1): the default is raised to the fewest that
    run one; a request's own too-small count is refused naming it."""
    one_step = engine[0].settings.model_copy(update={"default_steps": 1})
    model = engine[0].model
    body = ImageEditRequest(prompt="a fox", strength=0.7)
    generation = build_edit(body, EditInputs(picture()), one_step, model, "turbo")
    assert generation.params.steps == 2
    outcomes = await engine[1].run(lambda: engine[0].run([generation]))
    assert isinstance(outcomes[0], list)
    explicit = ImageEditRequest(prompt="a fox", strength=0.5, num_inference_steps=1)
    with pytest.raises(InvalidRequest) as refused:
        build_edit(explicit, EditInputs(picture()), one_step, model, "explicit")
    assert refused.value.param == "num_inference_steps"


@pytest.mark.parametrize(("strength", "expected"), [(0.5, 4), (0.3, 2), (1.0, STEPS)])
async def test_pipelines_denoising_steps_are_the_steps_the_pipeline_runs(
    engine, strength, expected
) -> None:
    generation = edit(engine, strength=strength, num_inference_steps=STEPS)
    await run_alone(engine, generation)
    assert generation.params.denoising_steps == expected == generation.steps_done
