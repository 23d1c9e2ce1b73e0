"""API keys, the admin key and the metrics token (protected mode: protected_mode.py).

Keys are compared in constant time: every presented token is hashed and compared with
``hmac.compare_digest`` against *every* configured key's hash, so neither the position of
a match nor a common prefix shows in the timing. Keys never leave this module in clear:
the rest of the app sees only ``key_id`` (a short hash) for rate limiting.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
from pathlib import Path
from typing import Annotated

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
