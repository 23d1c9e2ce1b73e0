"""Partial images: previews of the latents while a generation denoises (``partial_images``).

Previews are spread over the run (``preview_steps``). At those steps, on the inference
thread, only the latents of the requests that asked are decoded to small RGB pixels: by a
tiny autoencoder (TAESD/TAESDXL, diffusers ``AutoencoderTiny``) when one is configured or
the model folder has one, else by a linear latent-to-RGB projection that costs next to
nothing. Resizing to the request's size and PNG/JPEG/WebP encoding happen later in the
encode pool (``render_preview``), so a preview never holds the next denoising step up.
The pixels reach the event loop through the generation's ``PreviewFeed``.

Previews show the latents as they are after the step, noise included: diffusers hands the
step callback the noisy latents, not the model's estimate of the final image, so early
previews are noisier than the final image and later ones converge on it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import weakref
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np
import torch

from app.contract.images import OutputFormat
from app.serving.encoding import encode_image
from app.serving.model import ModelLoadError

if TYPE_CHECKING:
    from app.serving.generation import Generation
    from app.serving.model import LoadedModel

logger = logging.getLogger("sleepwell.previews")

LINEAR = "linear"
PREVIEW_FOLDER = "preview_decoder"  # a model folder's own AutoencoderTiny, if it has one

# Latent -> RGB: each RGB channel a weighted sum of the 4 latent channels (plus a bias), the
# "latent_rgb_factors" of ComfyUI's comfy/latent_formats.py (classes SD15 and SDXL), the same
# cheap approximation as AUTOMATIC1111's "Approx cheap" preview. Rows: latent channels; columns
# R, G, B. They work on the scaled latents the UNet sees, which is what the callback gets.
_SD_FACTORS = (
    (0.3512, 0.2297, 0.3227),
    (0.3250, 0.4974, 0.2350),
    (-0.2829, 0.1762, 0.2721),
    (-0.2120, -0.2616, -0.7177),
)
_SD_BIAS = (0.0, 0.0, 0.0)
_SDXL_FACTORS = (
    (0.3651, 0.4232, 0.4341),
    (-0.2533, -0.0042, 0.1068),
    (0.1076, 0.1111, -0.0362),
    (-0.3165, -0.2492, -0.2188),
)
_SDXL_BIAS = (0.1084, -0.0175, -0.0011)


def preview_steps(steps: int, count: int) -> tuple[int, ...]:
    """After which steps (1-based, ascending) to take ``count`` previews of a ``steps`` run.

    Evenly spread: after round(steps * (i + 1) / (count + 1)) steps. Never after the last
    step (the final image follows at once) nor twice after one step, so a short run may
    give fewer previews than asked; OpenAI's partial_images allows that.
    """
    if steps < 2 or count < 1:
        return ()
    spread = {int(steps * (i + 1) / (count + 1) + 0.5) for i in range(count)}
    return tuple(sorted({min(steps - 1, max(1, step)) for step in spread}))


@dataclass(frozen=True)
class Preview:
    """One partial image of every image of a request, as small RGB pixels (h, w, 3)."""

    index: int  # partial_image_index: 0 for the first preview of the run
    step: int
    images: list[np.ndarray]
    decode_seconds: float  # spent on the inference thread


class PreviewFeed:
    """A generation's previews, handed from the inference thread to the event loop.

    Made on the loop; ``post`` may be called from any thread. Each run of the request posts
    at most ``partial_images`` (3), and a request runs at most twice (a failed batch is
    retried one by one), so nothing here needs a bound.
    """

    def __init__(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._ready: deque[Preview] = deque()

    def post(self, preview: Preview) -> None:
        # A closed loop: the worker is exiting and nobody will look.
        with contextlib.suppress(RuntimeError):
            self._loop.call_soon_threadsafe(self._ready.append, preview)

    def take(self) -> list[Preview]:
        """The previews that arrived since the last call (on the loop)."""
        taken = list(self._ready)
        self._ready.clear()
        return taken


def wants_previews(generation: Generation) -> bool:
    return generation.previews is not None and generation.params.partial_images > 0


def pipeline_inputs(generations: list[Generation]) -> dict[str, Any]:
    """Extra pipeline arguments: hand the step callback the latents when a preview is due."""
    if any(wants_previews(generation) for generation in generations):
        return {"callback_on_step_end_tensor_inputs": ["latents"]}
    return {}


class PreviewDecoder(Protocol):
    name: str

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """Latents (b, c, h, w) -> RGB (b, 3, H, W) in about [-1, 1]."""


class LinearDecoder:
    def __init__(self, factors: tuple[tuple[float, ...], ...], bias: tuple[float, ...]) -> None:
        self.name = LINEAR
        self._factors = torch.tensor(factors, dtype=torch.float32)
        self._bias = torch.tensor(bias, dtype=torch.float32).view(1, 3, 1, 1)

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        if latents.shape[1] != self._factors.shape[0]:
            raise ValueError(f"the linear preview needs {self._factors.shape[0]} latent "
                             f"channels; this model has {latents.shape[1]}")
        factors = self._factors.to(latents.device)
        rgb = torch.einsum("bchw,cr->brhw", latents.float(), factors)
        return rgb + self._bias.to(latents.device)


class TinyAutoencoderDecoder:
    def __init__(self, autoencoder: Any, name: str) -> None:
        self.name = name
        self._autoencoder = autoencoder

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        latents = latents.to(self._autoencoder.dtype)
        return self._autoencoder.decode(latents).sample  # type: ignore[no-any-return]


def linear_decoder(pipeline: Any) -> LinearDecoder:
    """SDXL's factors for an SDXL pipeline, Stable Diffusion 1.x/2.x's for any other."""
    if "XL" in type(pipeline).__name__:
        return LinearDecoder(_SDXL_FACTORS, _SDXL_BIAS)
    return LinearDecoder(_SD_FACTORS, _SD_BIAS)


def decoder_source(choice: str | None, model_source: str) -> str | None:
    """Where to load an AutoencoderTiny from, or None for the linear projection.

    ``choice`` is SLEEPWELL_PREVIEW_DECODER: "linear", a path (or hub id), or unset: the
    model folder's own ``preview_decoder/`` when it has one (the demo model has).
    """
    if choice == LINEAR:
        return None
    if choice:
        return choice
    own = Path(model_source) / PREVIEW_FOLDER
    return str(own) if (own / "config.json").is_file() else None


def load_decoder(choice: str | None, model: LoadedModel) -> PreviewDecoder:
    """Load the preview decoder for ``model`` (on the inference thread, like the model)."""
    source = decoder_source(choice, model.source)
    if source is None:
        return linear_decoder(model.pipeline)
    from diffusers import AutoencoderTiny

    try:
        autoencoder = AutoencoderTiny.from_pretrained(source, dtype=model.dtype)
    except Exception as exc:  # diffusers raises many types for a bad path or id
        raise ModelLoadError(f"could not load the preview decoder {source!r} "
                             f"(SLEEPWELL_PREVIEW_DECODER): {exc}") from exc
    autoencoder = autoencoder.to(model.device).eval()
    logger.info("preview decoder: AutoencoderTiny from %s", source)
    return TinyAutoencoderDecoder(autoencoder, f"autoencoder_tiny:{source}")


class Previewer:
    """The engine's preview maker: one decoder per loaded model, used on the inference thread."""

    def __init__(self, choice: str | None) -> None:
        self.choice = choice
        self._decoders: weakref.WeakKeyDictionary[Any, PreviewDecoder] = (
            weakref.WeakKeyDictionary()
        )

    def decoder(self, model: LoadedModel) -> PreviewDecoder:
        decoder = self._decoders.get(model.pipeline)
        if decoder is None:
            decoder = self._decoders[model.pipeline] = load_decoder(self.choice, model)
        return decoder

    def after_step(self, model: LoadedModel | None, generations: list[Generation], pipe: Any,
                   step_index: int, tensors: dict[str, Any]) -> None:
        """Post a preview for each generation whose schedule has one after this step."""
        latents = tensors.get("latents")
        if model is None or latents is None or not any(map(wants_previews, generations)):
            return
        # An edit runs only strength * steps; the pipeline knows how many it really runs.
        steps = int(getattr(pipe, "num_timesteps", 0) or generations[0].params.denoising_steps)
        offset = 0
        for generation in generations:
            rows = slice(offset, offset + generation.image_count)
            offset += generation.image_count
            if not wants_previews(generation) or generation.abandoned():
                continue
            schedule = preview_steps(steps, generation.params.partial_images)
            if step_index + 1 in schedule:
                self._preview(model, generation, latents[rows], schedule.index(step_index + 1),
                              step_index + 1)

    def _preview(self, model: LoadedModel, generation: Generation, latents: torch.Tensor,
                 index: int, step: int) -> None:
        started = time.perf_counter()
        try:
            rgb = self.decoder(model).decode(latents)
            pixels = rgb.float().add(1).div(2).clamp(0, 1).mul(255).round().to(torch.uint8)
            images = list(pixels.permute(0, 2, 3, 1).contiguous().cpu().numpy())
        except Exception as exc:  # a preview is a nicety: the generation goes on without it
            logger.warning("no preview for request_id=%s: %s", generation.request_id, exc)
            return
        preview = Preview(index, step, images, time.perf_counter() - started)
        assert generation.previews is not None  # wants_previews() checked it
        generation.previews.post(preview)


def render_preview(pixels: np.ndarray, width: int, height: int,
                   output_format: OutputFormat) -> str:
    """Base64 image of one preview at the request's size (in the encode pool)."""
    from PIL import Image

    if pixels.shape[:2] != (height, width):
        resized = Image.fromarray(pixels).resize((width, height), Image.Resampling.BILINEAR)
        pixels = np.asarray(resized)
    return encode_image(pixels, output_format)
