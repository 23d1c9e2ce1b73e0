"""From the pipeline's pixels to base64 strings, off the inference thread.

The inference thread only turns the pipeline's float output into uint8 pixels (a cheap
tensor op, on the GPU where there is one); PIL and the PNG/JPEG/WebP encoder run in the
``Encoder``'s bounded pool, so the next batch starts while the last one is encoded.

Encoder options are fixed, so the bytes are a pure function of the pixels (same seed, same
bytes). They are chosen for speed (bench/encode_cost.py): PNG at zlib level 1 instead of
Pillow's 6, WebP method 0 instead of 4; JPEG and WebP keep quality 90.
"""

from __future__ import annotations

import asyncio
import base64
import io
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

import numpy as np
import torch
from PIL import Image

from app.contract.images import OutputFormat

_PIL_FORMATS = {OutputFormat.PNG: "PNG", OutputFormat.JPEG: "JPEG", OutputFormat.WEBP: "WEBP"}
T = TypeVar("T")
ENCODER_OPTIONS: dict[OutputFormat, dict[str, Any]] = {
    OutputFormat.PNG: {"compress_level": 1},
    OutputFormat.JPEG: {"quality": 90},
    OutputFormat.WEBP: {"quality": 90, "method": 0},
}


def to_uint8(images: Any) -> np.ndarray:
    """Pipeline output -> ``(n, height, width, 3)`` uint8 on the CPU.

    Takes ``output_type="pt"`` tensors in [0, 1] (``n, 3, h, w``) and rounds exactly as
    diffusers' own PIL conversion does (x255 in float32, round half to even), so the pixels
    do not change; a pipeline that only returns PIL images is converted too.
    """
    if isinstance(images, torch.Tensor):
        scaled = images.float().mul(255).round().to(torch.uint8)
        return scaled.permute(0, 2, 3, 1).contiguous().cpu().numpy()
    return np.stack([np.asarray(image.convert("RGB")) for image in images])


def encode_image(pixels: np.ndarray, output_format: OutputFormat) -> str:
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format=_PIL_FORMATS[output_format],
                                 **ENCODER_OPTIONS[output_format])
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def encode_images(images: Sequence[np.ndarray], output_format: OutputFormat) -> list[str]:
    return [encode_image(pixels, output_format) for pixels in images]


class Encoder:
    """A bounded pool for image encoding: ``threads`` images are encoded at once, at most.

    Pillow's encoders release the GIL while they compress, so the pool overlaps with the
    next pipeline call instead of competing with the event loop for the interpreter.
    """

    def __init__(self, threads: int) -> None:
        self._pool = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="encode")

    async def encode(self, images: Sequence[np.ndarray], output_format: OutputFormat) -> list[str]:
        loop = asyncio.get_running_loop()
        jobs = [loop.run_in_executor(self._pool, encode_image, pixels, output_format)
                for pixels in images]
        return list(await asyncio.gather(*jobs))

    async def run(self, fn: Callable[..., T], *args: Any) -> T:
        """Other image work (previews: resize, then encode) in the same bounded pool."""
        return await asyncio.get_running_loop().run_in_executor(self._pool, fn, *args)

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)
