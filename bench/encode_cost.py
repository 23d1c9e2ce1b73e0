"""What returning a large image costs, per image, stage by stage: before and after.

    .venv/bin/python bench/encode_cost.py [--repeats 7] [--sizes 512 1024]

Images: uniform noise (what the demo model's random weights produce, and the worst case for
PNG) and a smooth synthetic picture (gradients and shapes: closer to a real model's output).
Stages:

- to PIL, as diffusers' output_type="pil" does it (float numpy, x255, round, uint8, PIL):
  before this change it ran on the inference thread, holding it from the next batch;
- to uint8 as a tensor (what the inference thread does now), and PIL.Image.fromarray (in
  the encode pool);
- encode: PNG at zlib level 6 (Pillow's default, before) and 1 (now), JPEG and WebP at
  quality 90 (WebP method 4, Pillow's default, and 0), base64 of the result.

Each figure is the median over ``--repeats`` runs, with min-max; bytes are per image.
"""

from __future__ import annotations

import argparse
import base64
import io
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageDraw

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from app.contract.images import OutputFormat  # noqa: E402
from app.serving.encoding import ENCODER_OPTIONS, to_uint8  # noqa: E402
from bench.loadgen import print_table  # noqa: E402


def timed(fn: Callable[[], Any], repeats: int) -> tuple[str, Any]:
    seconds, result = [], None
    for _ in range(repeats):
        started = time.perf_counter()
        result = fn()
        seconds.append(time.perf_counter() - started)
    ms = [s * 1000 for s in seconds]
    return f"{statistics.median(ms):.1f} ({min(ms):.1f}-{max(ms):.1f})", result


def noise_tensor(size: int) -> torch.Tensor:
    """Uniform noise, as output_type="pt" gives it: what the demo model's random weights
    produce (running its UNet at 1024x1024 on a CPU takes many minutes), and PNG's worst case."""
    generator = torch.Generator("cpu").manual_seed(0)
    return torch.rand((1, 3, size, size), generator=generator)


def smooth_tensor(size: int) -> torch.Tensor:
    """Gradients and shapes: compresses like a photo-ish generation, not like noise."""
    image = Image.new("RGB", (size, size))
    pixels = np.linspace(0, 255, size, dtype=np.float32)
    base = np.stack(np.meshgrid(pixels, pixels[::-1]), axis=-1)
    rgb = np.concatenate([base, ((base[..., :1] + base[..., 1:]) / 2)], axis=-1)
    image = Image.fromarray(rgb.astype(np.uint8))
    draw = ImageDraw.Draw(image)
    for index in range(8):
        box = [size * index // 10, size // 8, size * index // 10 + size // 6, size // 3]
        draw.ellipse(box, fill=(40 * index % 255, 200, 90))
    array = np.asarray(image, dtype=np.float32) / 255.0
    return torch.from_numpy(array).permute(2, 0, 1)[None]


def old_to_pil(tensor: torch.Tensor) -> Image.Image:
    array = tensor.cpu().permute(0, 2, 3, 1).float().numpy()
    return Image.fromarray((array[0] * 255).round().astype("uint8"))


def encode(image: Image.Image, fmt: str, **options: Any) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **options)
    return buffer.getvalue()


def rows_for(name: str, tensor: torch.Tensor, repeats: int) -> list[list[object]]:
    to_pil_old, pil = timed(lambda: old_to_pil(tensor), repeats)
    to_u8, array = timed(lambda: to_uint8(tensor), repeats)
    fromarray, _ = timed(lambda: Image.fromarray(array[0]), repeats)
    rows: list[list[object]] = [
        [name, "to PIL, diffusers' way (before: inference thread)", to_pil_old, ""],
        [name, "to uint8 tensor (now: inference thread)", to_u8, ""],
        [name, "Image.fromarray (now: encode pool)", fromarray, ""],
    ]
    cases = [("PNG level 6 (before)", "PNG", {"compress_level": 6}),
             ("PNG level 3", "PNG", {"compress_level": 3}),
             ("PNG level 1 (now)", "PNG", ENCODER_OPTIONS[OutputFormat.PNG]),
             ("JPEG q90", "JPEG", ENCODER_OPTIONS[OutputFormat.JPEG]),
             ("WebP q90 method 4 (before)", "WEBP", {"quality": 90}),
             ("WebP q90 method 0 (now)", "WEBP", ENCODER_OPTIONS[OutputFormat.WEBP])]
    for label, fmt, options in cases:
        cost, data = timed(lambda fmt=fmt, options=options: encode(pil, fmt, **options), repeats)
        b64, _ = timed(lambda data=data: base64.b64encode(data), repeats)
        rows.append([name, f"{label} + base64 {b64} ms", cost, f"{len(data) / 1024:.0f} KiB"])
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--sizes", type=int, nargs="+", default=[512, 1024])
    args = parser.parse_args()
    torch.set_num_threads(1)  # what one encode-pool thread or one worker has
    rows: list[list[object]] = []
    for size in args.sizes:
        rows += rows_for(f"{size}x{size} noise", noise_tensor(size), args.repeats)
        rows += rows_for(f"{size}x{size} smooth", smooth_tensor(size), args.repeats)
    print(f"per image, ms: median (min-max) of {args.repeats}; 1 torch thread")
    print_table(["image", "stage", "ms", "bytes"], rows)


if __name__ == "__main__":
    main()
