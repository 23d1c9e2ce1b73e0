"""One poller per worker behind every open GET /v1/jobs/{id}/events stream on that worker.

A stream runs no query of its own. Each SLEEPWELL_JOB_PROGRESS_INTERVAL_S the poller reads
every watched job in one query (``WHERE id = ANY(...)``) on the database's small read pool
(``Database.reads``), so N open streams cost one query per interval, not N, and can never
take a connection that heartbeats and job writes need. The poller runs only while a stream
is open. A worker holds at most SLEEPWELL_JOB_EVENT_STREAMS_MAX streams; the next is
refused with 429 + Retry-After (code ``too_many_streams``) before touching the database.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import dataclass, field
from typing import Any

from psycopg.rows import dict_row

from app.errors import QueueFull
from app.jobs.database import DATABASE_DOWN, Database
from app.observability import metrics
from app.settings import Settings

logger = logging.getLogger("sleepwell.jobs.streams")
_RETRY_AFTER_S = 5
_READ_WATCHED = ("SELECT *, expires_at <= now() AS expired FROM sleepwell_jobs"
                 " WHERE id = ANY(%(ids)s)")
Row = dict[str, Any]


@dataclass(eq=False)
class Watch:
    """One open stream's view of its job: the latest row (None once the row is gone)."""

    job_id: str
    streams: JobStreams
    row: Row | None = None
    closed: bool = False
    _changed: asyncio.Event = field(default_factory=asyncio.Event)

    def update(self, row: Row | None) -> None:
        if row != self.row:
            self.row = row
            self._changed.set()

    async def changed(self) -> None:
        """Until the poller sees the row change."""
        await self._changed.wait()
        self._changed.clear()

    def close(self) -> None:
        """Give the slot back; idempotent (the stream's end and the response both call it)."""
        if not self.closed:
            self.closed = True
            self.streams.release(self)


class JobStreams:
    def __init__(self, database: Database, settings: Settings) -> None:
        self.database = database
        self.limit = settings.job_event_streams_max
        self.interval_s = settings.job_progress_interval_s
        self.open_count = 0
        self._watches: dict[str, set[Watch]] = {}
        self._poller: asyncio.Task[None] | None = None
        metrics.JOB_EVENT_STREAMS_REFUSED.inc(0)

    def open(self, job_id: str) -> Watch:
        """A slot for one stream, or 429 when this worker already serves its limit."""
        if self.open_count >= self.limit:
            metrics.JOB_EVENT_STREAMS_REFUSED.inc()
            raise QueueFull(
                f"This worker already serves {self.limit} job event streams "
                "(SLEEPWELL_JOB_EVENT_STREAMS_MAX); poll GET /v1/jobs/{id} or retry shortly.",
                code="too_many_streams", retry_after_s=_RETRY_AFTER_S)
        watch = Watch(job_id, self)
        self._watches.setdefault(job_id, set()).add(watch)
        self.open_count += 1
        metrics.JOB_EVENT_STREAMS.inc()
        if self._poller is None or self._poller.done():
            self._poller = asyncio.create_task(self._poll_while_watched(), name="job-streams")
        return watch

    def release(self, watch: Watch) -> None:
        watches = self._watches.get(watch.job_id)
        if watches is None or watch not in watches:
            return
        watches.discard(watch)
        if not watches:
            del self._watches[watch.job_id]
        self.open_count -= 1
        metrics.JOB_EVENT_STREAMS.dec()

    async def close(self) -> None:
        """Worker shutdown: stop polling (the streams themselves end with the server)."""
        if self._poller is not None:
            self._poller.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._poller

    async def _poll_while_watched(self) -> None:
        while self._watches:
            await asyncio.sleep(self.interval_s)
            if not self._watches:
                return
            await self.poll_once()

    async def poll_once(self) -> None:
        """One query for every watched job; each watch gets its row, or None if it is gone."""
        ids = list(self._watches)
        try:
            rows = await self._read(ids)
        except DATABASE_DOWN:
            return  # the database is away: keep the streams, try again next interval
        except Exception:  # a bug must not end every stream of this worker
            logger.exception("job streams: reading %d job(s) failed", len(ids))
            return
        for job_id in ids:
            for watch in list(self._watches.get(job_id, ())):
                watch.update(rows.get(job_id))

    async def _read(self, ids: list[str]) -> dict[str, Row]:
        async with self.database.read_connection() as conn, conn.cursor(
            row_factory=dict_row
        ) as cur:
            await cur.execute(_READ_WATCHED, {"ids": ids})
            return {row["id"]: row for row in await cur.fetchall()}
