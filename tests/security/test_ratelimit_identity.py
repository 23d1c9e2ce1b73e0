"""Rate-limit identities on the real service (issue 9, item 8): two gunicorn workers, one
Redis, auth off, and a per-key and a per-IP limit of the same size and window (the case
where both used to share one counter, so each request counted twice).

Loopback has the whole 127.0.0.0/8, so each "machine" is its own source address:
127.0.0.2 is the trusted proxy (SLEEPWELL_FORWARDED_ALLOW_IPS), the others connect
directly. X-Forwarded-For values are documentation addresses, never contacted.
"""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest

from tests.security.conftest import redis_namespace
from tests.support.access_log import wait_for_access_lines
from tests.support.server import RunningServer, gunicorn_server

LIMIT = 5
PROXY = "127.0.0.2"


@pytest.fixture(scope="module")
def server(redis_url: str) -> Iterator[RunningServer]:
    with redis_namespace(redis_url) as prefix:
        env = {
            "SLEEPWELL_RATE_LIMIT": f"{LIMIT}/minute",
            "SLEEPWELL_RATE_LIMIT_PER_IP": f"{LIMIT}/minute",
            "SLEEPWELL_RATE_LIMIT_STORAGE": redis_url,
            "SLEEPWELL_RATE_LIMIT_KEY_PREFIX": prefix,
            "SLEEPWELL_FORWARDED_ALLOW_IPS": PROXY,
        }
        with gunicorn_server(env, workers=2) as running:
            yield running


def call(server: RunningServer, source: str, forwarded_for: str | None = None) -> httpx.Response:
    """One request from ``source``, on a fresh connection (the kernel spreads them over
    both workers)."""
    headers = {"X-Forwarded-For": forwarded_for} if forwarded_for else {}
    transport = httpx.HTTPTransport(local_address=source)
    with httpx.Client(transport=transport, timeout=10) as client:
        return client.get(f"{server.url}/v1/models", headers=headers)


def access_lines(server: RunningServer, responses: list[httpx.Response]) -> list[dict[str, str]]:
    """One access line per response, once each is written (after its answer was sent)."""
    ids = [response.headers["x-request-id"] for response in responses]
    return list(wait_for_access_lines(server, ids).values())


def test_ratelimit_auth_off_limit_of_n_allows_exactly_n_across_workers(server) -> None:
    responses = [call(server, "127.0.0.3") for _ in range(LIMIT + 2)]
    statuses = [response.status_code for response in responses]
    assert statuses == [200] * LIMIT + [429] * 2, statuses
    # Counted once per request: the remaining count goes down by one, not two.
    remaining = [int(r.headers["x-ratelimit-remaining"]) for r in responses[:LIMIT]]
    assert remaining == list(range(LIMIT - 1, -1, -1))
    assert responses[-1].headers["x-ratelimit-limit"] == str(LIMIT)
    assert "client IP" in responses[-1].json()["error"]["message"]
    served_by = {line["pid"] for line in access_lines(server, responses)}
    # The kernel may hand a busy machine's few connections all to one worker: ask on (at most
    # 40 more, each refused) until the other worker has answered too, so sharing is proved.
    for _ in range(40):
        if len(served_by) == 2:
            break
        extra = call(server, "127.0.0.3")
        assert extra.status_code == 429, extra.text
        served_by |= {line["pid"] for line in access_lines(server, [extra])}
    assert len(served_by) == 2, "both workers must have answered for this to prove sharing"


def test_ratelimit_trusted_proxy_gives_each_forwarded_client_its_own_bucket(server) -> None:
    first = [call(server, PROXY, "203.0.113.10").status_code for _ in range(LIMIT + 1)]
    second = [call(server, PROXY, "203.0.113.11").status_code for _ in range(LIMIT + 1)]
    assert first == [200] * LIMIT + [429]
    assert second == [200] * LIMIT + [429], "the second client must not share the first's"
    # The proxy's own address has a bucket of its own, untouched by its clients.
    assert call(server, PROXY).status_code == 200
    forwarded = call(server, PROXY, "203.0.113.12")
    assert {line["client"] for line in access_lines(server, [forwarded])} == {"203.0.113.12"}


def test_ratelimit_trusted_proxy_client_cannot_dodge_by_prepending_addresses(server) -> None:
    # A client sends its own X-Forwarded-For; the proxy appends the address it really saw.
    statuses = [call(server, PROXY, f"198.51.100.{i}, 203.0.113.20").status_code
                for i in range(LIMIT + 2)]
    assert statuses == [200] * LIMIT + [429] * 2


def test_ratelimit_untrusted_peer_x_forwarded_for_is_ignored(server) -> None:
    responses = [call(server, "127.0.0.4", f"203.0.113.{30 + i}") for i in range(LIMIT + 2)]
    statuses = [response.status_code for response in responses]
    assert statuses == [200] * LIMIT + [429] * 2, "every made-up address shared one bucket"
    assert {line["client"] for line in access_lines(server, responses)} == {"127.0.0.4"}
