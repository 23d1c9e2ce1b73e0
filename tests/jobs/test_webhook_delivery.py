"""Webhook delivery in one process: a real PostgreSQL, SAQ's webhook queue and worker as
app/jobs/component.py builds them, and a receiver on 127.0.0.1. Names resolve through a
resolver we pass in; every real connection goes to 127.0.0.1 and nowhere else.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import AsyncIterator, Iterator, Sequence
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass
from typing import Any

from prometheus_client import REGISTRY, generate_latest
from saq.job import Job, Status
from standardwebhooks.webhooks import Webhook

from app.jobs.database import Database
from app.jobs.migrations import migrate
from app.jobs.queue import JobQueue
from app.jobs.schemas import JobStatus
from app.jobs.store import JobStore, NewJob
from app.jobs.webhooks import Webhooks
from app.net.ssrf import allowed_hosts, check_target, resolve
from app.observability import metrics
from app.settings import Settings
from tests.jobs.helpers import WEBHOOK_SECRET, Receiver, webhook_receiver
from tests.jobs.postgres import TestPostgres
from tests.support.scrape import value
from tests.support.waiting import async_wait_until

WITHIN_S = 60.0  # generous: the machine is shared; nothing here is a timing assertion
FINAL = {Status.COMPLETE, Status.FAILED, Status.ABORTED}


class Answers:
    """A resolver whose answers the test sets (and may change: DNS rebinding)."""

    def __init__(self, table: dict[str, Sequence[str]]) -> None:
        self.table = dict(table)

    async def __call__(self, host: str, port: int) -> list[str]:
        return list(self.table[host])


@dataclass
class Delivery:
    webhooks: Webhooks
    store: JobStore
    settings: Settings

    async def notify_completed(self, url: str) -> str:
        """A finished job with a webhook, notified; its message id (the SAQ job's key)."""
        job_id = f"job_{uuid.uuid4().hex}"
        await self.store.create(NewJob(
            id=job_id, owner="o", idempotency_key=None, request={"prompt": "x"}, seed=1,
            steps=2, webhook_url=url, webhook_events=["completed"]))
        image = {"b64_json": "aW1n", "seed": 1}
        row = await self.store.finish(job_id, JobStatus.SUCCEEDED, result=[image])
        assert row is not None
        await self.webhooks.notify(row, "completed")
        return f"msg_{job_id}_completed"

    async def final_saq_job(self, msg_id: str) -> Job:
        async def final() -> Job | None:
            job = await self.webhooks.queue.webhooks.job(msg_id)
            return job if job is not None and job.status in FINAL else None

        job = await async_wait_until(final, WITHIN_S, period=0.05,
                                     what=f"webhook job {msg_id} final")
        assert job is not None
        return job


def deliveries(outcome: str) -> float:
    """From the exposition, so a missing metric or label fails instead of reading 0."""
    return value(generate_latest(REGISTRY).decode(), "webhook_deliveries_total", outcome=outcome)


@contextmanager
def captured(logger_name: str) -> Iterator[list[logging.LogRecord]]:
    """Records of one logger, whatever logging setup (propagation) earlier tests left."""
    records: list[logging.LogRecord] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            records.append(record)

    handler = Keep(logging.DEBUG)
    logger = logging.getLogger(logger_name)
    logger.addHandler(handler)
    try:
        yield records
    finally:
        logger.removeHandler(handler)


@asynccontextmanager
async def delivering(postgres: TestPostgres, resolver: Answers,
                     **settings: Any) -> AsyncIterator[Delivery]:
    config = Settings(database_timeout_s=5, webhook_secret=WEBHOOK_SECRET, **settings)
    database = Database(postgres.new_database(), config)
    await database.open()
    async with database.connection() as conn:
        await migrate(conn)
    queue = JobQueue(database.pool, config)
    await queue.connect()
    metrics.initialise_job_series()
    webhooks = Webhooks(config, queue, resolver=resolver)
    worker = asyncio.create_task(webhooks.worker.start())
    try:
        yield Delivery(webhooks, JobStore(database, config.job_ttl_s), config)
    finally:
        await webhooks.close()
        await asyncio.wait_for(worker, 30)
        await database.close()


def received(receiver: Receiver) -> list[tuple[dict[str, str], bytes, int]]:
    with receiver.lock:
        return list(receiver.requests)


async def test_deliver_private_then_allowed_address_reaches_the_allowed_one_only(
    postgres: TestPostgres,
) -> None:
    with webhook_receiver() as receiver:
        url = f"http://hooks.internal:{receiver.port}/hook"
        resolver = Answers({"hooks.internal": ["10.0.0.7", "127.0.0.1"]})
        async with delivering(postgres, resolver, webhook_allowed_hosts="127.0.0.1") as run:
            # Before any connection: the choice must be 127.0.0.1, never 10.0.0.7.
            chosen = await resolve(url, allowed_hosts(run.settings), resolver)
            assert chosen.address == "127.0.0.1"
            before = deliveries("delivered")
            msg_id = await run.notify_completed(url)
            job = await run.final_saq_job(msg_id)
            assert (job.status, job.attempts) == (Status.COMPLETE, 1)
            assert deliveries("delivered") == before + 1
        [(headers, body, status)] = received(receiver)
        assert status == 200 and headers["host"] == f"hooks.internal:{receiver.port}"
        assert headers["webhook-id"] == msg_id
        Webhook(WEBHOOK_SECRET).verify(body, headers)


async def test_deliver_name_rebound_inside_after_submission_is_refused_once_not_retried(
    postgres: TestPostgres,
) -> None:
    with webhook_receiver() as receiver:
        url = f"http://rebind.example.com:{receiver.port}/hook"
        resolver = Answers({"rebind.example.com": ["93.184.215.14"]})  # public: submitted
        async with delivering(postgres, resolver, webhook_max_attempts=3,
                              webhook_retry_delay_s=0.05, webhook_retry_max_s=0.2) as run:
            await check_target(url, run.settings, resolver)  # passes: no connection made
            resolver.table["rebind.example.com"] = ["127.0.0.1"]  # ... then rebound inside
            refused, retried = deliveries("refused"), deliveries("retried")
            with captured("sleepwell.jobs.webhooks") as records:
                msg_id = await run.notify_completed(url)
                job = await run.final_saq_job(msg_id)
            assert (job.status, job.attempts) == (Status.COMPLETE, 1)  # given up, not retried
            assert deliveries("refused") == refused + 1
            assert deliveries("retried") == retried
        assert received(receiver) == []
        warnings = [r.getMessage() for r in records if r.levelno == logging.WARNING]
        assert any(msg_id in line and "refused" in line and "127.0.0.1" in line
                   for line in warnings), warnings


async def test_deliver_receiver_always_500_gets_max_attempts_then_one_failed(
    postgres: TestPostgres,
) -> None:
    attempts = 3
    with webhook_receiver(fail_first=1_000) as receiver:
        resolver = Answers({"127.0.0.1": ["127.0.0.1"]})  # as the system's would answer
        async with delivering(postgres, resolver, webhook_allowed_hosts="127.0.0.1",
                              webhook_max_attempts=attempts, webhook_retry_delay_s=0.05,
                              webhook_retry_max_s=0.2) as run:
            failed, retried = deliveries("failed"), deliveries("retried")
            msg_id = await run.notify_completed(receiver.url)
            job = await run.final_saq_job(msg_id)
            assert (job.status, job.attempts) == (Status.FAILED, attempts)
            assert deliveries("failed") == failed + 1
            assert deliveries("retried") == retried + attempts - 1
        requests = received(receiver)
        assert [status for _, _, status in requests] == [500] * attempts
        assert {headers["webhook-id"] for headers, _, _ in requests} == {msg_id}
        for headers, body, _ in requests:
            Webhook(WEBHOOK_SECRET).verify(body, headers)  # each attempt signed afresh
