"""Masks: which pixels an edit may change, as an "L" image (255 = change, 0 = keep)."""

from __future__ import annotations

from PIL import Image

from app.errors import InvalidRequest

_HALF = 128


def has_alpha(image: Image.Image) -> bool:
    return "A" in image.getbands() or (image.mode == "P" and "transparency" in image.info)


def to_mask(image: Image.Image) -> Image.Image:
    """OpenAI's rule when the mask has alpha: transparent (alpha below half) = change.

    Without alpha, or with an alpha that is opaque everywhere (a black-and-white mask
    saved as RGBA, which OpenAI's rule would read as "change nothing"), diffusers' rule:
    white (grey at or above half) = change.
    """
    if has_alpha(image):
        alpha = image.convert("RGBA").getchannel("A")
        if alpha.getextrema() != (255, 255):
            return alpha.point(lambda value: 255 if value < _HALF else 0)
    grey = image.convert("L")
    return grey.point(lambda value: 255 if value >= _HALF else 0)


def check_mask_size(mask: Image.Image, image: Image.Image) -> None:
    if mask.size != image.size:
        raise InvalidRequest(
            f"mask is {mask.width}x{mask.height} but the image is {image.width}x"
            f"{image.height}; the mask must have the image's size.",
            param="mask", code="invalid_mask",
        )
