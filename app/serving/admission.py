"""Checks a request against the limits and the loaded model, then builds a Generation."""

from __future__ import annotations

import asyncio
import secrets
import time

from app.contract.images import MAX_SEED, ImageGenerationRequest, parse_size
from app.errors import InvalidRequest, ModelNotFound
from app.serving.budget import MemoryBudget
from app.serving.generation import Generation, GenerationParams
from app.serving.model import LoadedModel
from app.settings import Settings


def check_model(requested: str | None, served: str) -> None:
    if requested is not None and requested != served:
        raise ModelNotFound(
            f"The model '{requested}' does not exist here; this server serves '{served}'.",
            param="model",
        )


def _size(body: ImageGenerationRequest, settings: Settings, model: LoadedModel) -> tuple[int, int]:
    if body.size is None:
        return model.native_width, model.native_height
    parsed = parse_size(body.size)
    assert parsed is not None  # the schema already checked the shape
    width, height = parsed
    if width < 8 or height < 8 or width % 8 or height % 8:
        raise InvalidRequest(
            f"size '{body.size}' is invalid: width and height must be positive multiples of 8.",
            param="size",
        )
    if width * height > settings.max_pixels:
        raise InvalidRequest(
            f"size '{body.size}' has {width * height} pixels; the limit is "
            f"{settings.max_pixels} (SLEEPWELL_MAX_PIXELS).",
            param="size",
        )
    return width, height


def _check_ranges(body: ImageGenerationRequest, settings: Settings) -> None:
    if not 1 <= body.n <= settings.max_images:
        raise InvalidRequest(
            f"n must be between 1 and {settings.max_images}; got {body.n}.", param="n"
        )
    if len(body.prompt) > settings.max_prompt_chars:
        raise InvalidRequest(
            f"prompt has {len(body.prompt)} characters; the limit is {settings.max_prompt_chars}.",
            param="prompt",
        )
    if body.negative_prompt is not None and len(body.negative_prompt) > settings.max_prompt_chars:
        raise InvalidRequest(
            f"negative_prompt is longer than {settings.max_prompt_chars} characters.",
            param="negative_prompt",
        )
    steps = body.num_inference_steps
    if steps is not None and not 1 <= steps <= settings.max_steps:
        raise InvalidRequest(
            f"num_inference_steps must be between 1 and {settings.max_steps}; got {steps}.",
            param="num_inference_steps",
        )


def check_budget(
    width: int, height: int, n: int, settings: Settings, budget: MemoryBudget | None = None
) -> None:
    """Refuse, before it reaches the GPU, a request that cannot fit the budgets."""
    pixels = width * height * n
    param = "n" if n > 1 else "size"
    if pixels > settings.max_request_pixels:
        raise InvalidRequest(
            f"{n} image(s) of {width}x{height} is {pixels} pixels; one request may ask for at "
            f"most {settings.max_request_pixels} (SLEEPWELL_MAX_REQUEST_PIXELS). "
            "Ask for fewer or smaller images.",
            param=param,
        )
    if budget is None:
        return
    if budget.oom_ceiling_pixels is not None and pixels >= budget.oom_ceiling_pixels:
        raise InvalidRequest(
            f"{n} image(s) of {width}x{height} is {pixels} pixels; a request of "
            f"{budget.oom_ceiling_pixels} pixels already ran out of GPU memory on this "
            "worker. Ask for fewer or smaller images.",
            param=param, code="insufficient_gpu_memory",
        )
    needed = pixels * settings.vram_bytes_per_pixel
    if budget.vram_bytes is not None and needed > budget.vram_bytes:
        raise InvalidRequest(
            f"{n} image(s) of {width}x{height} need about {needed / 1024**3:.1f} GiB of GPU "
            f"memory (estimate: SLEEPWELL_VRAM_BYTES_PER_PIXEL={settings.vram_bytes_per_pixel}"
            f"); this worker can spend {budget.vram_bytes / 1024**3:.1f} GiB. "
            "Ask for fewer or smaller images.",
            param=param, code="insufficient_gpu_memory",
        )


def seeds_for(body: ImageGenerationRequest) -> list[int]:
    if body.seed is None:
        return [secrets.randbelow(MAX_SEED + 1) for _ in range(body.n)]
    return [(body.seed + index) % (MAX_SEED + 1) for index in range(body.n)]


def build_generation(
    body: ImageGenerationRequest, settings: Settings, model: LoadedModel, request_id: str,
    arrived_at: float | None = None, timeout_s: float | None = None,
) -> Generation:
    """Validate against limits and the model; raises InvalidRequest naming the parameter.

    ``timeout_s``: the deadline from arrival; SLEEPWELL_REQUEST_TIMEOUT_S unless given (a
    job passes SLEEPWELL_JOB_TIMEOUT_S: nobody holds a connection open for it)."""
    check_model(body.model, model.name)
    _check_ranges(body, settings)
    width, height = _size(body, settings, model)
    check_budget(width, height, body.n, settings, model.budget)
    arrived_at = time.monotonic() if arrived_at is None else arrived_at
    params = GenerationParams(
        width=width,
        height=height,
        steps=body.num_inference_steps or settings.default_steps,
        guidance_scale=(
            settings.default_guidance_scale if body.guidance_scale is None else body.guidance_scale
        ),
        output_format=body.output_format,
    )
    future = asyncio.get_running_loop().create_future()
    # Mark exceptions as retrieved: a cancelled request's answer is never read by anyone.
    future.add_done_callback(lambda done: done.cancelled() or done.exception())
    return Generation(
        request_id=request_id,
        prompt=body.prompt,
        negative_prompt=body.negative_prompt,
        seeds=seeds_for(body),
        params=params,
        deadline=arrived_at + (settings.request_timeout_s if timeout_s is None else timeout_s),
        future=future,
        arrived_at=arrived_at,
    )
