"""Rate limits on the real service: two gunicorn workers sharing one Redis.

Client addresses are simulated with X-Forwarded-For, which uvicorn honours from loopback
(gunicorn's forwarded_allow_ips), so each test owns its own "IP" and keys.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

from tests.security.conftest import redis_namespace
from tests.support.access_log import wait_for_access_lines
from tests.support.server import RunningServer, gunicorn_server

KEYS = ("sk-rate-a", "sk-rate-b", "sk-rate-c", "sk-rate-d")
PER_KEY = 6
PER_IP = 10


@pytest.fixture(scope="module")
def server(redis_url: str) -> Iterator[RunningServer]:
    with redis_namespace(redis_url) as prefix:
        env = {
            "SLEEPWELL_API_KEYS": ",".join(KEYS),
            "SLEEPWELL_RATE_LIMIT": f"{PER_KEY}/minute",
            "SLEEPWELL_RATE_LIMIT_PER_IP": f"{PER_IP}/minute",
            "SLEEPWELL_RATE_LIMIT_STORAGE": redis_url,
            "SLEEPWELL_RATE_LIMIT_KEY_PREFIX": prefix,
        }
        with gunicorn_server(env, workers=2) as running:
            yield running


def call(server: RunningServer, key: str, ip: str, path: str = "/v1/models") -> httpx.Response:
    headers = {"Authorization": f"Bearer {key}", "X-Forwarded-For": ip}
    # A fresh connection per request, so the kernel spreads them over both workers.
    return httpx.get(server.url + path, headers=headers, timeout=10)


def worker_of(server: RunningServer, responses: list[httpx.Response]) -> dict[str, int]:
    ids = [response.headers["x-request-id"] for response in responses]
    return {request_id: entry["pid"]
            for request_id, entry in wait_for_access_lines(server, ids).items()}


def test_ratelimit_per_key_is_shared_across_workers(server) -> None:
    with ThreadPoolExecutor(4) as pool:
        responses = list(pool.map(lambda i: call(server, KEYS[0], f"10.1.0.{i}"), range(10)))
    statuses = [response.status_code for response in responses]
    assert statuses.count(200) == PER_KEY and statuses.count(429) == 10 - PER_KEY, statuses
    served_by = set(worker_of(server, responses).values())
    print(f"requests served by workers {sorted(served_by)}")
    assert len(served_by) == 2, "both workers must have answered for this to prove sharing"
    refused = next(response for response in responses if response.status_code == 429)
    error = refused.json()["error"]
    assert error["type"] == "rate_limit_error" and error["code"] == "rate_limit_exceeded"
    assert "API key" in error["message"]
    assert 1 <= int(refused.headers["retry-after"]) <= 60
    assert refused.headers["x-ratelimit-limit"] == str(PER_KEY)
    assert refused.headers["x-ratelimit-remaining"] == "0"
    assert int(refused.headers["x-ratelimit-reset"]) >= int(time.time())


def test_ratelimit_headers_on_allowed_responses_count_down(server) -> None:
    remaining = [int(call(server, KEYS[1], "10.2.0.1").headers["x-ratelimit-remaining"])
                 for _ in range(3)]
    assert remaining == [PER_KEY - 1, PER_KEY - 2, PER_KEY - 3]


def test_ratelimit_per_ip_holds_across_keys(server) -> None:
    ip = "10.3.0.1"
    statuses = [call(server, KEYS[2 + i % 2], ip).status_code for i in range(PER_IP + 2)]
    assert statuses == [200] * PER_IP + [429, 429]
    refused = call(server, KEYS[2], ip)
    assert "client IP" in refused.json()["error"]["message"]
    assert refused.headers["x-ratelimit-limit"] == str(PER_IP)
    assert call(server, KEYS[2], "10.3.0.2").status_code == 200  # another IP is unaffected


def test_ratelimit_health_is_never_limited(server) -> None:
    ip = "10.4.0.1"
    for _ in range(PER_IP):
        call(server, KEYS[3], ip, "/v1/nothing")
    assert call(server, KEYS[3], ip).status_code == 429
    health = [call(server, KEYS[3], ip, path).status_code
              for path in ("/health", "/health/live", "/health/ready") * 5]
    assert health == [200] * 15


def test_ratelimit_unauthenticated_guesses_count_against_the_ip(server) -> None:
    ip = "10.5.0.1"
    guesses = [call(server, f"sk-guess-{i}", ip).status_code for i in range(PER_IP + 1)]
    assert guesses == [401] * PER_IP + [429]
    assert call(server, KEYS[0], ip).status_code == 429  # even the right key, from there
