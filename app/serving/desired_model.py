"""Where the desired model is recorded: a file the workers of one master share.

The file lives in ``SLEEPWELL_STATE_DIR`` (gunicorn.conf.py makes one per master and
empties it at master start), so it reaches every worker of one box. Replicas on other boxes
or in other pods need the database store (app/jobs), which implements the same methods.

A published model that a starting worker could not load is marked failed (its revision, in
a file beside the record): workers that start later load their configured model at once
instead of failing on it again, until a new swap is published.

A record whose ``model`` is None is a reset (``POST /admin/models/reset``): every worker
goes back to its configured model, under its configured name.
"""

from __future__ import annotations

import json
import logging
import os
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Protocol

logger = logging.getLogger("sleepwell.desired_model")

DESIRED_MODEL_FILE = "desired-model.json"
SWAP_ERROR_FILE = "swap-error.txt"
FAILED_REVISION_FILE = "desired-model-failed.json"


class DesiredModelBackend(Protocol):
    """What the swapper needs of a store: the file below, or the jobs database's table."""

    @property
    def shared(self) -> bool: ...
    async def read(self) -> DesiredModel | None: ...
    async def publish(self, model: str | None, base: str | None) -> DesiredModel | None: ...
    async def record_error(self, message: str | None) -> None: ...
    async def read_error(self) -> str | None: ...
    async def mark_failed(self, revision: int, message: str) -> None: ...


@dataclass(frozen=True)
class DesiredModel:
    model: str | None  # None: back to the configured model (a reset)
    revision: int  # increases with every publish (nanosecond clock)
    base: str | None  # the SLEEPWELL_MODEL it was published over; None: the demo model
    failed: bool = False  # a starting worker could not load it: start on the configured one
    # When (epoch seconds; None: not recorded). Not part of a record's identity.
    published_at: float | None = field(default=None, compare=False)

    def origin(self, configured: str) -> str:
        """Why a worker serving this record serves what it serves, for the log and /health."""
        when = "at an unknown time" if self.published_at is None else "at " + (
            datetime.fromtimestamp(self.published_at, UTC).isoformat(timespec="seconds"))
        if self.model is None:
            return f"{configured}; an operator reset to it {when} via /admin/models/reset"
        return (f"published by an operator {when} via /admin/models/load (over the "
                f"configured model, {configured}); POST /admin/models/reset returns to it")


def configured_origin(model: str | None) -> str:
    """The configured model, said the way an operator would set it."""
    if model is None:
        return "configured (SLEEPWELL_MODEL unset: the demo model)"
    return f"configured (SLEEPWELL_MODEL={model})"


class DesiredModelStore:
    """The shared desired-model file. ``None`` directory: a single process, nothing shared."""

    def __init__(self, directory: Path | None) -> None:
        self.path = directory / DESIRED_MODEL_FILE if directory is not None else None
        self.error_path = directory / SWAP_ERROR_FILE if directory is not None else None
        self.failed_path = directory / FAILED_REVISION_FILE if directory is not None else None

    @property
    def shared(self) -> bool:
        return self.path is not None

    async def record_error(self, message: str | None) -> None:
        """Share the last failed swap, so /health on every worker reports it."""
        if self.error_path is None:
            return
        if message is None:
            self.error_path.unlink(missing_ok=True)
        else:
            _write_atomically(self.error_path, message)

    async def read_error(self) -> str | None:
        if self.error_path is None:
            return None
        try:
            return self.error_path.read_text(encoding="utf-8") or None
        except OSError:
            return None

    async def read(self) -> DesiredModel | None:
        if self.path is None:
            return None
        try:
            raw = json.loads(self.path.read_text(encoding="utf-8"))
            revision, model = int(raw["revision"]), raw["model"]
            return DesiredModel(model=None if model is None else str(model), revision=revision,
                                base=raw.get("base"), failed=self._failed_revision() == revision,
                                published_at=revision / 1e9)
        except FileNotFoundError:
            return None
        except (OSError, ValueError, KeyError, TypeError) as exc:
            logger.warning("ignoring unreadable %s: %s", self.path, exc)
            return None

    async def mark_failed(self, revision: int, message: str) -> None:
        """Record that ``revision`` failed to load, and why (shown by every worker)."""
        if self.failed_path is None:
            return
        # Its own file, naming the revision: a publish racing with this write still wins.
        _write_atomically(self.failed_path, json.dumps({"revision": revision}))
        await self.record_error(message)

    def _failed_revision(self) -> int | None:
        assert self.failed_path is not None
        try:
            return int(json.loads(self.failed_path.read_text(encoding="utf-8"))["revision"])
        except (OSError, ValueError, KeyError, TypeError):
            return None  # none marked (or unreadable: then a starting worker just tries it)

    async def publish(self, model: str | None, base: str | None) -> DesiredModel | None:
        """Atomically record ``model`` (None: the configured one) for every worker."""
        if self.path is None:
            return None
        revision = time.time_ns()
        desired = DesiredModel(model=model, revision=revision, base=base,
                               published_at=revision / 1e9)
        record = {"model": model, "revision": desired.revision, "base": base}
        _write_atomically(self.path, json.dumps(record))
        return desired


def _write_atomically(path: Path, text: str) -> None:
    scratch = path.with_suffix(f".{os.getpid()}.tmp")
    scratch.write_text(text, encoding="utf-8")
    os.replace(scratch, path)  # readers see the old file or the new one, never half of one
