"""Keeps a long-lived background loop (the job consumer) running, and says when it is not.

A loop that raises is logged with its traceback, counted, and started again after a
backoff, once its precondition holds again (the consumer's: SAQ's schema is there at the
expected version). While it is down ``up`` is False and ``last_error`` says why: the
component reports both in /health's ``checks.jobs`` and ``jobs_error``.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable

logger = logging.getLogger("sleepwell.jobs.supervisor")
_FIRST_PAUSE_S = 0.5
_MAX_PAUSE_S = 10.0
# A run that lasted this long was healthy: the next failure starts the backoff afresh.
_STABLE_AFTER_S = 60.0


class Supervised:
    def __init__(self, name: str, run: Callable[[], Awaitable[None]],
                 ready: Callable[[], Awaitable[None]], on_restart: Callable[[], None]) -> None:
        self.name, self._run, self._ready, self._on_restart = name, run, ready, on_restart
        self.up = False
        self.last_error: str | None = "not started yet"
        self.restarts = 0

    async def run_forever(self) -> None:
        """Returns when the loop returns on its own (the worker stops taking jobs)."""
        pause = _FIRST_PAUSE_S
        while True:
            if not await self._became_ready():
                await asyncio.sleep(pause)
                pause = min(pause * 2, _MAX_PAUSE_S)
                continue
            started = time.monotonic()
            try:
                await self._run()
                return
            except Exception as exc:  # anything: a dead loop must never pass for a live one
                self._went_down(exc)
            if time.monotonic() - started >= _STABLE_AFTER_S:
                pause = _FIRST_PAUSE_S
            await asyncio.sleep(pause)
            pause = min(pause * 2, _MAX_PAUSE_S)

    async def _became_ready(self) -> bool:
        try:
            await self._ready()
        except Exception as exc:
            self.up, self.last_error = False, _describe(exc)
            logger.warning("%s waits to (re)start: %s", self.name, self.last_error)
            return False
        self.up, self.last_error = True, None
        return True

    def _went_down(self, exc: Exception) -> None:
        self.up, self.last_error = False, f"{self.name} failed: {_describe(exc)}"
        self.restarts += 1
        self._on_restart()
        logger.exception("%s failed; restarting it after a backoff (restart %d)", self.name,
                         self.restarts)


def _describe(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {str(exc).strip()[:200]}"
