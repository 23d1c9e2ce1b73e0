"""Partial images and usage through the official ``openai`` SDK, sync and async, against a
real 2-worker gunicorn: the SDK must yield its own typed event classes, as against OpenAI."""

from __future__ import annotations

import base64
import io
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from openai import AsyncOpenAI, OpenAI
from openai.types import (
    ImageEditCompletedEvent,
    ImageEditPartialImageEvent,
    ImageGenCompletedEvent,
    ImageGenPartialImageEvent,
)
from PIL import Image

from tests.support.access_log import access_entries
from tests.support.server import RunningServer, gunicorn_server
from tests.support.waiting import wait_until

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
PROMPT = "a red fox in the snow"


@pytest.fixture(scope="module")
def server() -> Iterator[RunningServer]:
    env = {"SLEEPWELL_FAULT_INJECTION": "true", "SLEEPWELL_REQUEST_TIMEOUT_S": "60"}
    with gunicorn_server(env, workers=2) as running:
        yield running


@pytest.fixture(scope="module")
def tokenizer(demo_model_dir) -> Any:
    from transformers import CLIPTokenizer

    return CLIPTokenizer.from_pretrained(Path(demo_model_dir) / "tokenizer")


def client(server: RunningServer) -> OpenAI:
    return OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0, timeout=60)


def async_client(server: RunningServer) -> AsyncOpenAI:
    return AsyncOpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0, timeout=60)


def png(b64: str) -> Image.Image:
    data = base64.b64decode(b64)
    assert data.startswith(PNG_MAGIC)
    image = Image.open(io.BytesIO(data))
    image.load()
    return image


def input_png(color: tuple[int, int, int] = (200, 40, 40)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (64, 64), color).save(buffer, format="PNG")
    return buffer.getvalue()


def check_partials_then_completed(events: list[Any], partial_class: type, completed_class: type,
                                  partials: int, tokens: int) -> None:
    """Every event is one of the SDK's typed classes: the partials first, then the image."""
    assert [type(event) for event in events] == [partial_class] * partials + [completed_class]
    assert [event.partial_image_index for event in events[:-1]] == list(range(partials))
    for event in events:
        assert event.size == "64x64" and event.output_format == "png"
        assert event.background == "opaque" and event.quality == "auto"
        assert event.created_at > 0
        assert png(event.b64_json).size == (64, 64)
    completed = events[-1]
    assert completed.usage.input_tokens == tokens == completed.usage.total_tokens
    assert completed.usage.input_tokens_details.text_tokens == tokens
    assert completed.usage.input_tokens_details.image_tokens == 0
    assert completed.usage.output_tokens == 0


def test_sdk_generate_stream_partial_images_yields_typed_partials_then_completed(
    server, tokenizer,
) -> None:
    events = list(client(server).images.generate(
        prompt=PROMPT, size="64x64", stream=True, partial_images=2,  # type: ignore[arg-type]
        extra_body={"seed": 4, "num_inference_steps": 6},
    ))
    check_partials_then_completed(events, ImageGenPartialImageEvent, ImageGenCompletedEvent,
                                  2, len(tokenizer(PROMPT).input_ids))
    assert png(events[0].b64_json).tobytes() != png(events[-1].b64_json).tobytes()


async def test_async_sdk_generate_stream_partial_images_yields_typed_events(
    server, tokenizer,
) -> None:
    stream = await async_client(server).images.generate(
        prompt=PROMPT, size="64x64", stream=True, partial_images=2,  # type: ignore[arg-type]
        extra_body={"seed": 4, "num_inference_steps": 6},
    )
    events = [event async for event in stream]
    check_partials_then_completed(events, ImageGenPartialImageEvent, ImageGenCompletedEvent,
                                  2, len(tokenizer(PROMPT).input_ids))


def test_sdk_edit_stream_partial_images_yields_typed_edit_events(server, tokenizer) -> None:
    # 10 steps at the default strength run 7: three previews fit (after steps 2, 4 and 5).
    events = list(client(server).images.edit(
        image=("in.png", input_png(), "image/png"), prompt=PROMPT, size="64x64",
        stream=True, partial_images=3,
        extra_body={"seed": 4, "num_inference_steps": 10},
    ))
    check_partials_then_completed(events, ImageEditPartialImageEvent, ImageEditCompletedEvent,
                                  3, len(tokenizer(PROMPT).input_ids))


async def test_async_sdk_edit_stream_partial_images_yields_typed_edit_events(
    server, tokenizer,
) -> None:
    stream = await async_client(server).images.edit(
        image=("in.png", input_png((20, 90, 200)), "image/png"), prompt=PROMPT,
        stream=True, partial_images=3,
        extra_body={"seed": 5, "num_inference_steps": 10},
    )
    events = [event async for event in stream]
    check_partials_then_completed(events, ImageEditPartialImageEvent, ImageEditCompletedEvent,
                                  3, len(tokenizer(PROMPT).input_ids))


def test_sdk_stream_without_partials_sends_only_typed_completed_events(server) -> None:
    events = list(client(server).images.generate(
        prompt=PROMPT, n=2, size="64x64", stream=True,  # type: ignore[arg-type]
        extra_body={"seed": 11, "num_inference_steps": 3},
    ))
    # No sleepwell.progress: the SDK would cast it to a partial image with no image.
    assert [type(event) for event in events] == [ImageGenCompletedEvent] * 2


def test_sdk_json_answer_carries_true_usage(server, tokenizer) -> None:
    negative = "blurry, low quality"
    result = client(server).images.generate(
        prompt=PROMPT, n=2, size="64x64",
        extra_body={"seed": 1, "num_inference_steps": 2, "negative_prompt": negative,
                    "partial_images": 2},  # without stream: ignored, as OpenAI does
    )
    assert result.usage is not None
    tokens = len(tokenizer(PROMPT).input_ids) + len(tokenizer(negative).input_ids)
    assert result.usage.input_tokens == tokens == result.usage.total_tokens  # once, not per n
    assert result.usage.input_tokens_details.text_tokens == tokens
    assert result.usage.input_tokens_details.image_tokens == 0
    assert result.usage.output_tokens == 0


def raw_stream(server: RunningServer, **fields: Any) -> tuple[httpx.Response, list[str]]:
    body = {"prompt": PROMPT, "size": "64x64", "stream": True, **fields}
    with httpx.stream("POST", server.url + "/v1/images/generations", json=body,
                      timeout=60) as answer:
        return answer, list(answer.iter_lines())


def events_of(lines: list[str]) -> list[tuple[str, dict[str, Any]]]:
    names = [line[6:].strip() for line in lines if line.startswith("event:")]
    data = [json.loads(line[5:]) for line in lines if line.startswith("data:")]
    return list(zip(names, data, strict=True))


def test_stream_progress_opt_in_adds_progress_events_between_partials(server) -> None:
    _, lines = raw_stream(server, partial_images=2, num_inference_steps=6, stream_progress=True,
                          n=2, seed=8)
    names = [name for name, _ in events_of(lines)]
    assert "sleepwell.progress" in names
    partials = [data for name, data in events_of(lines)
                if name == "image_generation.partial_image"]
    # n=2: each preview is sent for each image, with our index and seed.
    assert [(p["partial_image_index"], p["index"], p["seed"]) for p in partials] == [
        (0, 0, 8), (0, 1, 9), (1, 0, 8), (1, 1, 9)]
    assert names[-2:] == ["image_generation.completed"] * 2


def test_stream_keep_alive_is_an_sse_comment_without_progress(server) -> None:
    # A 6 s run: longer than the 5 s keep-alive period.
    _, lines = raw_stream(server, prompt="[[slow=0.75]] slow", num_inference_steps=8)
    assert ": keep-alive" in lines
    assert [name for name, _ in events_of(lines)] == ["image_generation.completed"]


def test_stream_access_line_counts_partials_and_their_decode_time(server) -> None:
    answer, lines = raw_stream(server, partial_images=3, num_inference_steps=8)
    assert len([n for n, _ in events_of(lines) if n == "image_generation.partial_image"]) == 3
    request_id = answer.headers["x-request-id"]
    [line] = wait_until(
        lambda: [e for e in access_entries(server.log()) if e.get("request_id") == request_id],
        10, what="the access line")
    assert line["partial_images_sent"] == 3 and line["preview_decode_ms"] > 0


def test_openapi_describes_partial_events_and_usage(server) -> None:
    schema = httpx.get(server.url + "/openapi.json", timeout=10).json()
    operation = schema["paths"]["/v1/images/generations"]["post"]
    event_schema = operation["responses"]["200"]["content"]["text/event-stream"]["schema"]
    assert {"image_generation.partial_image", "image_edit.partial_image",
            "image_edit.completed"} <= set(event_schema["properties"]["event"]["enum"])
    assert "usage" in schema["components"]["schemas"]["ImageGenerationResponse"]["properties"]
    request = schema["components"]["schemas"]["ImageGenerationRequest"]["properties"]
    assert request["partial_images"]["maximum"] == 3


@pytest.mark.parametrize("value", [4, -1, "2", 1.5])
def test_partial_images_out_of_range_or_not_an_integer_is_a_400(server, value) -> None:
    response = httpx.post(server.url + "/v1/images/generations", timeout=30, json={
        "prompt": PROMPT, "size": "64x64", "stream": True, "partial_images": value})
    assert response.status_code == 400
    assert response.json()["error"]["param"] == "partial_images"


def test_edit_stream_progress_counts_the_steps_the_edit_really_runs(server) -> None:
    form = {"prompt": PROMPT, "stream": "true", "stream_progress": "true", "strength": "0.5",
            "num_inference_steps": "10", "partial_images": "1"}
    with httpx.stream("POST", server.url + "/v1/images/edits", data=form, timeout=60,
                      files={"image": ("in.png", input_png(), "image/png")}) as answer:
        events = events_of(list(answer.iter_lines()))
    progress = [data for name, data in events if name == "sleepwell.progress"]
    assert {p["steps"] for p in progress} == {5}  # strength 0.5 of 10 steps
    assert progress[-1]["step"] == 5
    [partial] = [data for name, data in events if name == "image_edit.partial_image"]
    assert partial["partial_image_index"] == 0
    assert [name for name, _ in events][-1] == "image_edit.completed"
