"""How a worker leaves so gunicorn replaces it, and what it tells the master on the way.

A worker that must be replaced (stalled, scheduler dead, model failed to load, failure
streak) sends itself SIGTERM: uvicorn then stops accepting, waits for the answers already
decided to be written, and runs the lifespan shutdown. A timer backs that up, because a
wedged inference thread must never keep the process alive.

A worker whose model failed to load also leaves a note in the state directory shared with
the master (``SLEEPWELL_STATE_DIR``): the master reads it when the worker exits, to respawn
that slot with a backoff and to stop the whole service when every slot keeps failing.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
import threading
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

logger = logging.getLogger("sleepwell.lifecycle")

# os._exit code when the backup timer fires: EX_SOFTWARE.
_WEDGED_EXIT_CODE = 70


def exit_for_replacement(deadline_s: float) -> None:
    """Shut this worker down gracefully now; hard-exit if that takes over ``deadline_s``."""
    timer = threading.Timer(deadline_s, os._exit, args=(_WEDGED_EXIT_CODE,))
    timer.daemon = True
    timer.start()
    os.kill(os.getpid(), signal.SIGTERM)


async def join_after_load(loaded: Awaitable[object | None],
                          heartbeat: Callable[[], None]) -> None:
    """Hold the lifespan startup until the model is loaded; uvicorn listens only after it.

    For a worker retrying its slot's failed load while a sibling serves: no request or probe
    meets it before it can serve. It heart-beats meanwhile, so gunicorn's worker timeout does
    not have to cover a load. If the load fails again (or a shutdown ends the wait), the
    worker leaves without ever listening; the failure note is already written.
    """
    waiting = asyncio.ensure_future(loaded)
    while not waiting.done():
        heartbeat()
        await asyncio.wait({waiting}, timeout=1.0)
    if waiting.result() is None:
        logger.error("leaving before listening: the model did not load")
        os._exit(0)  # not a startup failure: that code would make gunicorn halt everything
    logger.info("model loaded: joining the rotation")


@dataclass(frozen=True)
class LoadFailure:
    pid: int
    reason: str
    at: float  # time.time()


class LoadFailureLog:
    """One note per GPU slot: the last worker in that slot whose model failed to load."""

    def __init__(self, state_dir: Path | None, slot: int | None) -> None:
        self.path = (
            state_dir / f"load-failed-slot-{slot}.json"
            if state_dir is not None and slot is not None else None
        )

    def record(self, reason: str) -> None:
        if self.path is None:
            return
        note = {"pid": os.getpid(), "reason": reason[:2000], "at": time.time()}
        scratch = self.path.with_suffix(f".{os.getpid()}.tmp")
        try:
            scratch.write_text(json.dumps(note), encoding="utf-8")
            os.replace(scratch, self.path)
        except OSError as exc:  # the exit still happens; only the backoff is lost
            logger.warning("could not record the load failure in %s: %s", self.path, exc)

    def clear(self) -> None:
        if self.path is not None:
            self.path.unlink(missing_ok=True)

    def read(self) -> LoadFailure | None:
        if self.path is None:
            return None
        try:
            raw = json.loads(self.path.read_text(encoding="utf-8"))
            return LoadFailure(pid=int(raw["pid"]), reason=str(raw["reason"]),
                               at=float(raw["at"]))
        except FileNotFoundError:
            return None
        except (OSError, ValueError, KeyError, TypeError):
            return None
