"""One PostgreSQL for the jobs tests (started and removed by the tests themselves)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.jobs.postgres import TestPostgres, running_postgres


@pytest.fixture(scope="session")
def postgres() -> Iterator[TestPostgres]:
    with running_postgres() as server:
        yield server
