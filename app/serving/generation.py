"""A queued generation request and the parameters that decide what it can batch with."""

from __future__ import annotations

import asyncio
import math
import time
from dataclasses import dataclass, field
from typing import Any

from app.contract.images import OutputFormat, WorkKind
from app.errors import DeadlineExceeded


@dataclass(frozen=True)
class GenerationParams:
    width: int
    height: int
    steps: int
    guidance_scale: float
    output_format: OutputFormat
    kind: WorkKind = WorkKind.GENERATE
    partial_images: int = 0  # previews to send while it denoises (streams only), 0-3

    @property
    def batch_key(self) -> tuple[Any, ...]:
        """Requests with equal keys can share one pipeline call."""
        return (self.kind, self.width, self.height, self.steps, self.guidance_scale,
                self.output_format)


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
