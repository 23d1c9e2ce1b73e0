"""Input images for the edit and variation tests, made in memory (no files on disk)."""

from __future__ import annotations

import base64
import io

import numpy as np
from PIL import Image


# A picture with structure (gradients and a square), so a changed pixel shows.
def picture(width: int = 64, height: int = 64) -> Image.Image:
    ys, xs = np.mgrid[0:height, 0:width]
    pixels = np.stack([xs * 255 // max(1, width - 1), ys * 255 // max(1, height - 1),
                       np.full_like(xs, 96)], axis=-1).astype(np.uint8)
    pixels[height // 4 : height // 2, width // 4 : width // 2] = (250, 250, 40)
    return Image.fromarray(pixels, "RGB")


def encoded(image: Image.Image, fmt: str = "PNG", **options: object) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **options)
    return buffer.getvalue()


def png(width: int = 64, height: int = 64) -> bytes:
    return encoded(picture(width, height))


def alpha_mask(width: int = 64, height: int = 64, change_left: int | None = None) -> bytes:
    """OpenAI's mask: opaque everywhere but the ``change_left`` leftmost columns, which
    are transparent (= change). Default: the left half."""
    columns = width // 2 if change_left is None else change_left
    alpha = np.full((height, width), 255, dtype=np.uint8)
    alpha[:, :columns] = 0
    rgba = np.zeros((height, width, 4), dtype=np.uint8)
    rgba[..., 3] = alpha
    return encoded(Image.fromarray(rgba, "RGBA"))


def animated_png(width: int = 64, height: int = 64) -> bytes:
    frames = [picture(width, height), Image.new("RGB", (width, height), (0, 0, 0))]
    return encoded(frames[0], "PNG", save_all=True, append_images=frames[1:])


def data_url(data: bytes, media: str = "image/png") -> str:
    return f"data:{media};base64,{base64.b64encode(data).decode()}"


def decode_b64(b64: str) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(base64.b64decode(b64))).convert("RGB"))
