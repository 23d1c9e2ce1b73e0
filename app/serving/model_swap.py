"""Hot model swap across every worker, with no failed request and no all-unready window.

Mechanism: a desired-model record that every worker reads: a file in the directory the
workers of one gunicorn master share (``SLEEPWELL_STATE_DIR``), or a table in the jobs
database when one is configured, which every replica of every box shares. The worker that
receives ``POST /admin/models/load`` loads the new model first; only if that works does it
publish the record. Every worker reconciles on its own: it loads the new model *beside* the
old one on a helper thread while the old one keeps serving (so readiness never drops), then
swaps the reference on the inference thread between two batches. A worker respawned later
loads the desired model directly.

A worker whose swap fails keeps serving the old model, reports the mismatch as unready, and
retries with a backoff until it converges. A request naming the model being switched to,
on a worker that has not switched yet, gets 503 ``model_switching`` (retry), never a 404.

A published swap holds until the configured model (``SLEEPWELL_MODEL``) changes: the record
names the configured model it was made over, and a worker configured otherwise ignores it.
With the jobs database it outlives restarts, so each worker logs at start which model it
serves and why (configured, or published by an operator at a given time), and /health
shows it as ``model_origin``. ``POST /admin/models/reset`` goes back to the configured model
under its configured name: it is published like a swap (a record naming no model), so
every worker converges the same way and a restart keeps it.

A bad published model must not crash-loop every replica. A (re)starting worker that cannot
load it falls back to its configured model (it has no other model that loaded), counts the
failure (``model_load_failures_total``: the ModelLoadFailing alert), marks that revision
failed in the store with the reason (``last_swap_error`` in /health on every worker), and
serves, ready. Workers that start later load the configured model at once, and running
workers stop retrying it: a failed revision is never retried by itself, only a new publish
(``POST /admin/models/load`` again, once the files are fixed) replaces it. Workers that
still hold the model keep serving it. Only the configured model failing is fatal.

Cost: while a worker swaps, both models are resident: about twice the model's weights in
(GPU) memory for the duration of one load.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable

from app import __version__
from app.errors import SleepwellError
from app.observability import metrics
from app.serving.desired_model import DesiredModel, DesiredModelBackend, configured_origin
from app.serving.engine import Engine, InferenceThread
from app.serving.health import HealthFacts
from app.serving.model import LoadedModel, load_model
from app.settings import Settings

logger = logging.getLogger("sleepwell.model_swap")

_FIRST_RETRY_S = 1.0
_STARTUP_READ_TIMEOUT_S = 10.0
_MAX_RETRY_S = 60.0


class ModelSwapper:
    """Loads a new model beside the serving one and installs it between batches."""

    def __init__(
        self, settings: Settings, engine: Engine, thread: InferenceThread,
        store: DesiredModelBackend, facts: HealthFacts,
    ) -> None:
        self.settings = settings
        self.engine = engine
        self.thread = thread
        self.store = store
        self.facts = facts  # swap errors and a lasting mismatch are reported in /health
        self.applied_revision = 0
        self.switching_to: str | None = None  # served name of a model not installed yet
        self.serving_configured = False  # the installed model is SLEEPWELL_MODEL, as named
        self._lock = asyncio.Lock()
        self._retry_in_s = _FIRST_RETRY_S
        self._next_attempt = 0.0

    def settings_for(self, source: str | None) -> Settings:
        if source is None or source == self.settings.model:
            return self.settings
        return self.settings.model_copy(update={"model": source, "model_name": None})

    def _applies(self, desired: DesiredModel | None) -> bool:
        return desired is not None and desired.base == self.settings.model

    def _serves(self, desired: DesiredModel, model: LoadedModel) -> bool:
        """Whether ``model`` (installed here) is the one ``desired`` asks for."""
        if self.settings_for(desired.model) is self.settings:
            return self.serving_configured
        return desired.model == model.source

    def _served(self, model: LoadedModel, origin: str, configured: bool) -> LoadedModel:
        self.serving_configured = configured
        self.facts.model_origin = origin
        logger.info("serving model %s (%s): %s", model.name, model.source, origin,
                    extra={"model": model.name, "model_origin": origin})
        return model

    async def load_at_start(
        self, load: Callable[[Settings], Awaitable[LoadedModel]]
    ) -> LoadedModel:
        """Load what a (re)starting worker serves: the published model, else its config.

        A published model that fails to load falls back to the configured one (see the
        module docstring); only the configured model failing raises.
        """
        configured = configured_origin(self.settings.model)
        desired = await self._published_at_start()
        if desired is None:
            return self._served(await load(self.settings), configured, True)
        self.applied_revision = desired.revision
        published = self.settings_for(desired.model)
        origin = desired.origin(configured)
        if published is self.settings:  # the configured model: no fallback from it
            return self._served(await load(published), origin, True)
        fallback = (f"{configured}; the model published by an operator, {desired.model!r}, "
                    "failed to load on a starting worker")
        if desired.failed:
            logger.warning("published model %r failed to load on a worker before; loading "
                           "the configured model %r", desired.model,
                           self.settings.served_model_name)
            return self._served(await load(self.settings), fallback, True)
        try:
            return self._served(await load(published), origin, False)
        except Exception as exc:
            reason = record_failed_load(exc, f"published model {desired.model!r}")
        await self._mark_failed(desired, reason)
        return self._served(await load(self.settings), fallback, True)

    async def _published_at_start(self) -> DesiredModel | None:
        """The published record if it applies to us. A store that cannot be read (the
        database is down) must not stop the worker: it loads its configured model, and
        reconciling converges once the store is back."""
        try:
            desired = await asyncio.wait_for(self.store.read(), _STARTUP_READ_TIMEOUT_S)
        except Exception as exc:
            logger.warning("desired model unknown at start (%s); loading the configured one",
                           exc)
            return None
        return desired if self._applies(desired) else None

    async def _mark_failed(self, desired: DesiredModel, reason: str) -> None:
        self.facts.swap_error = (
            f"published model {desired.model!r} failed to load on a starting worker "
            f"({reason}); starting workers serve the configured model "
            f"{self.settings.served_model_name!r} until a model is published again"
        )
        try:
            await asyncio.wait_for(self.store.mark_failed(desired.revision,
                                                          self.facts.swap_error),
                                   _STARTUP_READ_TIMEOUT_S)
        except Exception as exc:  # the fallback still happens; the next start tries again
            logger.warning("could not mark the published model failed: %s", exc)

    async def swap(self, source: str | None) -> tuple[LoadedModel, str | None]:
        """Load ``source`` (None: the configured model) on a helper thread, then install it
        on the inference thread."""
        async with self._lock:
            started = time.monotonic()
            wanted = self.settings_for(source)
            if source is None:
                source = wanted.model or wanted.served_model_name  # for the messages
            try:
                new = await asyncio.to_thread(load_model, wanted)
            except Exception as exc:
                self.facts.swap_error = f"loading {source!r} failed: {exc}"
                await self.store.record_error(self.facts.swap_error)
                raise
            old_name = await self.thread.run(lambda: self.engine.install(new))
            self.serving_configured = wanted is self.settings
            self.facts.swap_error = None
            if old_name is not None:
                metrics.BUILD_INFO.labels(version=__version__, model=old_name).set(0)
            metrics.BUILD_INFO.labels(version=__version__, model=new.name).set(1)
            logger.info("swapped model %s -> %s in %.2fs", old_name, new.name,
                        time.monotonic() - started)
            return new, old_name

    async def swap_everywhere(self, source: str | None) -> tuple[LoadedModel, str | None]:
        """Swap here first; publish to the other workers only if it worked. ``None``: the
        configured model (a reset; not loaded again if this worker already serves it)."""
        model = self.engine.model
        new, old_name = (model, model.name) if (
            source is None and self.serving_configured and model is not None
        ) else await self.swap(source)
        await self.store.record_error(None)
        desired = await self.store.publish(source, self.settings.model)
        configured = configured_origin(self.settings.model)
        self.facts.model_origin = desired.origin(configured) if desired else (
            configured if source is None else "loaded by an operator via /admin/models/"
            "load; not shared (no state directory)")
        if desired is not None:
            self.applied_revision = desired.revision
        self._converged()
        return new, old_name

    async def pending_model_name(self) -> str | None:
        """The served name of a published model this worker has not installed yet.

        Asked only when a request names a model other than ours: the store is read now, so
        a swap published a moment ago (before our next reconcile) is already known.
        """
        if self.switching_to is None:
            try:
                desired = await asyncio.wait_for(self.store.read(), _STARTUP_READ_TIMEOUT_S)
            except Exception:
                return None
            model = self.engine.model
            if desired is not None and self._applies(desired) and not desired.failed and (
                    model is not None and not self._serves(desired, model)):
                return self.settings_for(desired.model).served_model_name
        return self.switching_to

    async def reconcile_forever(self, period_s: float) -> None:
        while True:
            await asyncio.sleep(period_s)
            try:
                await self.reconcile_once()
            except Exception:  # a store hiccup must never end reconciliation
                logger.exception("model reconcile failed; trying again in %.0fs", period_s)

    async def reconcile_once(self) -> None:
        if self.store.shared:
            self.facts.swap_error = await self.store.read_error()
        desired = await self.store.read()
        model = self.engine.model
        if model is None or not self._applies(desired) or desired is None:
            return  # still loading (load_at_start chooses), or nothing published for us
        if desired.revision == self.applied_revision or self._serves(desired, model) or (
                desired.failed):  # never retried by itself: see the module docstring
            if desired.revision != self.applied_revision and not desired.failed:
                self.facts.model_origin = desired.origin(configured_origin(self.settings.model))
            self.applied_revision = desired.revision
            self._converged()
            return
        self.switching_to = self.settings_for(desired.model).served_model_name
        if time.monotonic() < self._next_attempt:
            return
        try:
            await self.swap(desired.model)
        except Exception as exc:
            self._failed_attempt(model.name, self.switching_to, exc)
            return
        self.applied_revision = desired.revision
        self.facts.model_origin = desired.origin(configured_origin(self.settings.model))
        self._converged()

    def _failed_attempt(self, serving: str, wanted: str, exc: Exception) -> None:
        self.facts.model_mismatch = (
            f"serving {serving!r} but every worker should serve {wanted!r}; the swap failed "
            f"({exc}); retrying in {self._retry_in_s:.0f}s"
        )
        logger.error("model swap to %r failed, retrying in %.0fs: %s", wanted,
                     self._retry_in_s, exc)
        self._next_attempt = time.monotonic() + self._retry_in_s
        self._retry_in_s = min(_MAX_RETRY_S, self._retry_in_s * 2)

    def _converged(self) -> None:
        self.switching_to = None
        self.facts.model_mismatch = None
        self._retry_in_s = _FIRST_RETRY_S
        self._next_attempt = 0.0


def record_failed_load(exc: BaseException, what: str) -> str:
    """Log and count one failed model load (ModelLoadFailing alerts on the count); why."""
    reason = exc.message if isinstance(exc, SleepwellError) else f"{type(exc).__name__}: {exc}"
    logger.error("model load failed: %s: %s", what, reason, exc_info=exc)
    metrics.MODEL_LOAD_FAILURES.inc()
    return reason
