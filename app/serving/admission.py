"""Checks a request against the limits and the loaded model, then builds a Generation."""

from __future__ import annotations

import asyncio
import math
import secrets
import time
from collections.abc import Callable
from dataclasses import replace

from app.contract.edits import ImageEditRequest, ImageVariationRequest
from app.contract.images import (
    MAX_SEED,
    ImageGenerationRequest,
    ImageRequestBase,
    PromptedImageRequest,
    WorkKind,
    parse_size,
)
from app.errors import InvalidRequest, ModelNotFound
from app.serving.budget import MemoryBudget
from app.serving.generation import Generation, GenerationParams
from app.serving.model import LoadedModel
from app.serving.previews import PreviewFeed
from app.settings import Settings
from app.uploads.inputs import EditInputs

# An edit with a mask redraws the masked area whole by default, as OpenAI's edits do.
INPAINT_STRENGTH = 1.0


def check_model(requested: str | None, served: str) -> None:
    if requested is not None and requested != served:
        raise ModelNotFound(
            f"The model '{requested}' does not exist here; this server serves '{served}'.",
            param="model",
        )


def _size(size: str | None, settings: Settings, default: tuple[int, int]) -> tuple[int, int]:
    if size is None:
        return default
    parsed = parse_size(size)
    assert parsed is not None  # the schema already checked the shape
    width, height = parsed
    if width < 8 or height < 8 or width % 8 or height % 8:
        raise InvalidRequest(
            f"size '{size}' is invalid: width and height must be positive multiples of 8.",
            param="size",
        )
    if width * height > settings.max_pixels:
        raise InvalidRequest(
            f"size '{size}' has {width * height} pixels; the limit is "
            f"{settings.max_pixels} (SLEEPWELL_MAX_PIXELS).",
            param="size",
        )
    return width, height


def _check_ranges(body: ImageRequestBase, settings: Settings) -> None:
    if not 1 <= body.n <= settings.max_images:
        raise InvalidRequest(
            f"n must be between 1 and {settings.max_images}; got {body.n}.", param="n"
        )
    if isinstance(body, PromptedImageRequest):
        _check_prompted(body, settings)


def _check_prompted(body: PromptedImageRequest, settings: Settings) -> None:
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


def seeds_for(body: ImageRequestBase) -> list[int]:
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
    native = (model.native_width, model.native_height)
    params = _admit(body, settings, model, _size(body.size, settings, native), WorkKind.GENERATE)
    return _queued(body, body.prompt, params, settings, request_id, arrived_at, timeout_s)


def build_edit(
    body: ImageEditRequest, inputs: EditInputs, settings: Settings, model: LoadedModel,
    request_id: str, arrived_at: float | None = None, timeout_s: float | None = None,
) -> Generation:
    """An edit: img2img, or inpainting with a mask. Checked as a generation is."""
    size = _size(body.size, settings, input_size(inputs.size, settings, model))
    masked = inputs.mask is not None
    # Without a mask, SLEEPWELL_EDIT_STRENGTH (app/settings.py says why its default).
    strength = body.strength if body.strength is not None else (
        INPAINT_STRENGTH if masked else settings.edit_strength)
    params = _with_strength(_admit(body, settings, model, size, WorkKind.EDIT), strength, settings,
                            explicit_steps=body.num_inference_steps is not None)
    params = replace(params, has_mask=masked)
    generation = _queued(body, body.prompt, params, settings, request_id, arrived_at, timeout_s)
    generation.inputs = inputs
    return generation


def build_variation(
    body: ImageVariationRequest, inputs: EditInputs, settings: Settings, model: LoadedModel,
    request_id: str, arrived_at: float | None = None, timeout_s: float | None = None,
) -> Generation:
    """A variation: img2img of the image with an empty prompt at the variation strength."""
    size = _size(body.size, settings, input_size(inputs.size, settings, model))
    strength = settings.variation_strength if body.strength is None else body.strength
    params = _with_strength(_admit(body, settings, model, size, WorkKind.VARIATION), strength,
                            settings, explicit_steps=False)
    generation = _queued(body, "", params, settings, request_id, arrived_at, timeout_s)
    generation.inputs = inputs
    return generation


def _with_strength(params: GenerationParams, strength: float, settings: Settings, *,
                   explicit_steps: bool) -> GenerationParams:
    """Image-to-image runs int(steps * strength) of its steps (diffusers' rule); none at all
    fails inside the pipeline. A default step count (SLEEPWELL_DEFAULT_STEPS, e.g. 1 for a
    turbo model) is raised to the fewest that run one; a request's own is refused."""
    steps = params.steps
    if strength > 0 and int(steps * strength) < 1:
        if explicit_steps:
            raise InvalidRequest(
                f"num_inference_steps={steps} at strength {strength:g} runs no denoising step "
                "(img2img runs int(steps * strength)); raise either, or send strength 0 to "
                "get the image back unchanged.", param="num_inference_steps",
            )
        steps = math.ceil(1 / strength)
        steps += int(steps * strength) < 1  # float rounding: 1 / 0.3 * 0.3 < 1
        if steps > settings.max_steps:
            raise InvalidRequest(
                f"strength {strength:g} is too small to run one denoising step within "
                f"{settings.max_steps} steps (SLEEPWELL_MAX_STEPS); send strength 0 to get "
                "the image back unchanged.", param="strength",
            )
    return replace(params, strength=strength, steps=steps)


def input_size(size: tuple[int, int], settings: Settings, model: LoadedModel) -> tuple[int, int]:
    """An input's size as an output size: rounded to the model's multiple (8 latent pixels,
    so every UNet level divides it) and scaled down, keeping its shape, to SLEEPWELL_MAX_PIXELS."""
    multiple = 8 * int(getattr(model.pipeline, "vae_scale_factor", 8))
    width, height = size
    scale = min(1.0, math.sqrt(settings.max_pixels / (width * height)))

    def fit(side: int, rounding: Callable[[float], int]) -> int:
        return max(multiple, rounding(side * scale / multiple) * multiple)

    fitted = fit(width, round), fit(height, round)
    if fitted[0] * fitted[1] > settings.max_pixels:  # rounding up crossed the limit
        fitted = fit(width, math.floor), fit(height, math.floor)
    return fitted


def _admit(body: ImageRequestBase, settings: Settings, model: LoadedModel,
           size: tuple[int, int], kind: WorkKind) -> GenerationParams:
    """The checks every request passes (model, ranges, memory) and its parameters."""
    check_model(body.model, model.name)
    _check_ranges(body, settings)
    width, height = size
    check_budget(width, height, body.n, settings, model.budget)
    prompted = body if isinstance(body, PromptedImageRequest) else None
    steps = prompted.num_inference_steps if prompted else None
    guidance = prompted.guidance_scale if prompted else None
    return GenerationParams(
        width=width,
        height=height,
        steps=steps or settings.default_steps,
        guidance_scale=settings.default_guidance_scale if guidance is None else guidance,
        output_format=body.output_format,
        kind=kind,
        partial_images=prompted.partial_images if prompted else 0,
    )


def _queued(
    body: ImageRequestBase, prompt: str, params: GenerationParams, settings: Settings,
    request_id: str, arrived_at: float | None, timeout_s: float | None,
) -> Generation:
    arrived_at = time.monotonic() if arrived_at is None else arrived_at
    future = asyncio.get_running_loop().create_future()
    # Mark exceptions as retrieved: a cancelled request's answer is never read by anyone.
    future.add_done_callback(lambda done: done.cancelled() or done.exception())
    return Generation(
        request_id=request_id,
        prompt=prompt,
        negative_prompt=getattr(body, "negative_prompt", None),
        seeds=seeds_for(body),
        params=params,
        deadline=arrived_at + (settings.request_timeout_s if timeout_s is None else timeout_s),
        future=future,
        arrived_at=arrived_at,
        # Only a stream shows partial images (OpenAI ignores partial_images without one).
        previews=PreviewFeed() if getattr(body, "stream", False) and params.partial_images
        else None,
    )
