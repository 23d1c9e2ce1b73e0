"""The log lines an operator follows a job by: started, finished (outcome, duration), cancel.

One JSON line each (the service's formatter), with the job id and the X-Request-ID of the
POST that made the job, so ``grep <request id>`` finds the submit's access line and every
run of it. Progress is not logged: it is in the job row and its SSE stream.
"""

from __future__ import annotations

import logging
import time
from typing import Any

logger = logging.getLogger("sleepwell.jobs")


def _fields(row: dict[str, Any]) -> dict[str, Any]:
    return {"job_id": row["id"], "request_id": row.get("request_id"),
            "attempt": row.get("attempts")}


def log_started(row: dict[str, Any], worker: str) -> None:
    logger.info("job started", extra={**_fields(row), "worker": worker,
                                       "steps": row.get("progress_steps")})


def log_finished(row: dict[str, Any], outcome: str, dequeued_at: float,
                 reason: str | None = None) -> None:
    """``outcome``: a final status, or how this run ended without one (handed back,
    stalled, duplicate); ``duration_s``: this run's, from ``dequeued_at`` (monotonic) on."""
    duration_s = round(time.monotonic() - dequeued_at, 3)
    logger.info("job finished", extra={**_fields(row), "outcome": outcome,
                                        "duration_s": duration_s, "reason": reason})


def log_cancel_requested(row: dict[str, Any], after: dict[str, Any] | None,
                         request_id: str) -> None:
    """``request_id``: the cancel's own; the submit's is ``submit_request_id``."""
    logger.info("job cancel requested", extra={
        "job_id": row["id"], "request_id": request_id,
        "submit_request_id": row.get("request_id"), "status_was": row["status"],
        "status": after["status"] if after is not None else row["status"]})
