"""What the gunicorn master does for jobs before forking: a database and its schema.

Workers learn the URL through SLEEPWELL_DATABASE_URL in the environment they inherit (as
they learn PROMETHEUS_MULTIPROC_DIR), so the embedded server's URL needs no other channel.
"""

from __future__ import annotations

import asyncio
import logging
import os

import psycopg

from app.jobs.database import UNAVAILABLE_ERRORS, connection_kwargs
from app.jobs.embedded import EmbeddedPostgres
from app.jobs.migrations import migrate
from app.jobs.queue import JobQueue
from app.settings import Settings

logger = logging.getLogger("sleepwell.jobs")


def database_url(settings: Settings, embedded: list[EmbeddedPostgres]) -> str:
    """The configured URL, or start the embedded server (appended to ``embedded``)."""
    if settings.database_url is not None:
        return settings.database_url.get_secret_value()
    server = EmbeddedPostgres(settings.embedded_postgres_dir)
    url = server.start()
    embedded.append(server)
    return url


async def prepare_schema(url: str, settings: Settings) -> None:
    """Our migrations, then SAQ's own (idempotent, under advisory locks)."""
    kwargs = connection_kwargs(settings)
    async with await psycopg.AsyncConnection.connect(url, **kwargs) as conn:
        applied = await migrate(conn)
    if applied:
        logger.info("database migrations applied: %s", applied)
    await JobQueue.prepare(url, settings)


def prepare_database(settings: Settings, embedded: list[EmbeddedPostgres]) -> None:
    """Master start: pick or start the database, migrate it, hand the URL to workers.

    A database that is down now is not fatal: the sync API must still start, and each
    worker migrates (idempotently) once it can connect.
    """
    if not settings.jobs_enabled:
        return
    url = database_url(settings, embedded)
    os.environ["SLEEPWELL_DATABASE_URL"] = url  # inherited by every worker
    try:
        asyncio.run(prepare_schema(url, settings))
    except UNAVAILABLE_ERRORS as exc:
        logger.warning("job database unreachable at start (%s); workers will migrate later",
                       type(exc).__name__)
