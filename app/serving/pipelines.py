"""Which pipeline a batch runs on, and the arguments only that pipeline takes.

Edits run on pipelines made from the loaded one with diffusers' ``from_pipe``: they reuse its
modules (UNet, VAE, text encoders), so they cost no extra weights or GPU memory; they are
made once per loaded model, on the inference thread, the first time an edit needs one.

- generate: the text-to-image pipeline, ``width``/``height``.
- edit without a mask, and variation: image-to-image (``image``, ``strength``). It takes no
  size: the input is resized to the output size first.
- edit with a mask: inpainting (``image``, ``mask_image``, ``strength``, size). diffusers'
  inpainting pipeline also serves ordinary 4-channel UNets (it blends the masked latents at
  each step), and inpainting UNets. Its output is decoded by the VAE, which changes every
  pixel a little, so outside the mask the original pixels are pasted back: pixels the mask
  keeps come back exactly as sent (a PNG answer is byte-identical there).
- strength 0 changes nothing, and diffusers refuses it (0 steps): the input comes back,
  resized, without a pipeline call.
"""

from __future__ import annotations

import logging
import weakref
from dataclasses import dataclass
from typing import Any

import numpy as np
from PIL import Image

from app.contract.images import WorkKind
from app.serving.generation import Generation

# base pipeline -> {"img2img" | "inpaint": derived pipeline}; forgotten with the base model.
_DERIVED: weakref.WeakKeyDictionary[Any, dict[str, Any]] = weakref.WeakKeyDictionary()


class _NothingKeptInFloat32(logging.Filter):
    """SDXL's edit pipelines cast the VAE to float32 and back around every encode, and
    diffusers warns at each cast even when its list of modules to keep is empty: two log
    lines per request that say nothing. Only that empty-list form is dropped."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "should be kept in float32: []" not in record.getMessage()


_CAST_WARNING_FILTER = _NothingKeptInFloat32()


def derived_pipeline(base: Any, inpaint: bool) -> Any:
    """The img2img or inpainting pipeline sharing ``base``'s modules; made once."""
    from diffusers import AutoPipelineForImage2Image, AutoPipelineForInpainting

    logging.getLogger("diffusers.models.modeling_utils").addFilter(_CAST_WARNING_FILTER)
    cache = _DERIVED.setdefault(base, {})
    name = "inpaint" if inpaint else "img2img"
    if name not in cache:
        factory = AutoPipelineForInpainting if inpaint else AutoPipelineForImage2Image
        pipeline = factory.from_pipe(base)
        pipeline.set_progress_bar_config(disable=True)
        cache[name] = pipeline
    return cache[name]


@dataclass(frozen=True)
class PipelineCall:
    """One batch's pipeline and its own arguments (the shared ones are the engine's)."""

    pipeline: Any
    kwargs: dict[str, Any]
    originals: np.ndarray | None = None  # inpainting: input pixels, (n, h, w, 3) uint8
    keep: np.ndarray | None = None  # inpainting: True where the mask keeps the input

    @property
    def unchanged(self) -> bool:
        """strength 0: nothing to redraw, nothing to run."""
        return self.kwargs.get("strength") == 0.0

    def finish(self, pixels: np.ndarray) -> np.ndarray:
        """The pipeline's uint8 pixels, with the input pasted back where the mask keeps it."""
        if self.originals is None or self.keep is None:
            return pixels
        return np.where(self.keep[..., None], self.originals, pixels)

    def passthrough(self) -> np.ndarray:
        """strength 0's answer: the resized inputs themselves."""
        images = self.kwargs["image"]
        return np.stack([np.asarray(image, dtype=np.uint8) for image in images])


def plan_call(base: Any, generations: list[Generation]) -> PipelineCall:
    """The pipeline for this batch (one kind: the batch key says so) and its arguments."""
    params = generations[0].params
    size = (params.width, params.height)
    if params.kind is WorkKind.GENERATE:
        return PipelineCall(base, {"width": params.width, "height": params.height})
    inputs = [g.inputs for g in generations for _ in g.seeds]
    assert all(item is not None for item in inputs), "an edit without its image"
    images = [item.image.resize(size, Image.Resampling.LANCZOS) for item in inputs if item]
    kwargs: dict[str, Any] = {"image": images, "strength": params.strength}
    if not params.has_mask:
        return PipelineCall(derived_pipeline(base, inpaint=False), kwargs)
    masks = [item.mask.resize(size, Image.Resampling.NEAREST) for item in inputs
             if item and item.mask]
    kwargs |= {"mask_image": masks, "width": params.width, "height": params.height}
    keep = np.stack([np.asarray(mask) < 128 for mask in masks])
    originals = np.stack([np.asarray(image, dtype=np.uint8) for image in images])
    return PipelineCall(derived_pipeline(base, inpaint=True), kwargs, originals, keep)
