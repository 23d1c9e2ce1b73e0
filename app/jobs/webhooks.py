"""Webhooks: durable SAQ jobs, signed per Standard Webhooks, retried with backoff.

Each event is its own SAQ job on the ``sleepwell-webhooks`` queue, keyed by its message id
(``webhook-id``), so an event is enqueued once however often the job runs, and a crash
mid-delivery is swept and retried. Every attempt is signed afresh (new timestamp) with
SLEEPWELL_WEBHOOK_SECRET and goes to an address ssrf.py checked. Outcomes are counted in
``webhook_deliveries_total{outcome}``: delivered, retried, failed (gave up), refused.
"""

from __future__ import annotations

import asyncio
import json
import logging
from datetime import UTC, datetime
from typing import Any

import httpx
from saq import Worker
from saq.utils import cancel_tasks
from standardwebhooks.webhooks import Webhook

from app.jobs.queue import JobQueue
from app.jobs.schemas import JobStatus, JobView
from app.net.ssrf import (
    Resolver,
    Target,
    WebhookRefused,
    WebhookUnresolved,
    allowed_hosts,
    resolve,
    system_resolver,
)
from app.observability import metrics
from app.settings import Settings

logger = logging.getLogger("sleepwell.jobs.webhooks")
DELIVER_FUNCTION = "deliver_webhook"


def completed_message_id(job_id: str) -> str:
    """The ``webhook-id`` (and SAQ key) of a job's one "completed" event."""
    return f"msg_{job_id}_completed"


class WebhookAttemptFailed(Exception):
    """Raised from a delivery so SAQ retries it (or gives up after the last attempt)."""


class _QuietWorker(Worker):  # type: ignore[type-arg]
    """SAQ's Worker without its signal handlers (they would replace uvicorn's) and without
    its upkeep tasks (the component sweeps both queues itself, without LISTEN)."""

    SIGNALS = []

    async def upkeep(self) -> list[asyncio.Task[None]]:
        return []

    async def stop(self) -> None:
        """Cancel our tasks, then let SAQ clean up. SAQ's own stop waits for them its
        grace period (none: a cancelled delivery is retried) and then warns that "some
        tasks did not finish", even when they were only idle dequeues: every shutdown."""
        self.event.set()  # first: a cancelled task must not be replaced by a new one
        tasks = list(self.tasks)
        self.tasks.clear()
        await cancel_tasks(tasks, self._cancellation_hard_deadline_s)
        await super().stop()


class Webhooks:
    def __init__(self, settings: Settings, queue: JobQueue,
                 resolver: Resolver = system_resolver) -> None:
        self.settings = settings
        self.queue = queue
        secret = settings.webhook_secret
        self.signer = Webhook(secret.get_secret_value()) if secret is not None else None
        self.allowed = allowed_hosts(settings)
        self.resolver = resolver
        # trust_env=False: no proxy from the environment; the request goes to the address
        # ssrf.py checked and to nothing else.
        self.client = httpx.AsyncClient(timeout=settings.webhook_timeout_s,
                                        follow_redirects=False, trust_env=False)
        self.worker = _QuietWorker(
            queue.webhooks, functions=[(DELIVER_FUNCTION, self._deliver)], concurrency=4,
            # Longer than a pool wait: SAQ's dequeue must not time out while it holds a row.
            dequeue_timeout=settings.database_timeout_s + 1.0,
            poll_interval=settings.job_poll_interval_s * 2,
        )

    async def close(self) -> None:
        await self.worker.stop()
        await self.client.aclose()

    # --- enqueueing ---------------------------------------------------------------------
    async def notify(self, row: dict[str, Any], event: str) -> None:
        """Enqueue ``event`` for the job in ``row``. A "started" or "progress" event is
        per run (a redelivered job reports its new run); "completed" is once per job."""
        if event == "completed":
            await self._enqueue(row, event, completed_message_id(row["id"]))
            return
        suffix = f"-{row['attempts']}" if event == "started" else ""
        await self._enqueue(row, event, f"msg_{row['id']}_{event}{suffix}")

    async def notify_progress(self, row: dict[str, Any], step: int) -> None:
        update = {**row, "progress_step": step, "status": JobStatus.RUNNING.value}
        msg_id = f"msg_{row['id']}_progress_{row['attempts']}_{step}"
        await self._enqueue(update, "progress", msg_id)

    async def notify_partial(self, row: dict[str, Any], step: int,
                             partial: dict[str, Any]) -> None:
        """A "progress" event that carries a partial image (app/jobs/partials.py)."""
        update = {**row, "progress_step": step, "status": JobStatus.RUNNING.value}
        msg_id = f"msg_{row['id']}_partial_{row['attempts']}_{partial['partial_image_index']}"
        await self._enqueue(update, "progress", msg_id, {"partial_image": partial})

    async def _enqueue(self, row: dict[str, Any], event: str, msg_id: str,
                       extra: dict[str, Any] | None = None) -> None:
        if not row.get("webhook_url") or event not in (row.get("webhook_events") or []):
            return
        payload = json.dumps({
            "type": f"job.{event}",
            "timestamp": datetime.now(UTC).isoformat(),
            "data": {**JobView.from_row(row).wire(), **(extra or {})},
        })
        await self.queue.webhooks.enqueue(
            DELIVER_FUNCTION, key=msg_id, url=row["webhook_url"], msg_id=msg_id, payload=payload,
            timeout=int(self.settings.webhook_timeout_s) + 5, heartbeat=0,
            retries=self.settings.webhook_max_attempts,
            retry_delay=self.settings.webhook_retry_delay_s,
            retry_backoff=self.settings.webhook_retry_max_s, ttl=3600,
        )

    # --- delivering ---------------------------------------------------------------------
    async def _deliver(self, ctx: dict[str, Any], *, url: str, msg_id: str, payload: str) -> None:
        job = ctx["job"]
        try:
            target = await resolve(url, self.allowed, self.resolver,
                                   self.settings.webhook_timeout_s)
        except WebhookRefused as exc:  # final: a retry would resolve the same way
            metrics.WEBHOOK_DELIVERIES.labels(outcome="refused").inc()
            logger.warning("webhook %s refused at delivery: %s", msg_id, exc)
            return
        except WebhookUnresolved as exc:  # DNS may be back on the next attempt
            problem: str | None = str(exc)
        else:
            problem = await self._post(target, msg_id, payload)
        if problem is None:
            metrics.WEBHOOK_DELIVERIES.labels(outcome="delivered").inc()
            return
        last = job.attempts >= job.retries
        metrics.WEBHOOK_DELIVERIES.labels(outcome="failed" if last else "retried").inc()
        logger.warning("webhook %s attempt %d/%d failed: %s", msg_id, job.attempts, job.retries,
                       problem)
        raise WebhookAttemptFailed(problem)

    async def _post(self, target: Target, msg_id: str, payload: str) -> str | None:
        """None when the receiver took it (2xx); else what went wrong."""
        if self.signer is None:
            return "SLEEPWELL_WEBHOOK_SECRET is not set"
        now = datetime.now(UTC)
        headers = {
            "content-type": "application/json",
            "host": target.host_header,
            "webhook-id": msg_id,
            "webhook-timestamp": str(int(now.timestamp())),
            "webhook-signature": self.signer.sign(msg_id, now, payload),
        }
        try:
            # Streamed and never read: only the status matters, and a receiver's body (of any
            # size) stays on the wire. The connection goes to the checked address only.
            async with self.client.stream("POST", target.url, content=payload, headers=headers,
                                          extensions={"sni_hostname": target.host}) as response:
                status = response.status_code
        except httpx.HTTPError as exc:
            return f"{type(exc).__name__}: {exc}"
        if 200 <= status < 300:
            return None
        return f"HTTP {status}"
