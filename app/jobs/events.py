"""GET /v1/jobs/{id}/events: Server-Sent Events of status and step progress until the end.

Events: ``job`` (the job, without its result, whenever status or attempts change; the
last one, at a final status, carries the result) and ``progress`` (``{step, steps}``). The
stream then ends. Read from the database, so it works on any worker of any replica,
whichever one runs the job; the database is read once per SLEEPWELL_JOB_PROGRESS_INTERVAL_S.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

from app.jobs.database import DATABASE_DOWN
from app.jobs.schemas import FINAL_STATUSES, JobStatus, JobView
from app.jobs.store import JobStore


def _event(name: str, data: dict[str, Any]) -> dict[str, str]:
    return {"event": name, "data": json.dumps(data)}


async def job_events(
    store: JobStore, job_id: str, interval_s: float
) -> AsyncIterator[dict[str, str]]:
    seen: tuple[Any, ...] = ()
    step = -1
    while True:
        try:
            row = await store.get(job_id)
        except DATABASE_DOWN:
            row = None  # the database is away: keep the stream, try again
        if row is not None:
            final = JobStatus(row["status"]) in FINAL_STATUSES
            state = (row["status"], row["attempts"])
            if state != seen:
                seen = state
                yield _event("job", JobView.from_row(row, with_result=final).wire())
            if row["progress_step"] != step and not final:
                step = row["progress_step"]
                yield _event("progress", {"step": step, "steps": row["progress_steps"]})
            if final:
                return
        await asyncio.sleep(interval_s)
