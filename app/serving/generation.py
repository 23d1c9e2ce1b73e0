"""A queued generation request and the parameters that decide what it can batch with."""

from __future__ import annotations

import asyncio
import math
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from app.contract.images import OutputFormat, WorkKind
from app.errors import DeadlineExceeded
from app.uploads.inputs import EditInputs

if TYPE_CHECKING:
    from app.serving.previews import PreviewFeed


@dataclass(frozen=True)
class GenerationParams:
    width: int
    height: int
    steps: int
    guidance_scale: float
    output_format: OutputFormat
    kind: WorkKind = WorkKind.GENERATE
    partial_images: int = 0  # previews to send while it denoises (streams only), 0-3
    strength: float = 1.0  # edits: how much of the input is redrawn (1.0: generations)
    has_mask: bool = False  # edits: inpainting (another pipeline) rather than img2img

    @property
    def denoising_steps(self) -> int:
        """Steps the pipeline really runs: image-to-image skips the first (1 - strength)
        of them (diffusers: int(steps * strength)); generations run them all."""
        if self.kind is WorkKind.GENERATE:
            return self.steps
        return min(self.steps, int(self.steps * self.strength))

    @property
    def batch_key(self) -> tuple[Any, ...]:
        """Requests with equal keys can share one pipeline call."""
        return (self.kind, self.width, self.height, self.steps, self.guidance_scale,
                self.output_format, self.strength, self.has_mask)


@dataclass(eq=False)
class Generation:
    """One client request. Its future is settled exactly once, by the runner, on the loop."""

    request_id: str
    prompt: str
    negative_prompt: str | None
    seeds: list[int]
    params: GenerationParams
    deadline: float  # time.monotonic()
    future: asyncio.Future[list[Any]]
    arrived_at: float = field(default_factory=time.monotonic)
    started_at: float | None = None
    finished_at: float | None = None
    steps_done: int = 0
    inputs: EditInputs | None = None  # edits: the image, and the mask to inpaint
    previews: PreviewFeed | None = None  # set when someone takes its partial images
    text_tokens: int = 0  # its prompts as the model's tokenizer counts them (serving/usage.py)

    @property
    def image_count(self) -> int:
        return len(self.seeds)

    @property
    def pixels(self) -> int:
        """Output pixels of the whole request: what its GPU memory grows with."""
        return self.params.width * self.params.height * self.image_count

    def abandoned(self) -> bool:
        """Nobody waits for this any more: answered (timeout/cancel) or past its deadline.

        Read from the inference thread; both facts only ever flip from False to True.
        """
        return self.future.done() or time.monotonic() >= self.deadline

    def queue_seconds(self) -> float:
        return (self.started_at or time.monotonic()) - self.arrived_at

    def inference_seconds(self) -> float:
        if self.started_at is None:
            return 0.0
        return (self.finished_at or time.monotonic()) - self.started_at


def deadline_exceeded(generation: Generation) -> DeadlineExceeded:
    """The one answer for a request whose deadline passed, queued or running."""
    limit = math.ceil(generation.deadline - generation.arrived_at)
    return DeadlineExceeded(
        f"The request did not finish within {limit}s (SLEEPWELL_REQUEST_TIMEOUT_S)."
    )
