"""What the gunicorn master does for jobs before forking: a database and its schema.

Workers learn the URL through SLEEPWELL_DATABASE_URL in the environment they inherit (as
they learn PROMETHEUS_MULTIPROC_DIR), so the embedded server's URL needs no other channel.
"""

from __future__ import annotations

import asyncio
import logging
import os

from app.jobs.database import DATABASE_DOWN, Database
from app.jobs.embedded import EmbeddedPostgres
from app.jobs.migrations import migrate
from app.jobs.queue import migrate_saq
from app.settings import Settings

logger = logging.getLogger("sleepwell.jobs")
# SAQ's schema setup connects on a pool of its own (a connection wait) and migrates.
_SAQ_SCHEMA_TIMEOUTS = 2


def database_url(settings: Settings, embedded: list[EmbeddedPostgres]) -> str:
    """The configured URL, or start the embedded server (appended to ``embedded``)."""
    if settings.database_url is not None:
        return settings.database_url.get_secret_value()
    server = EmbeddedPostgres(settings.embedded_postgres_dir)
    url = server.start()
    embedded.append(server)
    return url


async def prepare_schema(url: str, settings: Settings) -> None:
    """Our migrations, then SAQ's own (idempotent, under advisory locks), each bounded on
    our side (``Database.bounded``): a frozen server costs a warning, never a hung master."""
    database = Database(url, settings)
    await database.open()
    try:
        applied = await database.bounded(_migrate(database))
        if applied:
            logger.info("database migrations applied: %s", applied)
        await database.bounded(migrate_saq(url, settings), _SAQ_SCHEMA_TIMEOUTS
                               * database.operation_limit_s)
    finally:
        await database.close()


async def _migrate(database: Database) -> list[int]:
    async with database.connection() as conn:
        return await migrate(conn)


def prepare_database(settings: Settings, embedded: list[EmbeddedPostgres]) -> None:
    """Master start: pick or start the database, migrate it, hand the URL to workers.

    A database that is down, frozen or still migrated by another process now is not fatal:
    the sync API must still start, and each worker migrates (idempotently) and checks
    SAQ's schema once it can connect.
    """
    if not settings.jobs_enabled:
        return
    url = database_url(settings, embedded)
    os.environ["SLEEPWELL_DATABASE_URL"] = url  # inherited by every worker
    try:
        asyncio.run(prepare_schema(url, settings))
    except DATABASE_DOWN as exc:
        logger.warning("job database unreachable at start (%s); workers will migrate later",
                       exc)
