"""Bytes to a checked, decoded image: PNG, JPEG or WebP only, dimensions before pixels."""

from __future__ import annotations

import io
import warnings

from PIL import Image, ImageOps, UnidentifiedImageError

from app.errors import InvalidRequest, PayloadTooLarge
from app.settings import Settings

# Magic numbers, so a file is judged by what it is, not by its name or content type.
_SIGNATURES: tuple[tuple[str, bytes, int], ...] = (
    ("PNG", b"\x89PNG\r\n\x1a\n", 0),
    ("JPEG", b"\xff\xd8\xff", 0),
    ("WEBP", b"WEBP", 8),  # RIFF....WEBP
)
_NAMED_OTHERS: tuple[tuple[str, bytes], ...] = (
    ("GIF", b"GIF8"), ("BMP", b"BM"), ("TIFF", b"II*\x00"), ("TIFF", b"MM\x00*"),
)
ACCEPTED = "PNG, JPEG or WebP"


def check_byte_size(size: int, param: str, settings: Settings) -> None:
    if size > settings.max_upload_bytes:
        raise PayloadTooLarge(
            f"{param} is larger than {settings.max_upload_bytes} bytes "
            "(SLEEPWELL_MAX_UPLOAD_BYTES).", param=param,
        )


def sniff_format(data: bytes, param: str) -> str:
    """The format the bytes start with; a 400 naming it when it is not one we take."""
    for name, signature, offset in _SIGNATURES:
        if data[offset : offset + len(signature)] == signature and (
            name != "WEBP" or data[:4] == b"RIFF"
        ):
            return name
    for name, signature in _NAMED_OTHERS:
        if data.startswith(signature):
            raise InvalidRequest(
                f"{param} is a {name} image; only {ACCEPTED} images are accepted.",
                param=param, code="invalid_image_format",
            )
    raise InvalidRequest(f"{param} is not an image; send a {ACCEPTED} file.", param=param,
                         code="invalid_image_format")


def decode(data: bytes, param: str, settings: Settings) -> Image.Image:
    """The decoded image, in the mode its file has (conversion: ``to_rgb``/mask code)."""
    check_byte_size(len(data), param, settings)
    expected = sniff_format(data, param)
    try:
        with warnings.catch_warnings():  # PIL warns of bombs; we refuse them ourselves below
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data), formats=[expected])  # reads the header only
    except Image.DecompressionBombError as exc:  # PIL's own ceiling, far above ours
        raise _too_many_pixels(param, str(exc).split(")")[0].removeprefix("Image size ("),
                               settings) from exc
    except (UnidentifiedImageError, OSError, SyntaxError) as exc:
        raise _corrupt(param) from exc
    _check_dimensions(image, param, settings)
    frames = int(getattr(image, "n_frames", 1))
    if frames > 1:
        # Which frame the client meant is a guess; saying so beats editing the wrong one.
        raise InvalidRequest(
            f"{param} is animated ({frames} frames); send a single-frame image.",
            param=param, code="invalid_image",
        )
    try:
        image.load()
        # As browsers show it: a phone's portrait JPEG is stored sideways with an EXIF
        # Orientation tag, and a mask painted over the shown picture must fit it.
        upright = ImageOps.exif_transpose(image)
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
        raise _corrupt(param) from exc
    return upright if upright is not None else image


def _check_dimensions(image: Image.Image, param: str, settings: Settings) -> None:
    width, height = image.size
    if width < 1 or height < 1 or width * height > settings.max_upload_pixels:
        raise _too_many_pixels(param, f"{width}x{height} = {width * height} pixels", settings)


def _too_many_pixels(param: str, size: str, settings: Settings) -> InvalidRequest:
    return InvalidRequest(
        f"{param} is {size}; the limit is {settings.max_upload_pixels} pixels "
        "(SLEEPWELL_MAX_UPLOAD_PIXELS).", param=param, code="image_too_large",
    )


def _corrupt(param: str) -> InvalidRequest:
    return InvalidRequest(
        f"{param} could not be decoded: the file is truncated or corrupt.", param=param,
        code="invalid_image",
    )


def to_rgb(image: Image.Image) -> Image.Image:
    """RGB for the pipeline: CMYK, palette, greyscale and alpha images are converted. An
    input image's alpha is dropped (its colours kept): only a mask says what to change."""
    if image.mode == "RGB":
        return image
    if image.mode in ("P", "PA"):  # through RGBA, so a transparent index keeps its colour
        image = image.convert("RGBA")
    return image.convert("RGB")
