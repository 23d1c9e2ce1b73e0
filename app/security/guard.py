"""Pure-ASGI gate in front of the app: API keys, admin key, metrics token, rate limits.

Pure ASGI (never BaseHTTPMiddleware) so ``receive`` still carries ``http.disconnect`` to
the images handler. Which paths need what:

- ``/health``, ``/health/*``: always open, never limited (probes must not be throttled).
- ``/ui``, ``/ui/*`` (the playground, when SLEEPWELL_UI is on): open, never limited: a
  page load is several static files; the API calls the page makes carry the key and are
  limited like any other.
- ``/metrics``: ``Authorization: Bearer <SLEEPWELL_METRICS_TOKEN>`` when that is set.
- ``/v1/*``: an API key when keys are configured; per-IP then per-key rate limits.
- ``/admin/*``: 404 while SLEEPWELL_ADMIN_KEY is unset, else that key (routes also depend
  on ``app.security.keys.require_admin``); per-IP rate limit.
- anything else (docs, schema, unknown paths): per-IP rate limit only.

The per-IP limit is checked before the key, so guessing keys is throttled too. Each
request hits each configured limit exactly once, each limit under its own identity:
``("ip", <client>)`` for SLEEPWELL_RATE_LIMIT_PER_IP and ``("key", <key id>)`` for
SLEEPWELL_RATE_LIMIT, or ``("anonymous-ip", <client>)`` when auth is off.
"""

from __future__ import annotations

from limits import RateLimitItem
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.errors import AuthenticationFailed, RateLimited, SleepwellError, send_error
from app.security.keys import KeyRing, bearer_token, check_admin, configured_api_keys, key_id
from app.security.ratelimit import Decision, RateLimiter
from app.settings import Settings


def _authorization(scope: Scope) -> bytes | None:
    for name, value in scope.get("headers", []):
        if name.lower() == b"authorization":
            return bytes(value)
    return None


def _client_ip(scope: Scope) -> str:
    # Uvicorn has already replaced this with X-Forwarded-For's client when the peer is a
    # trusted proxy (gunicorn's forwarded_allow_ips, loopback by default).
    client = scope.get("client")
    return str(client[0]) if client else "unknown"


def is_health_path(path: str) -> bool:
    return path == "/health" or path.startswith("/health/")


class GuardMiddleware:
    def __init__(self, app: ASGIApp, settings: Settings) -> None:
        self.app = app
        self.settings = settings
        self.api_keys = KeyRing(configured_api_keys(settings))
        self.metrics_token = KeyRing.of(settings.metrics_token)
        self.admin_key = KeyRing.of(settings.admin_key)  # jobs: operators list every job
        self.limiter = RateLimiter(settings)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path = scope.get("path", "") if scope["type"] == "http" else ""
        if scope["type"] != "http" or is_health_path(path) or self._is_ui_path(path):
            await self.app(scope, receive, send)
            return
        try:
            decision = await self._admit(scope, path)
        except RateLimitedWithHeaders as exc:
            await send_error(send, exc, exc.decision_headers)
            return
        except SleepwellError as exc:
            await send_error(send, exc)
            return
        if decision is None:
            await self.app(scope, receive, send)
            return
        extra = decision.headers()

        async def send_with_limits(message: Message) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", []), *extra]
            await send(message)

        await self.app(scope, receive, send_with_limits)

    def _is_ui_path(self, path: str) -> bool:
        return self.settings.ui and (path == "/ui" or path.startswith("/ui/"))

    async def _admit(self, scope: Scope, path: str) -> Decision | None:
        """Raise the refusal, or return the tightest rate-limit state to report."""
        authorization = _authorization(scope)
        if path == "/metrics":
            if self.metrics_token.enabled and not self.metrics_token.match(
                bearer_token(authorization)
            ):
                raise AuthenticationFailed(
                    "/metrics needs 'Authorization: Bearer <SLEEPWELL_METRICS_TOKEN>'.",
                    code="invalid_metrics_token",
                )
            return None
        ip = _client_ip(scope)
        by_ip = await self._limit(self.limiter.per_ip, "ip", ip)
        if path == "/admin" or path.startswith("/admin/"):
            check_admin(self.settings, authorization, path)
            return by_ip
        if not path.startswith("/v1/"):
            return by_ip
        # The per-key limit's own counter: with auth off it counts per client IP, but never
        # in the per-IP limit's counter ("ip"), or one request would count twice there.
        identity = ("anonymous-ip", ip)
        # --- jobs (issue 10): GET /v1/jobs also takes the admin key (operators' list).
        if path == "/v1/jobs" and self.admin_key.match(bearer_token(authorization)):
            return by_ip
        # --- end jobs
        if self.api_keys.enabled:
            token = bearer_token(authorization)
            if not self.api_keys.match(token):
                raise AuthenticationFailed(_missing_or_wrong(token))
            assert token is not None
            identity = ("key", key_id(token))
            scope.setdefault("state", {})["key_id"] = identity[1]  # for the access log
        by_key = await self._limit(self.limiter.per_key, *identity)
        candidates = [d for d in (by_ip, by_key) if d is not None]
        return min(candidates, key=lambda d: d.remaining, default=None)

    async def _limit(self, items: list[RateLimitItem], *identity: str) -> Decision | None:
        decision = await self.limiter.check(items, *identity)
        if decision is not None and not decision.allowed:
            raise RateLimitedWithHeaders(decision, identity[0])
        return decision


def _missing_or_wrong(token: bytes | None) -> str:
    if token is None:
        return (
            "You didn't provide an API key. Send it as 'Authorization: Bearer <key>' "
            "(keys come from SLEEPWELL_API_KEYS or SLEEPWELL_API_KEYS_FILE)."
        )
    return "Incorrect API key provided."


class RateLimitedWithHeaders(RateLimited):
    def __init__(self, decision: Decision, scope_name: str) -> None:
        what = "API key" if scope_name == "key" else "client IP"
        super().__init__(
            f"Rate limit reached for this {what}: {decision.limit} requests per window. "
            f"Retry in {decision.retry_after_s()}s.",
            retry_after_s=decision.retry_after_s(),
        )
        # Retry-After already comes from retry_after_s; only the X-RateLimit-* go extra.
        self.decision_headers = [h for h in decision.headers() if h[0] != b"retry-after"]
