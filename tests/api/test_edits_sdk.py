"""The official openai SDK, sync and async, against real gunicorn with 2 workers: edits and
variations work as they would against OpenAI (multipart as the SDK sends it)."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import openai
import pytest

from tests.support.edit_inputs import alpha_mask, decode_b64, png
from tests.support.server import RunningServer, gunicorn_server

# The SDK marks images.create_variation deprecated (DALL-E 2 only at OpenAI); we serve it.
pytestmark = pytest.mark.filterwarnings("ignore:deprecated:DeprecationWarning")


@pytest.fixture(scope="module")
def server() -> Iterator[RunningServer]:
    with gunicorn_server({"SLEEPWELL_DEFAULT_STEPS": "2"}, workers=2) as running:
        yield running


def sync_client(server: RunningServer) -> openai.OpenAI:
    return openai.OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0,
                         timeout=120)


def async_client(server: RunningServer) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0,
                              timeout=120)


def test_sdk_edit_image_only_returns_an_image_of_the_input_size(server) -> None:
    result = sync_client(server).images.edit(
        image=("in.png", png(80, 48), "image/png"), prompt="a red fox", n=1,
    )
    assert result.data is not None and len(result.data) == 1
    assert decode_b64(result.data[0].b64_json or "").shape == (48, 80, 3)


def test_sdk_edit_with_mask_returns_n_images(server) -> None:
    result = sync_client(server).images.edit(
        image=("in.png", png(), "image/png"), mask=("mask.png", alpha_mask(), "image/png"),
        prompt="a red fox", n=2, size="64x64",
    )
    assert result.data is not None and len(result.data) == 2


def test_sdk_edit_list_of_two_images_is_refused_naming_image(server) -> None:
    with pytest.raises(openai.BadRequestError) as refused:
        sync_client(server).images.edit(
            image=[("a.png", png(), "image/png"), ("b.png", png(), "image/png")],
            prompt="a red fox",
        )
    error = refused.value.body
    assert isinstance(error, dict) and error["param"] == "image", error
    assert "one image" in error["message"]


def test_sdk_create_variation_returns_images(server) -> None:
    result = sync_client(server).images.create_variation(
        image=("in.png", png(), "image/png"), n=2, size="64x64",
    )
    assert result.data is not None and len(result.data) == 2
    assert decode_b64(result.data[0].b64_json or "").shape == (64, 64, 3)


def test_sdk_async_edit_and_variation_work(server) -> None:
    async def run() -> None:
        client = async_client(server)
        edited, masked, varied = await asyncio.gather(
            client.images.edit(image=("in.png", png(), "image/png"), prompt="a fox"),
            client.images.edit(image=("in.png", png(), "image/png"), prompt="a fox",
                               mask=("mask.png", alpha_mask(), "image/png")),
            client.images.create_variation(image=("in.png", png(), "image/png")),
        )
        for result in (edited, masked, varied):
            assert result.data is not None and len(result.data) == 1
        with pytest.raises(openai.BadRequestError) as refused:
            await client.images.edit(
                image=[("a.png", png(), "image/png"), ("b.png", png(), "image/png")],
                prompt="a fox",
            )
        assert isinstance(refused.value.body, dict) and refused.value.body["param"] == "image"
        await client.close()

    asyncio.run(run())
