"""Units of app/jobs against a real PostgreSQL: migrations, store, SSRF checks, embedded."""

from __future__ import annotations

import asyncio
import tempfile
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import psycopg
import pytest

from app.jobs.database import Database
from app.jobs.embedded import EmbeddedPostgres
from app.jobs.migrations import MIGRATIONS, migrate
from app.jobs.schemas import JobStatus
from app.jobs.store import JobStore, NewJob
from app.net.ssrf import WebhookRefused, parse_allowed, resolve
from app.settings import Settings
from tests.jobs.postgres import TestPostgres, query


@asynccontextmanager
async def migrated_store(postgres: TestPostgres, ttl_s: float) -> AsyncIterator[JobStore]:
    """A JobStore on a fresh, migrated database of the test PostgreSQL."""
    database = Database(postgres.new_database(), Settings(database_timeout_s=2))
    await database.open()
    try:
        async with database.connection() as conn:
            await migrate(conn)
        yield JobStore(database, ttl_s=ttl_s)
    finally:
        await database.close()


async def test_migrations_apply_once_and_are_idempotent(postgres: TestPostgres) -> None:
    url = postgres.new_database()
    async with await psycopg.AsyncConnection.connect(url, autocommit=True) as conn:
        first = await migrate(conn)
        second = await migrate(conn)
    assert first == [m.version for m in MIGRATIONS] and second == []
    assert query(url, "SELECT count(*) FROM sleepwell_schema_migrations")[0][0] == len(MIGRATIONS)


async def test_store_first_final_write_wins_and_ttl_expires(postgres: TestPostgres) -> None:
    async with migrated_store(postgres, ttl_s=0.5) as store:
        job = NewJob(id="job_unit", owner="o", idempotency_key=None, request={"prompt": "x"},
                     seed=1, steps=2, webhook_url=None, webhook_events=[])
        await store.create(job)
        assert (await store.start("job_unit", "w1")) is not None
        won = await store.finish("job_unit", JobStatus.SUCCEEDED, result=[{"seed": 1}])
        lost = await store.finish("job_unit", JobStatus.SUCCEEDED, result=[{"seed": 2}])
        assert won is not None and lost is None
        row = await store.get("job_unit")
        assert row is not None and row["result"] == [{"seed": 1}] and row["completions"] == 2
        assert (await store.start("job_unit", "w2")) is None  # final: never runs again
        for _ in range(50):
            row = await store.get("job_unit")
            if row is not None and row["expired"]:
                break
            await asyncio.sleep(0.1)
        assert row is not None and row["expired"]


async def test_store_progress_written_after_the_final_write_leaves_the_step(
    postgres: TestPostgres,
) -> None:
    # The throttled progress writer may race the final write: a succeeded job stays at
    # step == steps, and the writer learns the job is over.
    async with migrated_store(postgres, ttl_s=60) as store:
        await store.create(NewJob(id="job_late", owner="o", idempotency_key=None,
                                  request={"prompt": "x"}, seed=1, steps=4, webhook_url=None,
                                  webhook_events=[]))
        assert (await store.start("job_late", "w1")) is not None
        assert await store.progress("job_late", 2) is False
        assert await store.finish("job_late", JobStatus.SUCCEEDED, result=[]) is not None
        assert await store.progress("job_late", 3) is True  # over: stop watching
        row = await store.get("job_late")
        assert row is not None and (row["progress_step"], row["progress_steps"]) == (4, 4)


@pytest.mark.parametrize("url", ["http://127.0.0.1:8000/x", "http://localhost/x",
                                 "http://169.254.169.254/", "http://192.168.1.1/",
                                 "http://[::ffff:127.0.0.1]/", "http://0.0.0.0/"])
async def test_ssrf_refuses_non_public_targets_after_resolution(url: str) -> None:
    with pytest.raises(WebhookRefused, match="non-public"):
        await resolve(url, parse_allowed(None))


async def test_ssrf_allowed_hosts_open_a_named_host_and_pin_its_address() -> None:
    target = await resolve("http://127.0.0.1:8123/hook?a=1", parse_allowed("127.0.0.1"))
    assert target.url == "http://127.0.0.1:8123/hook?a=1"
    assert target.host_header == "127.0.0.1:8123"


def test_embedded_postgres_keeps_data_across_restarts() -> None:
    with tempfile.TemporaryDirectory(prefix="sw-emb-", dir="/tmp") as work:
        embedded = EmbeddedPostgres(Path(work) / "pg")
        url = embedded.start()
        try:
            query(url, "CREATE TABLE kept (x int); INSERT INTO kept VALUES (42)")
        finally:
            embedded.stop()
        again = EmbeddedPostgres(Path(work) / "pg")
        url = again.start()
        try:
            assert query(url, "SELECT x FROM kept") == [(42,)]
        finally:
            again.stop()
