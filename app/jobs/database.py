"""The worker's one PostgreSQL connection pool, shared by every component that needs it.

Jobs use it; other components (for example a shared "desired model" table) take the same
pool through ``Service.jobs.database`` (or ``app.state.database``) and ``connection()``,
and add their tables in ``app/jobs/migrations.py``. Every statement has a timeout
(SLEEPWELL_DATABASE_TIMEOUT_S), so a dead database costs a request seconds, never a hang.
"""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import psycopg
from psycopg_pool import AsyncConnectionPool

from app.errors import ServiceUnavailable
from app.settings import Settings

logger = logging.getLogger("sleepwell.jobs.database")

# The errors that mean "the database is not there right now", as opposed to a bug.
UNAVAILABLE_ERRORS: tuple[type[Exception], ...] = (psycopg.OperationalError, psycopg.InterfaceError)
_RETRY_AFTER_S = 5


def database_unavailable(detail: str = "") -> ServiceUnavailable:
    reason = f" ({detail})" if detail else ""
    return ServiceUnavailable(
        f"The job database is unreachable{reason}; the image API still works. Retry shortly.",
        code="jobs_unavailable",
        retry_after_s=_RETRY_AFTER_S,
    )


def connection_kwargs(settings: Settings) -> dict[str, Any]:
    timeout_ms = int(settings.database_timeout_s * 1000)
    return {
        "autocommit": True,  # SAQ requires it; our multi-statement writes use transaction()
        "connect_timeout": max(1, round(settings.database_timeout_s)),
        "options": f"-c statement_timeout={timeout_ms} -c lock_timeout={timeout_ms}",
        "application_name": "sleepwell",
    }


# ... and, raised by ``Database.connection``, the 503 that says so.
DATABASE_DOWN: tuple[type[Exception], ...] = (ServiceUnavailable, *UNAVAILABLE_ERRORS)


class Database:
    def __init__(self, url: str, settings: Settings) -> None:
        self.settings = settings
        self.pool = AsyncConnectionPool(
            url,
            min_size=1,
            max_size=settings.database_pool_size,
            open=False,
            timeout=settings.database_timeout_s,
            kwargs=connection_kwargs(settings),
            check=AsyncConnectionPool.check_connection,
            reconnect_timeout=0,  # never give up: the database may come back any time
            name="sleepwell",
        )
        self.available = False
        self.last_error: str | None = None
        self._last_warning = 0.0

    async def open(self) -> None:
        await self.pool.open(wait=False)  # never block startup on a database that is down

    async def close(self) -> None:
        await self.pool.close(timeout=2.0)

    @asynccontextmanager
    async def connection(self) -> AsyncIterator[psycopg.AsyncConnection[Any]]:
        """A pooled connection; ``ServiceUnavailable`` (503) if the database is not there."""
        try:
            async with self.pool.connection() as conn:
                yield conn
        except UNAVAILABLE_ERRORS as exc:
            self.mark_down(exc)
            raise database_unavailable() from exc
        else:
            self.available = True

    def mark_down(self, exc: BaseException) -> None:
        self.available = False
        self.last_error = f"{type(exc).__name__}: {str(exc).strip()[:200]}"
        now = time.monotonic()
        if now - self._last_warning > 30:
            self._last_warning = now
            logger.warning("job database unavailable: %s", self.last_error)
