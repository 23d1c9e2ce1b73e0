"""Partial images on the engine: which steps, which decoder, which requests, what pixels.

The real demo pipeline runs in-process (the engine on a worker thread, as the inference
thread does), so these tests see exactly what the stream is handed.
"""

from __future__ import annotations

import asyncio
import base64
import io
from pathlib import Path
from typing import Any

import pytest
import torch
from PIL import Image

from app.contract.images import ImageGenerationRequest
from app.serving.admission import build_generation
from app.serving.engine import Engine
from app.serving.generation import Generation
from app.serving.model import ModelLoadError
from app.serving.previews import (
    LINEAR,
    LinearDecoder,
    Preview,
    linear_decoder,
    pipeline_inputs,
    preview_steps,
    render_preview,
)
from app.serving.usage import count_text_tokens, usage_of
from app.settings import Settings


@pytest.mark.parametrize(
    ("steps", "count", "expected"),
    [(10, 2, (3, 7)), (10, 3, (3, 5, 8)), (12, 1, (6,)), (30, 3, (8, 15, 23)),
     (2, 3, (1,)), (1, 2, ()), (10, 0, ())],
)
def test_preview_steps_spread_over_the_run_never_the_last(steps, count, expected) -> None:
    assert preview_steps(steps, count) == expected


def engine_for(demo_model_dir: Path, **settings: Any) -> Engine:
    engine = Engine(Settings(demo_model_dir=demo_model_dir, device="cpu", warmup=False,
                             **settings))
    engine.load()
    return engine


@pytest.fixture(scope="module")
def tiny_engine(demo_model_dir) -> Engine:
    """The default: the demo model's own preview_decoder/ (a tiny AutoencoderTiny)."""
    return engine_for(demo_model_dir)


@pytest.fixture(scope="module")
def linear_engine(demo_model_dir) -> Engine:
    return engine_for(demo_model_dir, preview_decoder=LINEAR)


def generation(engine: Engine, **fields: Any) -> Generation:
    assert engine.model is not None
    body = ImageGenerationRequest(**{"prompt": "a lighthouse", "size": "64x64", "seed": 3,
                                     "num_inference_steps": 6, "stream": True,
                                     "partial_images": 2, **fields})
    return build_generation(body, engine.settings, engine.model, "test")


async def run(engine: Engine, generations: list[Generation]) -> list[Any]:
    outcomes = await asyncio.to_thread(engine.run, generations)
    return outcomes


def png_size(b64: str) -> tuple[int, int]:
    data = base64.b64decode(b64)
    assert data.startswith(b"\x89PNG")
    with Image.open(io.BytesIO(data)) as image:
        image.load()
        return image.size


async def test_previewer_tiny_autoencoder_previews_at_spread_steps_full_size(tiny_engine) -> None:
    assert tiny_engine.model is not None
    assert tiny_engine.previewer.decoder(tiny_engine.model).name.startswith("autoencoder_tiny")
    wanted = generation(tiny_engine, n=2)
    [outcome] = await run(tiny_engine, [wanted])
    assert not isinstance(outcome, Exception)
    assert wanted.previews is not None
    previews = wanted.previews.take()
    assert [(p.index, p.step) for p in previews] == [(0, 2), (1, 4)]
    for preview in previews:
        assert len(preview.images) == 2  # one per image of n
        # TAESD-style decoders upsample the latents back to the image's size.
        assert all(image.shape == (64, 64, 3) and image.dtype.name == "uint8"
                   for image in preview.images)
        assert preview.decode_seconds > 0
    # Previews of a run in progress are not the final image.
    assert not (previews[0].images[0] == outcome[0]).all()


async def test_previewer_linear_previews_latent_size_rendered_at_request_size(
    linear_engine,
) -> None:
    assert linear_engine.model is not None
    assert linear_engine.previewer.decoder(linear_engine.model).name == LINEAR
    wanted = generation(linear_engine, partial_images=3, num_inference_steps=8,
                        output_format="png")
    await run(linear_engine, [wanted])
    assert wanted.previews is not None
    previews = wanted.previews.take()
    assert [p.step for p in previews] == list(preview_steps(8, 3)) == [2, 4, 6]
    pixels = previews[-1].images[0]
    assert pixels.shape == (32, 32, 3)  # the demo's latents: a linear map keeps their size
    assert png_size(render_preview(pixels, 64, 64, wanted.params.output_format)) == (64, 64)


async def test_previewer_only_decodes_for_requests_that_take_previews(linear_engine) -> None:
    streamed = generation(linear_engine, seed=1)
    not_streamed = generation(linear_engine, seed=2, stream=False)  # partial_images ignored
    assert not_streamed.previews is None
    assert pipeline_inputs([not_streamed]) == {}
    assert pipeline_inputs([streamed, not_streamed]) == {
        "callback_on_step_end_tensor_inputs": ["latents"]}
    outcomes = await run(linear_engine, [streamed, not_streamed])
    assert all(not isinstance(outcome, Exception) for outcome in outcomes)
    assert streamed.previews is not None
    previews = streamed.previews.take()
    # Batched together, the streamed request gets previews of its own image only.
    assert [len(p.images) for p in previews] == [1, 1]


async def test_previewer_previews_match_a_lone_run_of_the_same_seed(linear_engine) -> None:
    together = [generation(linear_engine, seed=7), generation(linear_engine, seed=8)]
    await run(linear_engine, together)
    alone = generation(linear_engine, seed=8)
    await run(linear_engine, [alone])
    assert together[1].previews is not None and alone.previews is not None
    batched: list[Preview] = together[1].previews.take()
    single: list[Preview] = alone.previews.take()
    assert len(batched) == len(single) == 2
    for mine, reference in zip(batched, single, strict=True):
        difference = abs(mine.images[0].astype(int) - reference.images[0].astype(int)).max()
        assert difference <= 2, difference  # batched float maths may differ in the last bit


def test_linear_decoder_applies_the_cited_factors() -> None:
    class StableDiffusionXLPipeline:  # only its name matters to the factor choice
        pass

    latents = torch.zeros(1, 4, 2, 2)
    latents[0, 0] = 1.0
    sd = linear_decoder(object()).decode(latents)
    sdxl = linear_decoder(StableDiffusionXLPipeline()).decode(latents)
    assert torch.allclose(sd[0, :, 0, 0], torch.tensor([0.3512, 0.2297, 0.3227]))
    # SDXL: first row plus its bias.
    assert torch.allclose(sdxl[0, :, 0, 0], torch.tensor([0.3651 + 0.1084, 0.4232 - 0.0175,
                                                          0.4341 - 0.0011]))
    with pytest.raises(ValueError, match="4 latent channels"):
        LinearDecoder(((1.0, 0.0, 0.0),) * 4, (0.0, 0.0, 0.0)).decode(torch.zeros(1, 16, 2, 2))


def test_engine_load_with_a_missing_preview_decoder_fails_naming_the_setting(
    demo_model_dir, tmp_path,
) -> None:
    with pytest.raises(ModelLoadError, match="SLEEPWELL_PREVIEW_DECODER"):
        engine_for(demo_model_dir, preview_decoder=str(tmp_path / "no-such-taesd"))


async def test_usage_counts_prompt_tokens_with_the_pipelines_tokenizer(linear_engine) -> None:
    assert linear_engine.model is not None
    tokenizer = linear_engine.model.pipeline.tokenizer
    prompt, negative = "a lighthouse at dusk", "blurry"
    counted = generation(linear_engine, prompt=prompt, negative_prompt=negative, n=3)
    await run(linear_engine, [counted])
    expected = len(tokenizer(prompt).input_ids) + len(tokenizer(negative).input_ids)
    usage = usage_of(counted)
    assert usage.input_tokens_details.text_tokens == expected == usage.input_tokens
    assert usage.total_tokens == expected and usage.output_tokens == 0
    assert usage.input_tokens_details.image_tokens == 0
    # The text encoder reads at most model_max_length tokens: the count stops there too.
    long_prompt = "lighthouse " * 100
    assert count_text_tokens(linear_engine.model.pipeline, [long_prompt]) == 77
    assert len(tokenizer(long_prompt).input_ids) > 77


async def test_previewer_tiny_sdxl_previews_with_sdxl_factors(tmp_path_factory) -> None:
    from tests.support.tiny_sdxl import ensure_tiny_sdxl

    model_dir = ensure_tiny_sdxl(tmp_path_factory.mktemp("sdxl") / "tiny-sdxl")
    engine = Engine(Settings(model=str(model_dir), device="cpu", warmup=False))
    model = engine.load()
    assert type(model.pipeline).__name__ == "StableDiffusionXLPipeline"
    decoder = engine.previewer.decoder(model)  # no preview_decoder/ folder: linear
    latents = torch.zeros(1, 4, 1, 1)
    latents[0, 0] = 1.0
    assert torch.allclose(decoder.decode(latents)[0, :, 0, 0],
                          torch.tensor([0.3651 + 0.1084, 0.4232 - 0.0175, 0.4341 - 0.0011]))
    wanted = generation(engine, partial_images=1, num_inference_steps=4)
    [outcome] = await run(engine, [wanted])
    assert not isinstance(outcome, Exception)
    assert wanted.previews is not None
    [preview] = wanted.previews.take()
    assert preview.step == 2 and preview.images[0].shape[2] == 3
    assert wanted.text_tokens == len(model.pipeline.tokenizer("a lighthouse").input_ids)
