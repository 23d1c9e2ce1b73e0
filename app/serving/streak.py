"""The failure streak: consecutive pipeline dispatches that say this worker is sick.

It counts dispatches, not requests: a merged batch that fails and is retried request by
request is one dispatch, so a client cannot recycle a worker by sending one bad batch plus
a few more. A lone request that ran out of memory while being larger than anything that has
fit on this model is the admission budget's fault, not the worker's: it is not counted, and
the budget learns to refuse requests that large (see ``MemoryBudget``).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

from app.errors import SleepwellError
from app.serving.budget import MemoryBudget
from app.serving.generation import Generation
from app.serving.outcomes import status_of

logger = logging.getLogger("sleepwell.streak")

OUT_OF_MEMORY = "out_of_memory"


class FailureStreak:
    def __init__(self) -> None:
        self.count = 0

    def record(
        self, batch: Sequence[Generation], outcomes: Sequence[Any], budget: MemoryBudget
    ) -> None:
        """Fold one dispatch's outcomes into the streak."""
        if any(not isinstance(outcome, SleepwellError) for outcome in outcomes):
            self.count = 0
            return
        counted = False
        for generation, outcome in zip(batch, outcomes, strict=True):
            if status_of(outcome) != "failed":
                continue  # cancelled, timed out or refused: not the worker's fault
            if outcome.code == OUT_OF_MEMORY and budget.explains_oom(generation.pixels):
                budget.learn_oom(generation.pixels)
                logger.warning(
                    "request_id=%s of %d pixels ran out of memory and nothing that large has "
                    "fit on this model; refusing requests of %d pixels or more from now on",
                    generation.request_id, generation.pixels, budget.oom_ceiling_pixels,
                )
                continue
            counted = True
        if counted:
            self.count += 1
