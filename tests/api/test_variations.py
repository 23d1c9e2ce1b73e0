"""POST /v1/images/variations over real gunicorn, on the demo model and on a tiny SDXL: both
serve every image route (generate, edit, inpaint, variation)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest

from tests.support.edit_inputs import alpha_mask, decode_b64, picture, png
from tests.support.server import ROOT, RunningServer, gunicorn_server
from tests.support.tiny_sdxl import ensure_tiny_sdxl

VARIATIONS = "/v1/images/variations"
TINY_SDXL_DIR = ROOT / ".cache" / "tiny-sdxl"


@pytest.fixture(scope="module")
def server() -> Iterator[RunningServer]:
    with gunicorn_server() as running:
        yield running


def vary(server: RunningServer, image: bytes, **fields: object) -> httpx.Response:
    return httpx.post(server.url + VARIATIONS, files={"image": ("in.png", image, "image/png")},
                      data={name: str(value) for name, value in fields.items()}, timeout=120)


def test_variations_return_n_images_of_the_input_size_differing_by_seed(server) -> None:
    response = vary(server, png(80, 48), n=2, seed=4)
    assert response.status_code == 200, response.text
    images = [decode_b64(item["b64_json"]) for item in response.json()["data"]]
    assert [image.shape for image in images] == [(48, 80, 3)] * 2
    assert not np.array_equal(images[0], images[1])
    assert [item["seed"] for item in response.json()["data"]] == [4, 5]


def test_variations_same_seed_same_bytes(server) -> None:
    first, again = (vary(server, png(), seed=9, strength=0.5) for _ in range(2))
    assert first.json()["data"] == again.json()["data"]


@pytest.mark.parametrize(("send", "param", "says"), [
    ({"json": {"image": "x"}}, "image", "multipart/form-data"),
    ({"files": {"mask": ("m.png", b"x", "image/png")}}, "mask", "must be a text field"),
    ({"files": {"image": ("i.png", png(), "image/png")}, "data": {"n": "0"}}, "n", "between 1"),
    ({"files": {"image": ("i.png", png(), "image/png")}, "data": {"strength": "x"}},
     "strength", "valid number"),
    ({"files": {"image": ("i.png", png(), "image/png")}, "data": {"size": "huge"}},
     "size", "512x512"),
    ({"files": {"image": ("i.gif", b"GIF89a....", "image/gif")}}, "image", "GIF"),
])
def test_variations_bad_input_gets_a_400_naming_its_param(server, send, param, says) -> None:
    response = httpx.post(server.url + VARIATIONS, timeout=60, **send)
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["param"] == param and says in error["message"], error


@pytest.fixture(scope="module")
def tiny_sdxl() -> Iterator[RunningServer]:
    model_dir = ensure_tiny_sdxl(TINY_SDXL_DIR)
    with gunicorn_server({"SLEEPWELL_MODEL": str(model_dir)}) as running:
        yield running


def test_variations_tiny_sdxl_serves_every_image_route(tiny_sdxl) -> None:
    url = tiny_sdxl.url
    assert httpx.get(url + "/v1/models", timeout=30).json()["data"][0]["id"] == Path(
        TINY_SDXL_DIR).name
    image = ("in.png", png(), "image/png")
    mask = ("mask.png", alpha_mask(), "image/png")
    answers = {
        "generate": httpx.post(url + "/v1/images/generations", timeout=120,
                               json={"prompt": "a fox", "size": "64x64"}),
        "edit": httpx.post(url + "/v1/images/edits", timeout=120, files={"image": image},
                           data={"prompt": "a fox"}),
        "inpaint": httpx.post(url + "/v1/images/edits", timeout=120,
                              files={"image": image, "mask": mask}, data={"prompt": "a fox"}),
        "variation": httpx.post(url + VARIATIONS, timeout=120, files={"image": image}),
    }
    for route, answer in answers.items():
        assert answer.status_code == 200, (route, answer.text)
        assert decode_b64(answer.json()["data"][0]["b64_json"]).shape == (64, 64, 3), route
    kept = decode_b64(answers["inpaint"].json()["data"][0]["b64_json"])[:, 32:]
    assert np.array_equal(kept, np.asarray(picture())[:, 32:])  # the mask keeps the right half
