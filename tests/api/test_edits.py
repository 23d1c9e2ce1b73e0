"""POST /v1/images/edits over real gunicorn: both body forms, sizes, the seed contract, and
the bad-input table (each refusal names its parameter and harms nothing after it)."""

from __future__ import annotations

import base64
import socket
from collections.abc import Iterator

import httpx
import numpy as np
import pytest

from tests.support.edit_inputs import (
    alpha_mask,
    animated_png,
    data_url,
    decode_b64,
    encoded,
    picture,
    png,
)
from tests.support.server import RunningServer, gunicorn_server

EDITS = "/v1/images/edits"
UPLOAD_LIMIT = 64 * 1024


@pytest.fixture(scope="module")
def server() -> Iterator[RunningServer]:
    env = {"SLEEPWELL_MAX_UPLOAD_BYTES": str(UPLOAD_LIMIT),
           "SLEEPWELL_MAX_UPLOAD_PIXELS": str(512 * 512),
           "SLEEPWELL_MAX_PIXELS": str(128 * 128)}
    with gunicorn_server(env) as running:
        yield running


def post_form(server: RunningServer, files: list[tuple[str, tuple[str, bytes, str]]],
              **fields: object) -> httpx.Response:
    data = {"prompt": "a fox", **{name: str(value) for name, value in fields.items()}}
    return httpx.post(server.url + EDITS, files=files, data=data, timeout=120)


def image_part(data: bytes, name: str = "image") -> tuple[str, tuple[str, bytes, str]]:
    return name, (f"{name}.png", data, "image/png")


def ok_images(response: httpx.Response) -> list[np.ndarray]:
    assert response.status_code == 200, response.text
    return [decode_b64(item["b64_json"]) for item in response.json()["data"]]


def test_edits_multipart_default_size_is_the_input_rounded(server) -> None:
    [image] = ok_images(post_form(server, [image_part(png(70, 50))]))
    assert image.shape == (48, 64, 3)  # 70x50 to multiples of 16, as the model needs


def test_edits_large_input_is_scaled_down_to_max_pixels(server) -> None:
    [image] = ok_images(post_form(server, [image_part(png(400, 200))]))
    height, width, _ = image.shape
    assert width * height <= 128 * 128 and width > height


def test_edits_explicit_size_resizes_the_input(server) -> None:
    [image] = ok_images(post_form(server, [image_part(png(70, 50))], size="64x128"))
    assert image.shape == (128, 64, 3)


def test_edits_same_inputs_and_seed_give_the_same_bytes_in_either_form(server) -> None:
    fields = {"seed": 11, "n": 2, "size": "64x64"}
    first = post_form(server, [image_part(png()), image_part(alpha_mask(), "mask")], **fields)
    again = post_form(server, [image_part(png()), image_part(alpha_mask(), "mask")], **fields)
    as_json = httpx.post(server.url + EDITS, timeout=120, json={
        "prompt": "a fox", **fields, "images": [{"image_url": data_url(png())}],
        "mask": {"image_url": data_url(alpha_mask())}})
    images = [[item["b64_json"] for item in answer.json()["data"]]
              for answer in (first, again, as_json)]
    assert images[0] == images[1] == images[2]
    assert images[0][0] != images[0][1]  # seeds 11 and 12
    other_seed = post_form(server, [image_part(png()), image_part(alpha_mask(), "mask")],
                           **{**fields, "seed": 12})
    # Its image is the second of the n=2 answer, up to batched rounding (a batch of 2).
    alone, batched = decode_b64(other_seed.json()["data"][0]["b64_json"]), decode_b64(images[0][1])
    assert np.abs(alone.astype(np.int16) - batched).max() <= 2


def test_edits_inpainting_keeps_every_pixel_outside_the_mask(server) -> None:
    [image] = ok_images(post_form(server, [image_part(png()), image_part(alpha_mask(), "mask")],
                                  num_inference_steps=4, seed=2))
    original = np.asarray(picture()).astype(np.int16)
    assert np.array_equal(image[:, 32:], original[:, 32:])  # PNG: byte-exact where kept
    assert np.abs(image[:, :32].astype(np.int16) - original[:, :32]).mean() > 10


def test_edits_cmyk_input_is_converted_and_served(server) -> None:
    cmyk = encoded(picture().convert("CMYK"), "JPEG")
    [image] = ok_images(post_form(server, [("image", ("in.jpg", cmyk, "image/jpeg"))]))
    assert image.shape == (64, 64, 3)


def _bad(server: RunningServer, case: str) -> httpx.Response:
    gif = ("image", ("in.gif", encoded(picture(), "GIF"), "image/gif"))
    forms = {
        "non-image": ([("image", ("in.png", b"not an image", "image/png"))], {}),
        "truncated": ([image_part(png()[: len(png()) // 2])], {}),
        "gif": ([gif], {}),
        "bmp": ([("image", ("in.bmp", encoded(picture(), "BMP"), "image/bmp"))], {}),
        "bomb": ([image_part(encoded(picture(1024, 1024), "PNG")[:200])], {}),
        "animated": ([image_part(animated_png())], {}),
        "no-image": ([image_part(png(), "mask")], {}),
        "wrong-type": ([image_part(png())], {"n": "two"}),
        "strength": ([image_part(png())], {"strength": "1.5"}),
        "mask-size": ([image_part(png()), image_part(alpha_mask(64, 32), "mask")], {}),
        "two-images": ([image_part(png()), image_part(png())], {}),
    }
    if case == "no-prompt":
        return httpx.post(server.url + EDITS, files=[image_part(png())], timeout=60)
    if case == "mask-as-text":
        return httpx.post(server.url + EDITS, files=[image_part(png())], timeout=60,
                          data={"prompt": "a fox", "mask": "not a file"})
    if case in ("http-url", "file-id"):
        reference = ({"image_url": "http://127.0.0.1/in.png"} if case == "http-url"
                     else {"file_id": "file-123"})
        return httpx.post(server.url + EDITS, json={"prompt": "a fox", "images": [reference]},
                          timeout=60)
    files, fields = forms[case]
    return post_form(server, files, **fields)


@pytest.mark.parametrize(("case", "param", "says"), [
    ("non-image", "image", "not an image"),
    ("truncated", "image", "truncated or corrupt"),
    ("gif", "image", "GIF image; only PNG, JPEG or WebP"),
    ("bmp", "image", "BMP image"),
    ("bomb", "image", "1024x1024 = 1048576 pixels; the limit is 262144"),
    ("animated", "image", "animated"),
    ("no-image", "image", "image is required"),
    ("no-prompt", "prompt", "Field required"),
    ("wrong-type", "n", "valid integer"),
    ("strength", "strength", "less than or equal to 1"),
    ("mask-size", "mask", "must have the image's size"),
    ("mask-as-text", "mask", "must be a file"),
    ("two-images", "image", "takes one image"),
    ("http-url", "images", "SLEEPWELL_FETCH_IMAGE_URLS"),
    ("file-id", "images", "file ids are not supported"),
])
def test_edits_bad_input_gets_a_400_naming_its_param(server, case, param, says) -> None:
    response = _bad(server, case)
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["param"] == param and says in error["message"], error
    assert len(ok_images(post_form(server, [image_part(png())]))) == 1  # harms nothing


def test_edits_oversized_file_is_413_while_it_streams_in(server) -> None:
    """Chunked (no Content-Length), and the body never finished: the 413 arrives while the
    client is still sending, so the server refused it mid-stream, never having it whole."""
    boundary = "sleepwellboundary"
    head = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"image\"; "
            f"filename=\"big.png\"\r\nContent-Type: image/png\r\n\r\n").encode()
    part = head + b"\x89PNG\r\n\x1a\n" + bytes(2 * UPLOAD_LIMIT)
    with socket.create_connection(("127.0.0.1", server.port), timeout=30) as sock:
        sock.sendall(
            f"POST {EDITS} HTTP/1.1\r\nHost: 127.0.0.1\r\nTransfer-Encoding: chunked\r\n"
            f"Content-Type: multipart/form-data; boundary={boundary}\r\n\r\n".encode()
            + f"{len(part):x}\r\n".encode() + part + b"\r\n")  # no closing boundary, no 0
        answer = b""
        while b"\r\n\r\n" not in answer or not answer.rstrip().endswith(b"}"):
            chunk = sock.recv(65536)
            if not chunk:
                break
            answer += chunk
    status_line, _, rest = answer.partition(b"\r\n")
    assert b" 413 " in status_line, answer[:300]
    assert b'"param":"image"' in rest.replace(b" ", b"")


def test_edits_json_form_with_data_urls_serves(server) -> None:
    response = httpx.post(server.url + EDITS, timeout=120, json={
        "prompt": "a fox", "images": [{"image_url": data_url(png(80, 48))}],
        "output_format": "jpeg"})
    assert response.status_code == 200, response.text
    data = base64.b64decode(response.json()["data"][0]["b64_json"])
    assert data[:3] == b"\xff\xd8\xff"  # JPEG as asked
