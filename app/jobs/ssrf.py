"""Webhook targets: no requests to loopback, private, link-local or other non-public hosts.

The name is resolved first and every address it resolves to is checked, so a public name
that points inside (DNS rebinding, a "localtest.me") is refused too. The connection then goes
to the checked address (Host header and TLS SNI keep the name), so the name cannot resolve
differently between check and connect. SLEEPWELL_WEBHOOK_ALLOWED_HOSTS opens named hosts
(as written in the URL, or the address itself), e.g. an in-cluster receiver or tests.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from dataclasses import dataclass
from urllib.parse import urlsplit, urlunsplit

from app.errors import InvalidRequest
from app.settings import Settings

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


class WebhookRefused(Exception):
    """The target is not allowed (or cannot be resolved); the message says why."""


@dataclass(frozen=True)
class Target:
    url: str  # with the checked address in place of the name
    host: str  # for TLS SNI (and certificate checks)
    host_header: str  # the name and port as the URL gave them


def allowed_hosts(settings: Settings) -> frozenset[str]:
    raw = settings.webhook_allowed_hosts or ""
    return frozenset(part.strip().lower() for part in raw.split(",") if part.strip())


def check_shape(url: str) -> None:
    """At submission: a clear 400 for what can never be delivered."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise InvalidRequest("webhook must be an http:// or https:// URL with a host.",
                             param="webhook")
    if parts.username or parts.password:
        raise InvalidRequest("webhook must not carry credentials in the URL.", param="webhook")


def _public(address: IPAddress) -> bool:
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    return address.is_global and not address.is_multicast


async def resolve(url: str, allowed: frozenset[str]) -> Target:
    parts = urlsplit(url)
    host = (parts.hostname or "").lower()
    port = parts.port or (443 if parts.scheme == "https" else 80)
    try:
        infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except OSError as exc:
        raise WebhookRefused(f"webhook host {host!r} does not resolve: {exc}") from exc
    addresses = [ipaddress.ip_address(info[4][0]) for info in infos]
    if not addresses:
        raise WebhookRefused(f"webhook host {host!r} does not resolve")
    opened = host in allowed or any(str(address) in allowed for address in addresses)
    refused = [str(address) for address in addresses if not _public(address)]
    if refused and not opened:
        raise WebhookRefused(
            f"webhook host {host!r} resolves to a non-public address ({', '.join(refused)}); "
            "allow it with SLEEPWELL_WEBHOOK_ALLOWED_HOSTS if that is intended"
        )
    address = addresses[0]
    shown = f"[{address}]" if address.version == 6 else str(address)
    netloc = f"{shown}:{port}"
    url_for_address = urlunsplit((parts.scheme, netloc, parts.path or "/", parts.query, ""))
    return Target(url_for_address, host, parts.netloc.rsplit("@", 1)[-1])


async def check_target(url: str, settings: Settings) -> None:
    """At submission: refuse a target that delivery would refuse, with a 400."""
    check_shape(url)
    try:
        await resolve(url, allowed_hosts(settings))
    except WebhookRefused as exc:
        raise InvalidRequest(str(exc), param="webhook", code="webhook_refused") from exc
