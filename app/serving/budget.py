"""What one worker can afford: GPU memory per request, and what an out-of-memory taught it.

One ``MemoryBudget`` belongs to one loaded model, so everything it learned is forgotten when
the model changes (a hot swap or a new worker). The inference thread writes the figures it
observes; admission on the event loop reads them. Each field is a single int, so a reader
never sees half an update.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class MemoryBudget:
    # Bytes a request may use on the GPU (``None``: not a GPU, or no budget applies).
    vram_bytes: int | None = None
    # The largest output (width x height x images) one pipeline call has produced here.
    largest_success_pixels: int = 0
    # A request alone this large ran out of memory: larger-or-equal ones are refused.
    oom_ceiling_pixels: int | None = None

    def record_success(self, pixels: int) -> None:
        if pixels > self.largest_success_pixels:
            self.largest_success_pixels = pixels

    def explains_oom(self, pixels: int) -> bool:
        """True when an OOM of a lone request this large is the request's fault, not ours.

        Nothing this large has fit on this model yet, so running out of memory says the
        admission budget was too generous; it says nothing about the worker's health.
        """
        return pixels > self.largest_success_pixels

    def learn_oom(self, pixels: int) -> None:
        if self.oom_ceiling_pixels is None or pixels < self.oom_ceiling_pixels:
            self.oom_ceiling_pixels = pixels
