"""API keys, the admin key, the metrics token, and protected mode.

Keys are compared in constant time: every presented token is hashed and compared with
``hmac.compare_digest`` against *every* configured key's hash, so neither the position of
a match nor a common prefix shows in the timing. Keys never leave this module in clear:
the rest of the app sees only ``key_id`` (a short hash) for rate limiting.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import logging
from pathlib import Path
from typing import Annotated, Any, Protocol

from fastapi import Depends, Request
from pydantic import SecretStr

from app.errors import AuthenticationFailed, NotFound
from app.settings import Settings

logger = logging.getLogger("sleepwell.security")

_BEARER = b"bearer "


class SecurityConfigError(ValueError):
    """The security settings cannot be honoured; the service must not start."""


def _digest(secret: bytes) -> bytes:
    return hashlib.sha256(secret).digest()


def key_id(token: bytes) -> str:
    """A short, stable, non-reversible name for a key: safe in logs and rate-limit keys."""
    return hashlib.sha256(token).hexdigest()[:16]


def parse_keys_text(text: str) -> list[str]:
    """Keys from a file's text: one per line; blank lines and ``#`` comments ignored."""
    keys = []
    for line in text.splitlines():
        key = line.split("#", 1)[0].strip()
        if key:
            keys.append(key)
    return keys


def configured_api_keys(settings: Settings) -> list[str]:
    """SLEEPWELL_API_KEYS (comma-separated) plus SLEEPWELL_API_KEYS_FILE."""
    keys: list[str] = []
    if settings.api_keys is not None:
        keys += [part.strip() for part in settings.api_keys.get_secret_value().split(",")]
    if settings.api_keys_file is not None:
        try:
            text = Path(settings.api_keys_file).read_text(encoding="utf-8")
        except OSError as exc:
            raise SecurityConfigError(
                f"SLEEPWELL_API_KEYS_FILE={settings.api_keys_file} cannot be read: "
                f"{exc.strerror or exc}"
            ) from exc
        from_file = parse_keys_text(text)
        if not from_file:
            # A keys file that holds no key is a mistake, never a wish for an open API.
            raise SecurityConfigError(
                f"SLEEPWELL_API_KEYS_FILE={settings.api_keys_file} holds no key "
                "(one key per line; '#' starts a comment)."
            )
        keys += from_file
    return [key for key in keys if key]


class KeyRing:
    """Hashes of accepted secrets; ``match`` runs in time independent of which one matches."""

    def __init__(self, secrets: list[str]) -> None:
        self._digests = [_digest(secret.encode("utf-8")) for secret in secrets]

    @classmethod
    def of(cls, secret: SecretStr | None) -> KeyRing:
        value = secret.get_secret_value() if secret is not None else ""
        return cls([value] if value else [])

    @property
    def enabled(self) -> bool:
        return bool(self._digests)

    def match(self, token: bytes | None) -> bool:
        if token is None:
            return False
        presented = _digest(token)
        found = False
        for digest in self._digests:  # no early exit: always compare against all
            found |= hmac.compare_digest(presented, digest)
        return found


def bearer_token(authorization: bytes | None) -> bytes | None:
    """The token of ``Authorization: Bearer <token>`` (scheme case-insensitive), as bytes."""
    if authorization is None or authorization[: len(_BEARER)].lower() != _BEARER:
        return None
    token = authorization[len(_BEARER) :].strip()
    return token or None


# --- protected mode ---------------------------------------------------------------------


def is_loopback_bind(address: str) -> bool:
    """True for binds only this machine can reach: loopback IPs, ``localhost``, unix sockets.

    Host names other than ``localhost`` count as exposed: they may resolve anywhere.
    """
    if address.startswith("unix:"):
        return True
    if address.startswith("fd://"):
        return False
    host = address
    if host.startswith("["):  # [::1]:8000
        host = host[1 : host.find("]")] if "]" in host else host[1:]
    elif host.count(":") == 1:  # 127.0.0.1:8000 / localhost:8000
        host = host.rsplit(":", 1)[0]
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def protected_mode_problem(
    binds: list[str], keys_configured: bool, allow_unauthenticated: bool
) -> str | None:
    """Why the service must not start, or None. Pure: the caller decides how to fail."""
    exposed = [bind for bind in binds if not is_loopback_bind(bind)]
    if keys_configured or allow_unauthenticated or not exposed:
        return None
    return (
        "Sleepwell refuses to start: protected mode is on. No API keys are configured, "
        f"yet it was asked to listen on {', '.join(exposed)}, which other machines can "
        "reach; that would expose an open image-generation API. Fix it one of these ways: "
        "set SLEEPWELL_API_KEYS=<key>[,<key>...] or SLEEPWELL_API_KEYS_FILE=<path> "
        "(one key per line) so clients must send 'Authorization: Bearer <key>'; or listen "
        "on loopback only (SLEEPWELL_HOST=127.0.0.1); or, if something in front of the "
        "service already authenticates, set SLEEPWELL_ALLOW_UNAUTHENTICATED=true."
    )


UNAUTHENTICATED_WARNING = (
    "SECURITY WARNING: serving {binds} with NO API keys because "
    "SLEEPWELL_ALLOW_UNAUTHENTICATED=true. Anyone who can reach this address can generate "
    "images. Set SLEEPWELL_API_KEYS or SLEEPWELL_API_KEYS_FILE unless a proxy in front of "
    "the service authenticates every request."
)


class _Warns(Protocol):
    def warning(self, msg: str, *args: Any) -> None: ...


def enforce_protected_mode(settings: Settings, binds: list[str], log: _Warns | None = None) -> None:
    """Exit (SystemExit with the reason) when protected mode forbids ``binds``.

    A keys file that is missing, unreadable or empty also exits. With ``log``, serving a
    non-loopback address without keys (SLEEPWELL_ALLOW_UNAUTHENTICATED) is warned about.
    """
    try:
        keys = configured_api_keys(settings)
    except SecurityConfigError as exc:
        raise SystemExit(f"Sleepwell refuses to start: {exc}") from None
    problem = protected_mode_problem(binds, bool(keys), settings.allow_unauthenticated)
    if problem is not None:
        raise SystemExit(problem)
    exposed = [bind for bind in binds if not is_loopback_bind(bind)]
    if log is not None and exposed and not keys:
        log.warning(UNAUTHENTICATED_WARNING.format(binds=", ".join(exposed)))


# --- admin ------------------------------------------------------------------------------


def check_admin(settings: Settings, authorization: bytes | None, path: str) -> None:
    """404 while admin endpoints are off (no SLEEPWELL_ADMIN_KEY); 401 for a wrong key."""
    ring = KeyRing.of(settings.admin_key)
    if not ring.enabled:
        raise NotFound(f"Unknown path: {path}")
    if not ring.match(bearer_token(authorization)):
        raise AuthenticationFailed(
            "Admin endpoints need 'Authorization: Bearer <SLEEPWELL_ADMIN_KEY>'.",
            code="invalid_admin_key",
        )


async def require_admin(request: Request) -> None:
    settings: Settings = request.app.state.settings
    header = request.headers.get("authorization")
    check_admin(settings, header.encode("latin-1") if header is not None else None,
                request.url.path)


AdminDep = Annotated[None, Depends(require_admin)]


# --- CORS -------------------------------------------------------------------------------


def cors_options(settings: Settings) -> dict[str, Any] | None:
    """Starlette CORSMiddleware options, or None: CORS is off unless origins are listed."""
    if not settings.cors_origins:
        return None
    origins = [origin.strip() for origin in settings.cors_origins.split(",") if origin.strip()]
    if not origins:
        return None
    return {
        "allow_origins": origins,
        "allow_methods": ["GET", "POST"],
        "allow_headers": ["Authorization", "Content-Type", "X-Request-ID"],
        "expose_headers": ["X-Request-ID", "Retry-After", "Server-Timing", "X-RateLimit-Limit",
                           "X-RateLimit-Remaining", "X-RateLimit-Reset"],
        # Keys travel in a header, never in cookies: no credentialed requests.
        "allow_credentials": False,
        "max_age": 600,
    }
