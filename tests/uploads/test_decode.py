"""Input images and masks: what is accepted, converted, or refused, and with which param."""

from __future__ import annotations

import io
import struct
import zlib

import numpy as np
import pytest
from PIL import Image

from app.errors import InvalidRequest, PayloadTooLarge
from app.settings import Settings
from app.uploads.decode import decode, to_rgb
from app.uploads.inputs import decode_inputs
from app.uploads.mask import to_mask
from tests.support.edit_inputs import alpha_mask, animated_png, encoded, picture, png

SETTINGS = Settings(max_upload_bytes=64 * 1024, max_upload_pixels=512 * 512)


def bomb_png(width: int = 100_000, height: int = 100_000) -> bytes:
    """A real 1x1 PNG whose header claims ``width`` x ``height`` (CRC fixed up)."""
    data = bytearray(png(1, 1))
    ihdr = struct.pack(">II", width, height) + bytes(data[24:29])
    data[16:29] = ihdr
    data[29:33] = struct.pack(">I", zlib.crc32(b"IHDR" + ihdr))
    return bytes(data)


def refusal(data: bytes, param: str = "image") -> InvalidRequest | PayloadTooLarge:
    with pytest.raises((InvalidRequest, PayloadTooLarge)) as refused:
        decode(data, param, SETTINGS)
    assert refused.value.param == param
    return refused.value


@pytest.mark.parametrize(("data", "says"), [
    (b"hello, not an image", "not an image"),
    (png()[: len(png()) // 2], "truncated or corrupt"),
    (encoded(picture(), "GIF"), "GIF image; only PNG, JPEG or WebP"),
    (encoded(picture(), "BMP"), "BMP image; only PNG, JPEG or WebP"),
    (animated_png(), "animated (2 frames)"),
    (bomb_png(), "10000000000 pixels; the limit is 262144 pixels"),
], ids=["non-image", "truncated", "gif", "bmp", "animated", "bomb"])
def test_decode_bad_input_is_refused_naming_the_param(data: bytes, says: str) -> None:
    error = refusal(data)
    assert error.status_code == 400 and says in error.message, error.message


def test_decode_file_over_the_byte_limit_is_413() -> None:
    error = refusal(b"\x89PNG\r\n\x1a\n" + bytes(64 * 1024))
    assert error.status_code == 413 and "SLEEPWELL_MAX_UPLOAD_BYTES" in error.message


def test_decode_bomb_is_refused_before_decoding() -> None:
    """Over the pixel limit, and cut short after its header: were it decoded, it would be
    refused as truncated; it is refused by the size its header declares."""
    header_only = encoded(Image.new("1", (2000, 2000)), "PNG")[:100]
    error = refusal(header_only)
    assert "2000x2000 = 4000000 pixels" in error.message


@pytest.mark.parametrize("fmt", ["PNG", "JPEG", "WEBP"])
def test_decode_accepted_formats_decode_to_rgb(fmt: str) -> None:
    image = to_rgb(decode(encoded(picture(), fmt), "image", SETTINGS))
    assert image.mode == "RGB" and image.size == (64, 64)


@pytest.mark.parametrize("mode", ["CMYK", "P", "LA", "L", "RGBA"])
def test_decode_other_modes_are_converted_to_rgb(mode: str) -> None:
    fmt = "JPEG" if mode == "CMYK" else "PNG"
    image = to_rgb(decode(encoded(picture().convert(mode), fmt), "image", SETTINGS))
    assert image.mode == "RGB" and image.size == (64, 64)
    if mode == "CMYK":  # converted, not misread as RGB: the yellow square stays yellow
        red, green, blue = image.getpixel((24, 24))  # type: ignore[misc]
        assert red > 200 and green > 200 and blue < 120


def test_mask_transparent_pixels_are_the_ones_to_change() -> None:
    mask = np.asarray(to_mask(Image.open(__import__("io").BytesIO(alpha_mask()))))
    assert (mask[:, :32] == 255).all() and (mask[:, 32:] == 0).all()


def test_mask_without_alpha_white_is_change() -> None:
    grey = Image.new("L", (64, 64), 0)
    grey.paste(255, (0, 0, 16, 64))
    mask = np.asarray(to_mask(grey.convert("RGB")))
    assert (mask[:, :16] == 255).all() and (mask[:, 16:] == 0).all()


def test_mask_opaque_alpha_is_read_as_black_and_white() -> None:
    grey = Image.new("L", (64, 64), 0)
    grey.paste(255, (0, 0, 16, 64))
    mask = np.asarray(to_mask(grey.convert("RGBA")))  # alpha 255 everywhere
    assert (mask[:, :16] == 255).all() and (mask[:, 16:] == 0).all()


def test_inputs_mask_of_another_size_is_refused_naming_mask() -> None:
    with pytest.raises(InvalidRequest) as refused:
        decode_inputs([png(64, 64)], alpha_mask(64, 32), SETTINGS)
    assert refused.value.param == "mask" and "64x32" in refused.value.message


def test_inputs_two_images_are_refused_saying_the_model_takes_one() -> None:
    with pytest.raises(InvalidRequest) as refused:
        decode_inputs([png(), png()], None, SETTINGS, image_param="images")
    assert refused.value.param == "images" and "takes one image" in refused.value.message


def test_decode_jpeg_with_exif_orientation_comes_upright() -> None:
    # A phone's portrait photo: stored 64 wide x 32 high, tagged "rotate 90 CW" (6).
    stored = Image.new("RGB", (64, 32), (200, 30, 30))
    exif = Image.Exif()
    exif[0x0112] = 6
    buffer = io.BytesIO()
    stored.save(buffer, format="JPEG", exif=exif)
    assert decode(buffer.getvalue(), "image", SETTINGS).size == (32, 64)  # as browsers show it
