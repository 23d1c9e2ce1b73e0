"""Rate limits per API key and per client IP, with the ``limits`` library.

Storage is ``memory://`` by default (each worker counts alone, so N workers allow up to N
times the limit) or Redis (``SLEEPWELL_RATE_LIMIT_STORAGE=redis://host:port/db``), which
every worker shares, so the limit holds for the whole service. The moving-window strategy
is exact: no burst of twice the limit across a window edge.

If the storage fails (Redis down), requests are let through and a warning is logged at
most every 30 s: a broken limiter must not turn into an outage of the API it protects.

Headers, also on allowed responses: ``X-RateLimit-Limit`` (requests per window),
``X-RateLimit-Remaining``, ``X-RateLimit-Reset`` (Unix time, seconds, when a slot frees, as
GitHub sends it) and, on 429, ``Retry-After`` (seconds).
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass

from limits import RateLimitItem, parse_many
from limits.aio.strategies import MovingWindowRateLimiter
from limits.errors import StorageError
from limits.storage import storage_from_string

from app.settings import Settings

logger = logging.getLogger("sleepwell.ratelimit")

_WARN_EVERY_S = 30.0
# Generous for loopback, short enough that a dead Redis costs a request little.
_REDIS_TIMEOUT_S = 1.0


@dataclass(frozen=True)
class Decision:
    allowed: bool
    limit: int
    remaining: int
    reset_at: float  # Unix time

    def retry_after_s(self, now: float | None = None) -> int:
        return max(1, math.ceil(self.reset_at - (now or time.time())))

    def headers(self) -> list[tuple[bytes, bytes]]:
        values = [
            (b"x-ratelimit-limit", self.limit),
            (b"x-ratelimit-remaining", max(0, self.remaining)),
            (b"x-ratelimit-reset", math.ceil(self.reset_at)),
        ]
        if not self.allowed:
            values.append((b"retry-after", self.retry_after_s()))
        return [(name, str(value).encode()) for name, value in values]


def storage_uri(uri: str) -> str:
    """``redis://...`` -> ``async+redis://...``: the limiter runs on the event loop."""
    return uri if uri.startswith("async+") else f"async+{uri}"


class RateLimiter:
    """One per worker; ``check`` hits every configured window for an identity."""

    def __init__(self, settings: Settings) -> None:
        per_key, per_ip = settings.rate_limit, settings.rate_limit_per_ip
        self.per_key: list[RateLimitItem] = parse_many(per_key) if per_key else []
        self.per_ip: list[RateLimitItem] = parse_many(per_ip) if per_ip else []
        self._uri = storage_uri(settings.rate_limit_storage)
        self._prefix = settings.rate_limit_key_prefix
        self._limiter: MovingWindowRateLimiter | None = None
        self._last_warning = -math.inf

    @property
    def enabled(self) -> bool:
        return bool(self.per_key or self.per_ip)

    def _strategy(self) -> MovingWindowRateLimiter:
        # Built lazily, inside the worker's event loop: an asyncio Redis client belongs
        # to the loop that first uses it.
        if self._limiter is None:
            options: dict[str, float | str | bool] = {}
            if "redis" in self._uri:
                options = {"implementation": "redispy", "key_prefix": self._prefix,
                           "socket_timeout": _REDIS_TIMEOUT_S,
                           "socket_connect_timeout": _REDIS_TIMEOUT_S}
            storage = storage_from_string(self._uri, wrap_exceptions=True, **options)
            self._limiter = MovingWindowRateLimiter(storage)
        return self._limiter

    async def check(self, items: list[RateLimitItem], *identity: str) -> Decision | None:
        """Hit each window; the first refused one decides, else the tightest is reported.

        None when nothing limits this request (no items, or the storage is failing).
        """
        if not items:
            return None
        try:
            return await self._check(items, identity)
        except (StorageError, OSError, TimeoutError) as exc:
            self._warn(exc)
            return None

    async def _check(self, items: list[RateLimitItem], identity: tuple[str, ...]) -> Decision:
        limiter = self._strategy()
        tightest: Decision | None = None
        for item in items:
            allowed = await limiter.hit(item, *identity)
            stats = await limiter.get_window_stats(item, *identity)
            decision = Decision(allowed, item.amount, stats.remaining, stats.reset_time)
            if not allowed:
                return decision
            if tightest is None or decision.remaining < tightest.remaining:
                tightest = decision
        assert tightest is not None
        return tightest

    def _warn(self, exc: BaseException) -> None:
        now = time.monotonic()
        if now - self._last_warning >= _WARN_EVERY_S:
            self._last_warning = now
            cause = type(exc.__cause__).__name__ if exc.__cause__ else "-"
            # Types only: a storage error's text may carry the storage URL and its password.
            logger.warning("rate limit storage failed (%s, cause %s); letting requests through",
                           type(exc).__name__, cause)
