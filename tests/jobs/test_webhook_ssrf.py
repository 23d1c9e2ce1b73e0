"""Which address a webhook may connect to (app/net/ssrf.py). Nothing here connects anywhere:
numeric hosts go through the system resolver without DNS, names through a resolver we pass.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Sequence

import pytest

from app.errors import InvalidRequest
from app.net.ssrf import (
    Resolver,
    WebhookRefused,
    WebhookUnresolved,
    check_target,
    parse_allowed,
    resolve,
)
from app.settings import Settings

# One address in each range that must never be chosen without an allow-list entry.
SPECIAL = {
    "nat64": "64:ff9b::7f00:1",  # NAT64 well-known prefix, translates to 127.0.0.1
    "nat64-local": "64:ff9b:1::a00:1",  # local-use NAT64 prefix, to 10.0.0.1
    "6to4": "2002:7f00:1::1",  # 6to4 relay of 127.0.0.1
    "ipv4-compatible": "::7f00:1",  # deprecated ::/96 form of 127.0.0.1
    "site-local": "fec0::1",
    "teredo": "2001::1",
    "ipv4-mapped-loopback": "::ffff:127.0.0.1",
    "this-network": "0.1.2.3",
    "unspecified": "0.0.0.0",
    "unspecified-v6": "::",
    "cgnat": "100.64.0.1",
    "cgnat-top": "100.127.255.254",
    "benchmarking": "198.18.0.1",
    "benchmarking-top": "198.19.255.254",
    "metadata": "169.254.169.254",
    "ietf-protocol": "192.0.0.8",
    "6to4-relay-anycast": "192.88.99.1",
    "multicast": "224.0.0.1",
    "multicast-v6": "ff02::1",
    "broadcast": "255.255.255.255",
    "reserved": "240.0.0.1",
    "loopback": "127.0.0.1",
    "loopback-v6": "::1",
    "private": "10.1.2.3",
    "unique-local": "fd00::1",
    "link-local-v6": "fe80::1",
}
# Refused even when listed: they are not one host, or they lead through a translator or
# tunnel to an IPv4 address this check cannot see.
NEVER = ["64:ff9b::7f00:1", "64:ff9b:1::a00:1", "2002:7f00:1::1", "::7f00:1", "fec0::1",
         "2001::1", "0.0.0.0", "0.1.2.3", "::", "224.0.0.1", "ff02::1", "255.255.255.255"]


def literal_url(address: str, port: int = 8080) -> str:
    host = f"[{address}]" if ":" in address else address
    return f"http://{host}:{port}/hook"


def answering(table: dict[str, Sequence[str]]) -> Resolver:
    async def resolver(host: str, port: int) -> list[str]:
        return list(table[host])

    return resolver


@pytest.mark.parametrize("address", list(SPECIAL.values()), ids=list(SPECIAL))
async def test_resolve_special_range_literal_without_allow_list_is_refused(address: str) -> None:
    with pytest.raises(WebhookRefused, match="non-public"):
        await resolve(literal_url(address), parse_allowed(None))


@pytest.mark.parametrize("address", list(SPECIAL.values()), ids=list(SPECIAL))
async def test_resolve_public_name_pointing_into_a_special_range_is_refused(address: str) -> None:
    with pytest.raises(WebhookRefused):
        await resolve("https://hooks.example.com/x", parse_allowed(None),
                      answering({"hooks.example.com": [address]}))


@pytest.mark.parametrize("address", NEVER)
async def test_resolve_never_range_stays_refused_when_listed_by_address_or_name(
    address: str,
) -> None:
    listed = parse_allowed(f"hooks.internal,{address},64:ff9b::/96,2002::/16,0.0.0.0/8")
    with pytest.raises(WebhookRefused):
        await resolve(literal_url(address), listed)
    with pytest.raises(WebhookRefused):
        await resolve("http://hooks.internal/x", listed, answering({"hooks.internal": [address]}))


async def test_resolve_private_then_allowed_address_connects_to_the_allowed_one() -> None:
    resolver = answering({"hooks.internal": ["10.0.0.7", "127.0.0.1"]})
    target = await resolve("http://hooks.internal:8123/hook?a=1", parse_allowed("127.0.0.1"),
                           resolver)
    assert target.address == "127.0.0.1"
    assert target.url == "http://127.0.0.1:8123/hook?a=1"
    assert (target.host, target.host_header) == ("hooks.internal", "hooks.internal:8123")


async def test_resolve_allowed_address_does_not_open_its_non_public_siblings() -> None:
    resolver = answering({"hooks.internal": ["10.0.0.7", "169.254.169.254"]})
    with pytest.raises(WebhookRefused):
        await resolve("http://hooks.internal/x", parse_allowed("127.0.0.1,192.168.0.0/16"),
                      resolver)


async def test_resolve_non_public_address_before_a_public_one_is_skipped() -> None:
    resolver = answering({"hooks.example.com": ["127.0.0.1", "fd00::1", "8.8.8.8"]})
    target = await resolve("http://hooks.example.com/x", parse_allowed(None), resolver)
    assert target.address == "8.8.8.8"


async def test_resolve_listed_name_uses_its_non_public_address_but_skips_never_ranges() -> None:
    resolver = answering({"hooks.internal": ["64:ff9b::a00:7", "10.0.0.7"]})
    target = await resolve("http://HOOKS.internal./x", parse_allowed(" Hooks.Internal "),
                           resolver)
    assert target.address == "10.0.0.7" and target.url == "http://10.0.0.7:80/x"


async def test_resolve_network_entry_opens_only_addresses_inside_it() -> None:
    allowed = parse_allowed("10.0.0.0/8,[fd00::1]")
    inside = await resolve("http://a.internal/", allowed, answering({"a.internal": ["10.9.9.9"]}))
    assert inside.address == "10.9.9.9"
    bracketed = await resolve("http://[fd00::1]:81/", allowed)
    assert bracketed.url == "http://[fd00::1]:81/"
    with pytest.raises(WebhookRefused):
        await resolve("http://b.internal/", allowed, answering({"b.internal": ["192.168.1.1"]}))


async def test_resolve_ipv4_mapped_address_is_judged_and_connected_as_its_ipv4() -> None:
    target = await resolve(literal_url("::ffff:127.0.0.1"), parse_allowed("127.0.0.1"))
    assert target.address == "127.0.0.1" and target.url == "http://127.0.0.1:8080/hook"


@pytest.mark.parametrize("address", ["8.8.8.8", "2606:4700::1111", "::ffff:8.8.8.8"])
async def test_resolve_public_address_is_chosen_without_allow_list(address: str) -> None:
    target = await resolve(literal_url(address), parse_allowed(None))
    assert target.address == address.removeprefix("::ffff:")


async def test_resolve_name_that_fails_or_hangs_is_unresolved_not_refused() -> None:
    async def failing(host: str, port: int) -> list[str]:
        raise socket.gaierror(socket.EAI_AGAIN, "temporary failure")

    async def hanging(host: str, port: int) -> list[str]:
        await asyncio.Event().wait()
        return []

    for resolver in (failing, hanging, answering({"h.example.com": []})):
        with pytest.raises(WebhookUnresolved):
            await resolve("http://h.example.com/", parse_allowed(None), resolver, timeout_s=0.2)


@pytest.mark.parametrize("url", [literal_url("64:ff9b::7f00:1"), literal_url("2002:a00:1::1")])
async def test_check_target_tunnelled_address_is_a_400_naming_webhook(url: str) -> None:
    with pytest.raises(InvalidRequest) as raised:
        await check_target(url, Settings(webhook_allowed_hosts=None))
    assert raised.value.param == "webhook"


async def test_check_target_private_then_allowed_name_passes_with_the_allow_list() -> None:
    resolver = answering({"hooks.internal": ["10.0.0.7", "127.0.0.1"]})
    await check_target("http://hooks.internal/x", Settings(webhook_allowed_hosts="127.0.0.1"),
                       resolver)
    with pytest.raises(InvalidRequest):
        await check_target("http://hooks.internal/x", Settings(webhook_allowed_hosts=None),
                           resolver)
