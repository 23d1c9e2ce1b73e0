"""Posting to a Feishu custom bot: signed, with retries and backoff, judged by the body.

Feishu answers HTTP 200 even when it rejects a message, so success is ``code == 0`` in the
JSON body (``StatusCode == 0`` on the legacy API). Transport errors, 429, 5xx and codes not
known to be permanent are retried with exponential backoff; each attempt is signed afresh.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import httpx

from app.relay.cards import encode
from app.relay.config import RelayConfig
from app.relay.metrics import RelayMetrics
from app.relay.signing import signed

logger = logging.getLogger("sleepwell.relay")

# Codes a retry cannot fix: bad signature or stale timestamp (19021), IP not allowed
# (19022), keyword check failed (19024), malformed request (9499).
PERMANENT_CODES = frozenset({9499, 19021, 19022, 19024})


@dataclass(frozen=True)
class Attempt:
    ok: bool
    retryable: bool
    result: str  # a RelayMetrics attempt result
    detail: str


@dataclass(frozen=True)
class Delivery:
    delivered: bool
    attempts: int
    error: str | None = None


class FeishuClient:
    def __init__(
        self,
        http: httpx.AsyncClient,
        config: RelayConfig,
        metrics: RelayMetrics,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        self.http = http
        self.config = config
        self.metrics = metrics
        self.sleep = sleep

    async def deliver(self, message: dict[str, Any]) -> Delivery:
        """Post until Feishu accepts, a permanent error, or attempts run out."""
        started = time.monotonic()
        delivery = await self._deliver(message)
        self.metrics.duration.observe(time.monotonic() - started)
        outcome = "delivered" if delivery.delivered else "failed"
        self.metrics.notifications.labels(outcome=outcome).inc()
        if delivery.delivered:
            self.metrics.last_success.set_to_current_time()
        else:
            logger.error("feishu delivery failed after %d attempt(s): %s",
                         delivery.attempts, delivery.error)
        return delivery

    async def _deliver(self, message: dict[str, Any]) -> Delivery:
        if self.config.webhook_url is None:
            return Delivery(False, 0, "SLEEPWELL_FEISHU_WEBHOOK_URL is not configured")
        attempt = Attempt(False, True, "transport_error", "not attempted")
        for number in range(1, self.config.max_attempts + 1):
            if number > 1:
                await self.sleep(self.backoff(number - 1))
            attempt = await self._attempt(self.config.webhook_url, message)
            self.metrics.attempts.labels(result=attempt.result).inc()
            if attempt.ok:
                return Delivery(True, number)
            logger.warning("feishu attempt %d failed: %s", number, attempt.detail)
            if not attempt.retryable:
                return Delivery(False, number, attempt.detail)
        return Delivery(False, self.config.max_attempts, attempt.detail)

    def backoff(self, retry: int) -> float:
        """Exponential backoff with jitter: base * 2**(retry-1), capped, times 0.5-1.0."""
        delay = min(self.config.backoff_max_s, self.config.backoff_s * 2 ** (retry - 1))
        return float(delay * random.uniform(0.5, 1.0))

    async def _attempt(self, url: str, message: dict[str, Any]) -> Attempt:
        body = encode(signed(message, self.config.secret))
        try:
            response = await self.http.post(
                url,
                content=body,
                headers={"Content-Type": "application/json; charset=utf-8"},
                timeout=self.config.timeout_s,
            )
        except httpx.HTTPError as exc:
            return Attempt(False, True, "transport_error", f"{type(exc).__name__}: {exc}")
        return judge(response)


def judge(response: httpx.Response) -> Attempt:
    """Success only when the body says so; HTTP status alone proves nothing."""
    status = response.status_code
    try:
        payload = response.json()
    except ValueError:
        payload = None
    code = _body_code(payload)
    message = str(payload.get("msg") or payload.get("StatusMessage") or "") if isinstance(
        payload, dict) else response.text[:200]
    if status == 200 and code == 0:
        return Attempt(True, False, "ok", "ok")
    if code is not None and code != 0:
        return Attempt(False, code not in PERMANENT_CODES, "feishu_error",
                       f"HTTP {status}, code {code}: {message}")
    retryable = status == 429 or status >= 500 or status == 200
    return Attempt(False, retryable, "http_error", f"HTTP {status}: {message}")


def _body_code(payload: Any) -> int | None:
    if not isinstance(payload, dict):
        return None
    for key in ("code", "StatusCode"):
        value = payload.get(key)
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    return None
