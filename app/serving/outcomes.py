"""A request's final outcome, its status label, and the one place outcomes are counted."""

from __future__ import annotations

from typing import Any

from app.contract.images import WorkKind
from app.errors import Cancelled, DeadlineExceeded, SleepwellError
from app.observability import metrics

Outcome = list[Any] | SleepwellError  # PIL images, or the error for that request

# Refusals of work that never reached the GPU. A stalled or crashed worker's answers are
# failures instead: they are the server's fault, and HighFailureRate must see them.
REJECTION_CODES = frozenset(
    {"queue_full", "draining", "shutting_down", "model_loading", "model_switching",
     "model_load_failed"}
)


def status_of(outcome: Outcome) -> str:
    """The image_generation_total status of a request's final answer."""
    if not isinstance(outcome, SleepwellError):
        return "success"
    if isinstance(outcome, DeadlineExceeded):
        return "timeout"
    if isinstance(outcome, Cancelled):
        return "cancelled"
    return "rejected" if outcome.code in REJECTION_CODES else "failed"  # OOM, errors


def count_answer(
    kind: WorkKind, status: str, seconds: float, images: int = 0
) -> None:
    """The one place a request's final status is counted, with how long it waited for it
    and, for a success, its images and latency."""
    metrics.GENERATIONS.labels(status=status, kind=kind.value).inc()
    metrics.ANSWER_SECONDS.labels(status=status, kind=kind.value).observe(seconds)
    if status == "success":
        metrics.IMAGES.labels(kind=kind.value).inc(images)
        metrics.LATENCY.labels(kind=kind.value).observe(seconds)
