"""One heartbeat per running job, from dequeue until its outcome is recorded or handed back.

The sweep redelivers a job whose heartbeat is older than SLEEPWELL_JOB_STUCK_AFTER_S, so
the beat must not depend on anything else the job does: progress writes, webhook
enqueues, waits for a runner slot, encoding and the final write's retries all happen
beside it, never in front of it. Each beat is bounded by ``Database.bounded`` (a frozen
database costs one missed beat, not a hung task, and no cancel request that would wait on
the frozen server) and a failed beat is simply tried again at the next interval: the
stuck-after margin is several intervals wide on purpose.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

from saq.job import Job

from app.jobs.database import Database
from app.jobs.queue import JobQueue
from app.settings import Settings

logger = logging.getLogger("sleepwell.jobs.heartbeat")


class Heartbeat:
    def __init__(self, database: Database, queue: JobQueue, job: Job, settings: Settings) -> None:
        self.database, self.queue, self.job = database, queue, job
        self.interval_s = settings.job_heartbeat_interval_s
        # A pool wait plus one statement, each bounded by the database timeout.
        self.timeout_s = 2 * settings.database_timeout_s
        self.missed = 0
        self.held = True  # False once the queue no longer shows the job as ours (swept)
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._beat_forever(), name=f"heartbeat-{self.job.key}")

    async def stop(self) -> None:
        if self._task is None:
            return
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task

    async def _beat_forever(self) -> None:
        while True:
            await asyncio.sleep(self.interval_s)
            await self.beat_once()

    async def beat_once(self) -> None:
        try:
            held = await self.database.bounded(self.queue.beat(self.job), self.timeout_s)
        except Exception as exc:  # timeouts and database errors: the next interval retries
            self.missed += 1
            logger.warning("job %s: heartbeat missed (%d so far): %s: %s", self.job.key,
                           self.missed, type(exc).__name__, str(exc).strip()[:200])
            return
        if self.held and not held:
            logger.warning("job %s: the queue no longer shows it as running here (swept after "
                           "missed heartbeats?); another worker may run it too", self.job.key)
        self.held = held
