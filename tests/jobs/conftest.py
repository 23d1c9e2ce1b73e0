"""One PostgreSQL for the jobs tests (started and removed by the tests themselves)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.jobs.postgres import TestPostgres


@pytest.fixture(scope="session")
def postgres() -> Iterator[TestPostgres]:
    server = TestPostgres()
    server.start()
    try:
        yield server
    finally:
        server.close()
