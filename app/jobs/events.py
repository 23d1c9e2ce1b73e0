"""GET /v1/jobs/{id}/events: Server-Sent Events of status and step progress until the end.

Events: ``job`` (the job, without its result, whenever status or attempts change; the
last one, at a final status, carries the result), ``progress`` (``{step, steps}``) and, for
a job that asked for ``partial_images``, ``partial_image`` (one per image of each preview,
shaped as the sync stream's ``image_generation.partial_image``; app/jobs/partials.py). The
stream then ends. It also ends, with one ``error`` event (the API's error shape, code
``job_not_found`` or ``job_expired``), when the job is deleted or expires meanwhile. Read
from the database, so it works on any worker of any replica, whichever one runs the job:
this worker's shared poller (app/jobs/streams.py) reads all its streams' jobs in one query
per SLEEPWELL_JOB_PROGRESS_INTERVAL_S.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

from app.errors import NotFound
from app.jobs.database import DATABASE_DOWN
from app.jobs.partials import PARTIAL_EVENT, partial_events, read_partials
from app.jobs.schemas import FINAL_STATUSES, JobStatus, JobView
from app.jobs.streams import Row, Watch


def _event(name: str, data: dict[str, Any]) -> dict[str, str]:
    return {"event": name, "data": json.dumps(data)}


def _gone(job_id: str, row: Row | None) -> NotFound | None:
    """Why the stream must end without a final status, or None while the job lives."""
    if row is None:
        return NotFound(f"Job '{job_id}' no longer exists.", param="id", code="job_not_found")
    if row["expired"]:
        return NotFound(f"Job '{job_id}' expired.", param="id", code="job_expired")
    return None


async def job_events(watch: Watch) -> AsyncIterator[dict[str, str]]:
    seen: tuple[Any, ...] = ()
    step = -1
    partials = _Partials(watch)
    try:
        while True:
            row = watch.row
            gone = _gone(watch.job_id, row)
            if gone is not None:
                yield _event("error", gone.body())
                return
            assert row is not None
            final = JobStatus(row["status"]) in FINAL_STATUSES
            state = (row["status"], row["attempts"], row["cancel_requested"])
            if state != seen and not final:
                seen = state
                yield _event("job", JobView.from_row(row, with_result=False).wire())
            for event in await partials.new(row):  # before the final event: saved before it
                yield _event(PARTIAL_EVENT, event)
            if row["progress_step"] != step and not final:
                step = row["progress_step"]
                yield _event("progress", {"step": step, "steps": row["progress_steps"]})
            if final:
                yield _event("job", JobView.from_row(row, with_result=True).wire())
                return
            await watch.changed()
    finally:
        watch.close()


class _Partials:
    """The partial images a stream has not sent yet, read when the job's counter moves."""

    def __init__(self, watch: Watch) -> None:
        self.watch = watch
        self.counted = 0  # sleepwell_jobs.partials when last read
        self.attempt = 0
        self.next_index = 0

    async def new(self, row: Row) -> list[dict[str, Any]]:
        if row.get("partials", 0) == self.counted:
            return []
        if row["attempts"] != self.attempt:  # a new run makes its previews again
            self.attempt, self.next_index = row["attempts"], 0
        try:
            saved = await read_partials(self.watch.streams.database, self.watch.job_id,
                                        self.attempt, self.next_index)
        except DATABASE_DOWN:
            return []  # read again when the row next changes
        self.counted = row["partials"]
        events = []
        for partial in saved:
            self.next_index = partial["partial_image_index"] + 1
            events += partial_events(partial)
        return events
