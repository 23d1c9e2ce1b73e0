"""Hot model swap across every worker, with no failed request and no all-unready window.

Mechanism: a desired-model file in a directory all workers share (``SLEEPWELL_STATE_DIR``,
made by gunicorn.conf.py). The worker that receives ``POST /admin/models/load`` loads the
new model first; only if that works does it publish the file. Every worker reconciles on
its own: it loads the new model *beside* the old one on a separate thread while the old one
keeps serving (so readiness never drops), then swaps the reference on the inference thread
between two batches. A worker respawned later loads the desired model directly.

Cost: while a worker swaps, both models are resident: about twice the model's weights in
(GPU) memory for the duration of one load. A load that fails leaves the old model serving.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path

from app import __version__
from app.observability import metrics
from app.serving.engine import Engine, InferenceThread
from app.serving.health import HealthFacts
from app.serving.model import LoadedModel, load_model
from app.settings import Settings

logger = logging.getLogger("sleepwell.model_swap")

DESIRED_MODEL_FILE = "desired-model.json"
SWAP_ERROR_FILE = "swap-error.txt"


@dataclass(frozen=True)
class DesiredModel:
    model: str
    generation: int  # monotonically increasing across publishes (nanosecond clock)


class DesiredModelStore:
    """The shared desired-model file. ``None`` directory: a single process, nothing shared."""

    def __init__(self, directory: Path | None) -> None:
        self.path = directory / DESIRED_MODEL_FILE if directory is not None else None
        self.error_path = directory / SWAP_ERROR_FILE if directory is not None else None

    @property
    def shared(self) -> bool:
        return self.path is not None

    def record_error(self, message: str | None) -> None:
        """Share the last failed swap, so /health on every worker reports it."""
        if self.error_path is None:
            return
        if message is None:
            self.error_path.unlink(missing_ok=True)
        else:
            _write_atomically(self.error_path, message)

    def read_error(self) -> str | None:
        if self.error_path is None:
            return None
        try:
            return self.error_path.read_text(encoding="utf-8") or None
        except OSError:
            return None

    def read(self) -> DesiredModel | None:
        if self.path is None:
            return None
        try:
            raw = json.loads(self.path.read_text(encoding="utf-8"))
            return DesiredModel(model=str(raw["model"]), generation=int(raw["generation"]))
        except FileNotFoundError:
            return None
        except (OSError, ValueError, KeyError, TypeError) as exc:
            logger.warning("ignoring unreadable %s: %s", self.path, exc)
            return None

    def publish(self, model: str) -> DesiredModel | None:
        """Atomically record ``model`` as what every worker should serve."""
        if self.path is None:
            return None
        desired = DesiredModel(model=model, generation=time.time_ns())
        _write_atomically(self.path, json.dumps({"model": model, "generation": desired.generation}))
        return desired


def _write_atomically(path: Path, text: str) -> None:
    scratch = path.with_suffix(f".{os.getpid()}.tmp")
    scratch.write_text(text, encoding="utf-8")
    os.replace(scratch, path)  # readers see the old file or the new one, never half of one


class ModelSwapper:
    """Loads a new model beside the serving one and installs it between batches."""

    def __init__(
        self, settings: Settings, engine: Engine, thread: InferenceThread,
        store: DesiredModelStore, facts: HealthFacts,
    ) -> None:
        self.settings = settings
        self.engine = engine
        self.thread = thread
        self.store = store
        self.facts = facts  # a failed swap is reported in /health as last_swap_error
        self.applied_generation = 0
        self._lock = asyncio.Lock()

    def settings_for(self, source: str | None) -> Settings:
        if source is None or source == self.settings.model:
            return self.settings
        return self.settings.model_copy(update={"model": source, "model_name": None})

    def startup_settings(self) -> Settings:
        """What a (re)starting worker loads: the published model if any, else its config."""
        desired = self.store.read()
        if desired is None:
            return self.settings
        self.applied_generation = desired.generation
        return self.settings_for(desired.model)

    async def swap(self, source: str) -> tuple[LoadedModel, LoadedModel | None]:
        """Load ``source`` on a helper thread, then install it on the inference thread."""
        async with self._lock:
            started = time.monotonic()
            try:
                new = await asyncio.to_thread(load_model, self.settings_for(source))
            except Exception as exc:
                self.facts.swap_error = f"loading {source!r} failed: {exc}"
                self.store.record_error(self.facts.swap_error)
                raise
            old = await self.thread.run(lambda: self.engine.install(new))
            self.facts.swap_error = None
            if old is not None:
                metrics.BUILD_INFO.labels(version=__version__, model=old.name).set(0)
            metrics.BUILD_INFO.labels(version=__version__, model=new.name).set(1)
            logger.info("swapped model %s -> %s in %.2fs", old and old.name, new.name,
                        time.monotonic() - started)
            return new, old

    async def swap_everywhere(self, source: str) -> tuple[LoadedModel, LoadedModel | None]:
        """Swap here first; publish to the other workers only if it worked."""
        new, old = await self.swap(source)
        self.store.record_error(None)
        desired = self.store.publish(source)
        if desired is not None:
            self.applied_generation = desired.generation
        return new, old

    async def reconcile_forever(self, period_s: float) -> None:
        while True:
            await asyncio.sleep(period_s)
            if self.store.shared:
                self.facts.swap_error = self.store.read_error()
            desired = self.store.read()
            if desired is None or desired.generation == self.applied_generation:
                continue
            if self.engine.model is None:
                continue  # still loading; startup_settings() already chose the model
            self.applied_generation = desired.generation
            if desired.model == self.engine.model.source:
                continue
            with contextlib.suppress(Exception):  # recorded in facts.swap_error
                await self.swap(desired.model)
