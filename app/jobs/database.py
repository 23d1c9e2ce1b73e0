"""The worker's PostgreSQL connection pools, and the client-side bounds on every wait.

Jobs use ``pool``; other components (for example a shared "desired model" table) take the
same pool through ``Service.jobs.database`` (or ``app.state.database``) and
``connection()``, and add their tables in ``app/jobs/migrations.py``. ``reads`` is a small
second pool for polling reads (job event streams): however many streams are open, they
never take a connection that heartbeats and job writes need.

Every wait is bounded on our side, because ``statement_timeout`` is the server's and a
frozen server (SIGSTOP, ``docker compose pause``) never enforces it; the kernel still ACKs
TCP, so keepalives do not notice either:

- the wait for a pooled connection: the pool's timeout (SLEEPWELL_DATABASE_TIMEOUT_S);
- the pool's check of that connection: aborted after the same timeout;
- every checkout (ours and SAQ's): aborted when held longer than ``hold_limit_s``;
- any whole operation: ``await database.bounded(operation)``;
- connecting: libpq's ``connect_timeout``; a partitioned network: TCP keepalives and
  ``tcp_user_timeout``.

"Aborted" means the socket under libpq is shut down: the pending wait returns at once with
``OperationalError``, the connection is closed (the pool discards it and opens another), and
psycopg sends no cancel request, which against a frozen server would wait 10 s more.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import time
from collections.abc import AsyncIterator, Awaitable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from contextvars import ContextVar
from typing import Any, TypeVar

import psycopg
from psycopg_pool import AsyncConnectionPool

from app.errors import ServiceUnavailable
from app.settings import Settings

logger = logging.getLogger("sleepwell.jobs.database")

# The errors that mean "the database is not there right now", as opposed to a bug.
UNAVAILABLE_ERRORS: tuple[type[Exception], ...] = (psycopg.OperationalError, psycopg.InterfaceError)
_RETRY_AFTER_S = 5
# A checkout runs a few statements, each under the server's statement_timeout.
_HOLD_LIMIT_TIMEOUTS = 3
_READ_POOL_SIZE = 2
# After its deadline an operation's connections are aborted; this later it is cancelled
# (it was waiting on something else: the pool's queue, a sleep).
_CANCEL_GRACE_S = 0.5

Connection = psycopg.AsyncConnection[Any]
T = TypeVar("T")


class _Checkouts:
    """The connections one ``bounded`` operation holds (SAQ's included): all aborted at its
    deadline, and any it takes after that at once (it may be in the pool's queue then)."""

    def __init__(self) -> None:
        self.held: set[Connection] = set()
        self.expired = self.over = False

    def add(self, conn: Connection) -> None:
        if self.over:  # a task the operation started outlives it: no longer bounded by it
            return
        self.held.add(conn)
        if self.expired:
            abort_connection(conn)

    def discard(self, conn: Connection) -> None:
        self.held.discard(conn)

    def expire(self) -> None:
        self.expired = True
        for conn in list(self.held):
            abort_connection(conn)


# A context variable, so tasks the operation starts (asyncio.wait_for) share it.
_CHECKOUTS: ContextVar[_Checkouts | None] = ContextVar("sleepwell_checkouts", default=None)


def database_unavailable(detail: str = "") -> ServiceUnavailable:
    reason = f" ({detail})" if detail else ""
    return ServiceUnavailable(
        f"The job database is unreachable{reason}; the image API still works. Retry shortly.",
        code="jobs_unavailable",
        retry_after_s=_RETRY_AFTER_S,
    )


def hold_limit_s(settings: Settings) -> float:
    """The longest any pooled connection may be held before it is aborted."""
    return _HOLD_LIMIT_TIMEOUTS * settings.database_timeout_s


def connection_kwargs(settings: Settings) -> dict[str, Any]:
    timeout_s = settings.database_timeout_s
    timeout_ms = int(timeout_s * 1000)
    return {
        "autocommit": True,  # SAQ requires it; our multi-statement writes use transaction()
        "connect_timeout": max(1, round(timeout_s)),
        "options": f"-c statement_timeout={timeout_ms} -c lock_timeout={timeout_ms}",
        "application_name": "sleepwell",
        # A partitioned network (TCP only; libpq ignores these on a Unix socket): an idle
        # connection is found dead after ~8 timeouts, a busy one after the hold limit.
        "keepalives": 1,
        "keepalives_idle": max(1, round(5 * timeout_s)),
        "keepalives_interval": max(1, round(timeout_s)),
        "keepalives_count": 3,
        "tcp_user_timeout": int(hold_limit_s(settings) * 1000),
    }


def abort_connection(conn: Connection) -> None:
    """Shut the connection's socket down (not close: the fd stays libpq's, never reused
    under it), so whatever awaits it fails now with OperationalError."""
    try:
        fd = os.dup(conn.pgconn.socket)
    except (psycopg.Error, OSError):
        return  # already closed
    with socket.socket(fileno=fd) as sock, contextlib.suppress(OSError):  # already gone
        sock.shutdown(socket.SHUT_RDWR)


class BoundedPool(AsyncConnectionPool[Connection]):
    """A pool whose check is bounded and whose every checkout is aborted once held longer
    than ``hold_limit_s``, whoever holds it (SAQ's webhook worker included)."""

    def __init__(self, conninfo: str, *, hold_limit_s: float, check_limit_s: float,
                 **kwargs: Any) -> None:
        self.hold_limit_s, self.check_limit_s = hold_limit_s, check_limit_s
        self._deadlines: dict[int, asyncio.TimerHandle] = {}
        super().__init__(conninfo, check=self._bounded_check, **kwargs)

    async def _bounded_check(self, conn: Connection) -> None:
        timer = asyncio.get_running_loop().call_later(self.check_limit_s, abort_connection, conn)
        checkouts = _CHECKOUTS.get()
        if checkouts is not None:  # a ``bounded`` deadline aborts it here too, not cancels it
            checkouts.add(conn)
        try:
            await AsyncConnectionPool.check_connection(conn)
        finally:
            timer.cancel()
            if checkouts is not None:
                checkouts.discard(conn)

    async def getconn(self, timeout: float | None = None) -> Connection:  # noqa: ASYNC109
        conn = await super().getconn(timeout)
        loop = asyncio.get_running_loop()
        self._deadlines[id(conn)] = loop.call_later(self.hold_limit_s, self._expire, conn)
        checkouts = _CHECKOUTS.get()
        if checkouts is not None:
            checkouts.add(conn)
        return conn

    async def putconn(self, conn: Connection) -> None:
        timer = self._deadlines.pop(id(conn), None)
        if timer is not None:
            timer.cancel()
        checkouts = _CHECKOUTS.get()
        if checkouts is not None:
            checkouts.discard(conn)
        await super().putconn(conn)

    def _expire(self, conn: Connection) -> None:
        logger.warning("database connection held over %gs (pool %s): aborting it",
                       self.hold_limit_s, self.name)
        abort_connection(conn)


# ... and, raised by ``Database.connection``, the 503 that says so.
DATABASE_DOWN: tuple[type[Exception], ...] = (ServiceUnavailable, *UNAVAILABLE_ERRORS)


class Database:
    def __init__(self, url: str, settings: Settings) -> None:
        self.settings = settings
        self.operation_limit_s = settings.database_timeout_s + hold_limit_s(settings)
        self.pool = self._pool(url, "sleepwell", 1, settings.database_pool_size)
        self.reads = self._pool(url, "sleepwell-reads", 0, _READ_POOL_SIZE)
        self.available = False
        self.last_error: str | None = None
        self._last_warning = 0.0

    def _pool(self, url: str, name: str, min_size: int, max_size: int) -> BoundedPool:
        return BoundedPool(
            url,
            hold_limit_s=hold_limit_s(self.settings),
            check_limit_s=self.settings.database_timeout_s,
            min_size=min_size,
            max_size=max_size,
            open=False,
            timeout=self.settings.database_timeout_s,
            kwargs=connection_kwargs(self.settings),
            reconnect_timeout=0,  # never give up: the database may come back any time
            name=name,
        )

    async def open(self) -> None:
        await self.pool.open(wait=False)  # never block startup on a database that is down
        await self.reads.open(wait=False)

    async def close(self) -> None:
        await self.reads.close(timeout=2.0)
        await self.pool.close(timeout=2.0)

    def connection(self) -> AbstractAsyncContextManager[Connection]:
        """A pooled connection (``async with``); ``ServiceUnavailable`` (503) if the
        database is not there. Bounded: see the module docstring."""
        return self._checkout(self.pool)

    def read_connection(self) -> AbstractAsyncContextManager[Connection]:
        """The same from ``reads``: for polling reads that must not compete with writes."""
        return self._checkout(self.reads)

    @asynccontextmanager
    async def _checkout(self, pool: BoundedPool) -> AsyncIterator[Connection]:
        try:
            async with pool.connection() as conn:
                yield conn
        except UNAVAILABLE_ERRORS as exc:
            self.mark_down(exc)
            raise database_unavailable() from exc
        else:
            self.available = True

    async def bounded(self, operation: Awaitable[T], timeout_s: float | None = None) -> T:
        """Await one database operation (ours, or SAQ's on our pool) for at most
        ``timeout_s`` (default: one connection wait plus one hold limit). Past it, the
        connections it holds are aborted, then it is cancelled; a timeout or a database
        error is raised as ``ServiceUnavailable`` (code ``jobs_unavailable``)."""
        limit = self.operation_limit_s if timeout_s is None else timeout_s
        checkouts = _Checkouts()
        token = _CHECKOUTS.set(checkouts)
        abort_timer = asyncio.get_running_loop().call_later(limit, checkouts.expire)
        try:
            async with asyncio.timeout(limit + _CANCEL_GRACE_S):
                return await operation
        except TimeoutError as exc:
            self.mark_down(exc, f"no answer within {limit:g}s")
            raise database_unavailable(f"no answer within {limit:g}s") from exc
        except UNAVAILABLE_ERRORS as exc:
            late = abort_timer.when() <= asyncio.get_running_loop().time()
            self.mark_down(exc, f"no answer within {limit:g}s" if late else "")
            raise database_unavailable() from exc
        finally:
            abort_timer.cancel()
            checkouts.over = True
            _CHECKOUTS.reset(token)

    def mark_down(self, exc: BaseException, detail: str = "") -> None:
        self.available = False
        self.last_error = f"{type(exc).__name__}: {detail or str(exc).strip()[:200]}"
        now = time.monotonic()
        if now - self._last_warning > 30:
            self._last_warning = now
            logger.warning("job database unavailable: %s", self.last_error)
