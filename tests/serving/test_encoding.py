"""Pixels leave the inference thread as uint8 and are encoded in the pool, unchanged."""

from __future__ import annotations

import base64
import io
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from app.contract.images import OutputFormat
from app.serving.encoding import Encoder, encode_image, to_uint8
from app.serving.model import load_model
from app.settings import Settings


@pytest.fixture(scope="module")
def pipeline(demo_model_dir: Path) -> object:
    return load_model(Settings(demo_model_dir=demo_model_dir, device="cpu", warmup=False)).pipeline


def run(pipeline: object, output_type: str) -> object:
    with torch.inference_mode():
        return pipeline(prompt=["a fox", "a cat"], width=64, height=64,  # type: ignore[operator]
                        num_inference_steps=2, output_type=output_type,
                        generator=[torch.Generator("cpu").manual_seed(s) for s in (1, 2)]).images


def test_to_uint8_tensor_output_matches_diffusers_pil_conversion_exactly(pipeline) -> None:
    as_pil = np.stack([np.asarray(image) for image in run(pipeline, "pil")])
    as_uint8 = to_uint8(run(pipeline, "pt"))
    assert as_uint8.dtype == np.uint8 and as_uint8.shape == (2, 64, 64, 3)
    assert np.array_equal(as_uint8, as_pil)  # the same bytes as before the change


def test_to_uint8_pil_only_pipeline_output_is_converted_too(pipeline) -> None:
    images = run(pipeline, "pil")
    assert np.array_equal(to_uint8(images), np.stack([np.asarray(i) for i in images]))


@pytest.mark.parametrize("output_format", list(OutputFormat))
def test_encode_image_same_pixels_same_bytes_and_decodable(output_format) -> None:
    pixels = np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    first, second = encode_image(pixels, output_format), encode_image(pixels.copy(), output_format)
    assert first == second
    decoded = Image.open(io.BytesIO(base64.b64decode(first)))
    assert decoded.size == (64, 64) and decoded.format == output_format.value.upper()
    if output_format is OutputFormat.PNG:  # lossless: the pixels come back exactly
        assert np.array_equal(np.asarray(decoded), pixels)


async def test_encoder_pool_encodes_a_batch_in_order() -> None:
    encoder = Encoder(threads=2)
    batch = [np.full((8, 8, 3), value, dtype=np.uint8) for value in (0, 128, 255)]
    try:
        encoded = await encoder.encode(batch, OutputFormat.PNG)
    finally:
        encoder.close()
    values = [np.asarray(Image.open(io.BytesIO(base64.b64decode(e))))[0, 0, 0] for e in encoded]
    assert values == [0, 128, 255]
