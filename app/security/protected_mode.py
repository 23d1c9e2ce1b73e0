"""Protected mode: with no API keys, refuse to serve an address other machines can reach."""

from __future__ import annotations

import ipaddress
from typing import Any, Protocol

from app.security.keys import SecurityConfigError, configured_api_keys
from app.settings import Settings


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
