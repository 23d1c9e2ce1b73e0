"""Turning PIL images into base64 strings in the requested format."""

from __future__ import annotations

import base64
import io
from typing import Any

from app.api.schemas import OutputFormat

_PIL_FORMATS = {OutputFormat.PNG: "PNG", OutputFormat.JPEG: "JPEG", OutputFormat.WEBP: "WEBP"}


def encode_image(image: Any, output_format: OutputFormat) -> str:
    buffer = io.BytesIO()
    if output_format is OutputFormat.JPEG and image.mode != "RGB":
        image = image.convert("RGB")
    # Fixed encoder options keep the bytes a pure function of the pixels (same seed, same bytes).
    options: dict[str, Any] = {"quality": 90} if output_format is not OutputFormat.PNG else {}
    image.save(buffer, format=_PIL_FORMATS[output_format], **options)
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def encode_images(images: list[Any], output_format: OutputFormat) -> list[str]:
    return [encode_image(image, output_format) for image in images]
