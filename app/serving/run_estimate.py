"""How long a generation would take on this worker, from the speed its warm-up measured.

The playground (/ui/config.json) offers only the sizes, and step counts, that finish inside
the request deadline (SLEEPWELL_REQUEST_TIMEOUT_S): on a CPU, 512x512 at 25 steps does not.

The warm-up measures the seconds of one warm denoising step at the model's native size, one
image. A run costs its steps plus about one more for the text encoder and the VAE decode
(``OVERHEAD_STEPS``). A step costs more with more pixels: linearly for the convolutions,
quadratically for self-attention (latent tokens x tokens). One measurement cannot tell the
two apart, so the estimate takes the bound that never undershoots either: linear below the
measured size, quadratic above it. It reads high for sizes far above the native one: on the
CPU demo model (native 64x64, 0.11 s a step here), 256x256 took 4.4 s a step, where the bound
says 27. A batch of n images costs n times one.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from app.serving.model import LoadedModel
    from app.settings import Settings

OVERHEAD_STEPS = 1  # text encoding and VAE decode, counted as one more step (app/ui/estimate.js)
# What the playground offers (before this worker's pixel limit and speed are applied).
PLAYGROUND_SIZES = ((64, 64), (128, 128), (256, 256), (512, 512), (768, 768), (1024, 1024),
                    (512, 768), (768, 512), (768, 1024), (1024, 768))


@dataclass(frozen=True)
class MeasuredSpeed:
    seconds_per_step: float  # one image at ``pixels``
    pixels: int

    def seconds_per_step_at(self, width: int, height: int) -> float:
        ratio = width * height / self.pixels
        return self.seconds_per_step * max(ratio, ratio * ratio)


@dataclass(frozen=True)
class SizeFit:
    """One size on offer: its estimated speed (None: unmeasured) and the most steps one
    image of it can take inside the deadline (0: not even one; capped at max_steps)."""

    width: int
    height: int
    seconds_per_step: float | None
    max_steps: int

    def wire(self) -> dict[str, object]:
        return {"size": f"{self.width}x{self.height}", "seconds_per_step": self.seconds_per_step,
                "max_steps": self.max_steps}


def fit_size(width: int, height: int, speed: MeasuredSpeed | None, deadline_s: float,
             max_steps: int) -> SizeFit:
    if speed is None:
        return SizeFit(width, height, None, max_steps)
    per_step = speed.seconds_per_step_at(width, height)
    steps = math.floor(deadline_s / per_step) - OVERHEAD_STEPS if per_step > 0 else max_steps
    return SizeFit(width, height, per_step, max(0, min(max_steps, steps)))


def offered_sizes(native: tuple[int, int] | None, max_pixels: int) -> list[tuple[int, int]]:
    """The playground's sizes within ``max_pixels``, with the model's native size among them."""
    sizes = [size for size in PLAYGROUND_SIZES if size[0] * size[1] <= max_pixels]
    if native is not None and native not in sizes and native[0] * native[1] <= max_pixels:
        sizes.append(native)
    return sizes


def size_fits(model: LoadedModel | None, settings: Settings) -> list[dict[str, object]]:
    """For /ui/config.json: each offered size, its speed here and the steps it can take."""
    native = (model.native_width, model.native_height) if model is not None else None
    speed = None
    if model is not None and model.warmup_seconds_per_step is not None:
        speed = MeasuredSpeed(model.warmup_seconds_per_step,
                              model.native_width * model.native_height)
    return [fit_size(width, height, speed, settings.request_timeout_s, settings.max_steps).wire()
            for width, height in offered_sizes(native, settings.max_pixels)]
