"""The application factory. Nothing heavy happens at import; the lifespan owns resources."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from fastapi import FastAPI
from fastapi.middleware.cors import CORSMiddleware
from prometheus_fastapi_instrumentator import Instrumentator

from app import __version__
from app.api.forms import upload_body_limit
from app.api.middleware import (
    BodySizeLimitMiddleware,
    RequestIdMiddleware,
    ServerTimingTotalMiddleware,
)
from app.api.openapi import install_openapi
from app.api.routers import admin, edits, health, images, jobs, metrics, models, ui, variations
from app.errors import install_error_handlers
from app.jobs.component import open_database, start_jobs
from app.jobs.shared_model import DatabaseDesiredModelStore
from app.observability.access_log import AccessLogMiddleware
from app.observability.logging_setup import configure_logging
from app.security.cors import cors_options
from app.security.guard import GuardMiddleware
from app.security.protected_mode import (
    ListeningSocketCheck,
    ListeningSocketGate,
    validate_key_sources,
)
from app.serving.gunicorn_support import worker_heartbeat
from app.serving.lifecycle import join_after_load
from app.serving.service import Service
from app.settings import Settings

logger = logging.getLogger("sleepwell")
# Bodies with images: edits, variations, and edit jobs (their JSON form's data: URLs).
UPLOAD_PATHS = frozenset({"/v1/images/edits", "/v1/images/variations", "/v1/jobs"})


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or Settings()
    configure_logging(settings)
    validate_key_sources(settings)
    # Protected mode on the sockets really bound, not SLEEPWELL_HOST (issue 9).
    listening = ListeningSocketCheck(settings)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        # The jobs database, when configured, also holds the desired model (hot swap),
        # so a swap reaches every replica, not just this box's workers.
        database = await open_database(settings)
        store = DatabaseDesiredModelStore(database) if database is not None else None
        service = Service(settings, desired_models=store)
        app.state.service = service
        await service.start()
        if settings.join_after_load:  # retrying a failed load: siblings serve meanwhile
            await join_after_load(service.wait_started(), worker_heartbeat())
        jobs_component = await start_jobs(app.state, service, database)  # jobs (issue 10)
        restore = _drain_on_sigterm(service)
        watcher = listening.start()  # uvicorn binds after this startup: watch for it
        announcer = asyncio.create_task(_announce_when_ready(service, settings))
        try:
            yield
        finally:
            announcer.cancel()
            if watcher is not None:
                watcher.cancel()
            restore()
            if jobs_component is not None:  # jobs: take no new job while draining
                jobs_component.stop_taking()
            await service.stop()
            if jobs_component is not None:  # jobs: outcomes recorded, the rest handed back
                await jobs_component.stop()

    app = FastAPI(title="Sleepwell", version=__version__, lifespan=lifespan)
    app.state.settings = settings
    install_error_handlers(app)
    install_openapi(app)
    for router in (images.router, edits.router, variations.router, models.router, health.router,
                   metrics.router, admin.router):
        app.include_router(router)
    if settings.jobs_enabled:  # jobs (issue 10): off = no endpoints (404), not 503s
        app.include_router(jobs.router)
    if settings.ui:  # the playground page (app/ui/, app/api/routers/ui.py)
        app.include_router(ui.router)
    Instrumentator(
        excluded_handlers=["/metrics", "/health.*"],
        should_group_status_codes=False,
    ).instrument(app)
    # Added last = outermost: ids exist before anything else runs, even for a 413; the
    # access line sees every answer (401/413/429 too); CORS answers preflights before the
    # guard (API keys, admin key, metrics token, rate limits) asks for a key.
    app.add_middleware(BodySizeLimitMiddleware, max_body_bytes=settings.max_body_bytes,
                       body_timeout_s=settings.body_timeout_s, upload_paths=UPLOAD_PATHS,
                       max_upload_body_bytes=upload_body_limit(settings))
    app.add_middleware(GuardMiddleware, settings=settings)
    if (cors := cors_options(settings)) is not None:
        app.add_middleware(CORSMiddleware, **cors)
    app.add_middleware(AccessLogMiddleware, settings=settings)
    app.add_middleware(RequestIdMiddleware)
    app.add_middleware(ServerTimingTotalMiddleware)  # total: everything inside it
    app.add_middleware(ListeningSocketGate, check=listening)  # outermost: before any answer
    return app


async def _announce_when_ready(service: Service, settings: Settings) -> None:
    """One line per start, from the first worker whose model is ready: what to open."""
    model = await service.wait_started()
    if model is None or not _first_to_announce(settings.state_dir):
        return
    host = {"0.0.0.0": "127.0.0.1", "::": "::1"}.get(settings.host, settings.host)
    base = f"http://[{host}]:{settings.port}" if ":" in host else f"http://{host}:{settings.port}"
    opens = {"api": f"{base}/v1", "ui": f"{base}/ui" if settings.ui else None,
             "docs": f"{base}/docs"}
    database = settings.embedded_postgres_dir if settings.embedded_postgres_running else None
    parts = [f"API {opens['api']}", *([f"playground {opens['ui']}"] if opens["ui"] else []),
             f"docs {opens['docs']}"]
    message = f"Sleepwell is ready: {', '.join(parts)}; model {model.name} on {model.device}"
    if database is not None:
        message += f"; embedded PostgreSQL data in {database}"
    logger.info(message, extra={**opens, "model": model.name, "device": str(model.device),
                                "postgres_data": str(database) if database else None})


def _first_to_announce(state_dir: Path | None) -> bool:
    """True in one worker per start: the state directory is fresh for every master start."""
    if state_dir is None:  # not under gunicorn: this process is the whole service
        return True
    try:
        os.close(os.open(state_dir / "ready-announced", os.O_CREAT | os.O_EXCL | os.O_WRONLY))
    except FileExistsError:
        return False
    except OSError:
        return True  # better said twice than never
    return True


def _drain_on_sigterm(service: Service) -> Callable[[], None]:
    """On SIGTERM, schedule the drain on the loop; uvicorn's own handler still runs.

    The handler only hands a callback to the loop: signal handlers run between any two
    bytecodes, so doing work here (metrics take a non-reentrant lock) could deadlock.
    """
    loop = asyncio.get_running_loop()
    try:
        previous = signal.getsignal(signal.SIGTERM)
    except ValueError:
        return lambda: None

    def on_sigterm(signum: int, frame: Any) -> None:
        loop.call_soon_threadsafe(service.request_shutdown)
        if callable(previous):
            previous(signum, frame)

    try:
        signal.signal(signal.SIGTERM, on_sigterm)
    except ValueError:  # not the main thread (e.g. an in-process test client)
        return lambda: None

    def restore() -> None:
        try:
            if signal.getsignal(signal.SIGTERM) is on_sigterm:
                signal.signal(signal.SIGTERM, previous)
        except ValueError:
            pass

    return restore
