"""Webhook targets: requests go only to public addresses, or to addresses the operator opened.

The name is resolved first and every address is classified:

- **never**: no setting opens these. Unspecified (0.0.0.0/8, ::), limited broadcast,
  multicast, deprecated site-local (fec0::/10), and the IPv6 ranges that carry an IPv4
  address to a translator or tunnel this check cannot see past: IPv4-compatible (::/96),
  NAT64 (64:ff9b::/96, 64:ff9b:1::/48), 6to4 (2002::/16), Teredo (2001::/32).
- **public**: global unicast outside every special-purpose range (the table below, not only
  ``is_global``, which passes several of the ranges above and differs between Pythons).
- **non-public**: loopback, private, CGNAT, link-local and cloud metadata, benchmarking,
  documentation, reserved, unique-local... Usable only when opened:

SLEEPWELL_WEBHOOK_ALLOWED_HOSTS is a comma-separated list of host names, addresses and CIDR
networks. A listed *name* (as the URL writes it) trusts that name's DNS: each of its
addresses that is not "never" may be used. A listed *address or network* opens exactly those
addresses, whatever name leads to them. An IPv4-mapped IPv6 address counts as its IPv4 one.

The connection goes to the first resolved address that is public or opened, in the
resolver's order; an address that is neither is skipped and never chosen because a sibling
address of the same name is allowed. No usable address: refused. The connection is then
pinned to that address (Host header and TLS SNI keep the name), so the name cannot resolve
differently between check and connect; delivery resolves and checks again on every attempt
(a name rebound to an inside address after submission is refused then).
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from enum import Enum
from urllib.parse import urlsplit, urlunsplit

from app.errors import InvalidRequest
from app.settings import Settings

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
# (host, port) -> the addresses it resolves to, in preference order. Injectable for tests.
Resolver = Callable[[str, int], Awaitable[Sequence[str]]]

_NEVER: tuple[IPNetwork, ...] = tuple(ipaddress.ip_network(net) for net in (
    "0.0.0.0/8", "255.255.255.255/32", "224.0.0.0/4", "ff00::/8", "::/96", "64:ff9b::/96",
    "64:ff9b:1::/48", "2002::/16", "2001::/32", "fec0::/10",
))
# Special-purpose ranges (IANA registries) that Python's ``is_global`` passes or may pass.
_NOT_PUBLIC: tuple[IPNetwork, ...] = tuple(ipaddress.ip_network(net) for net in (
    "10.0.0.0/8", "100.64.0.0/10", "127.0.0.0/8", "169.254.0.0/16", "172.16.0.0/12",
    "192.0.0.0/24", "192.0.2.0/24", "192.88.99.0/24", "192.168.0.0/16", "198.18.0.0/15",
    "198.51.100.0/24", "203.0.113.0/24", "240.0.0.0/4", "::1/128", "100::/64",
    "2001::/23", "2001:db8::/32", "fc00::/7", "fe80::/10",
))


class WebhookRefused(Exception):
    """The target is not allowed; the message says why. Never retried."""


class WebhookUnresolved(Exception):
    """The name did not resolve (in time): a 400 at submission, a retry at delivery."""


@dataclass(frozen=True)
class Target:
    url: str  # with the checked address in place of the name
    host: str  # for TLS SNI (and certificate checks)
    host_header: str  # the name and port as the URL gave them
    address: str  # the address connected to


@dataclass(frozen=True)
class AllowList:
    names: frozenset[str]
    networks: tuple[IPNetwork, ...]

    def opens(self, address: IPAddress) -> bool:
        return any(address in network for network in self.networks)


class Kind(Enum):
    PUBLIC = "public"
    NON_PUBLIC = "non-public"
    NEVER = "never allowed"


def allowed_hosts(settings: Settings) -> AllowList:
    return parse_allowed(settings.webhook_allowed_hosts)


def parse_allowed(raw: str | None) -> AllowList:
    """Entries that parse as an address or CIDR network are addresses; the rest, names."""
    names: set[str] = set()
    networks: list[IPNetwork] = []
    for part in (raw or "").split(","):
        entry = part.strip().lower().removeprefix("[").removesuffix("]")
        if not entry:
            continue
        try:
            networks.append(ipaddress.ip_network(entry, strict=False))
        except ValueError:
            names.add(entry.rstrip("."))
    return AllowList(frozenset(names), tuple(networks))


def check_shape(url: str) -> None:
    """At submission: a clear 400 for what can never be delivered."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise InvalidRequest("webhook must be an http:// or https:// URL with a host.",
                             param="webhook")
    if parts.username or parts.password:
        raise InvalidRequest("webhook must not carry credentials in the URL.", param="webhook")


def unmapped(address: IPAddress) -> IPAddress:
    """::ffff:a.b.c.d is a.b.c.d on a dual-stack socket: judge (and connect to) that."""
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


def classify(address: IPAddress) -> Kind:
    address = unmapped(address)
    if address.is_loopback:  # ::1 sits inside ::/96 yet is plain loopback
        return Kind.NON_PUBLIC
    if any(address in network for network in _NEVER if network.version == address.version):
        return Kind.NEVER
    if not address.is_global or any(
        address in network for network in _NOT_PUBLIC if network.version == address.version
    ):
        return Kind.NON_PUBLIC
    return Kind.PUBLIC


async def system_resolver(host: str, port: int) -> list[str]:
    infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return list(dict.fromkeys(str(info[4][0]) for info in infos))


def _usable(address: IPAddress, host: str, allowed: AllowList) -> bool:
    kind = classify(address)
    if kind is Kind.NEVER:
        return False
    return kind is Kind.PUBLIC or host in allowed.names or allowed.opens(unmapped(address))


async def resolve(url: str, allowed: AllowList, resolver: Resolver = system_resolver,
                  timeout_s: float = 10.0) -> Target:
    """The address to connect to for ``url``; WebhookRefused or WebhookUnresolved if none."""
    parts = urlsplit(url)
    host = (parts.hostname or "").lower().rstrip(".")
    port = parts.port or (443 if parts.scheme == "https" else 80)
    try:
        found = await asyncio.wait_for(resolver(host, port), timeout_s)
        addresses = [ipaddress.ip_address(address) for address in found]
    except (OSError, TimeoutError, ValueError) as exc:
        raise WebhookUnresolved(f"webhook host {host!r} does not resolve: {exc!r}") from exc
    if not addresses:
        raise WebhookUnresolved(f"webhook host {host!r} does not resolve")
    chosen = next((a for a in addresses if _usable(a, host, allowed)), None)
    if chosen is None:
        refused = ", ".join(f"{address} ({classify(address).value})" for address in addresses)
        raise WebhookRefused(
            f"webhook host {host!r} resolves to no public or allowed address, only to "
            f"non-public ones ({refused}); SLEEPWELL_WEBHOOK_ALLOWED_HOSTS can open them"
        )
    address = unmapped(chosen)
    shown = f"[{address}]" if address.version == 6 else str(address)
    url_for_address = urlunsplit((parts.scheme, f"{shown}:{port}", parts.path or "/",
                                  parts.query, ""))
    return Target(url_for_address, host, parts.netloc.rsplit("@", 1)[-1], str(address))


async def check_target(url: str, settings: Settings,
                       resolver: Resolver = system_resolver) -> None:
    """At submission: refuse a target that delivery would refuse, with a 400."""
    check_shape(url)
    try:
        await resolve(url, allowed_hosts(settings), resolver, settings.webhook_timeout_s)
    except (WebhookRefused, WebhookUnresolved) as exc:
        raise InvalidRequest(str(exc), param="webhook", code="webhook_refused") from exc
