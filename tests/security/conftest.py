"""Fixtures for the security suite: a Redis namespace per test, cleaned up afterwards."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from contextlib import contextmanager

import pytest
import redis

REDIS_URL = "redis://127.0.0.1:6379/0"


@contextmanager
def redis_namespace() -> Iterator[str]:
    """A key prefix no other test (or run) uses; every key under it is deleted at the end."""
    client = redis.Redis.from_url(REDIS_URL, socket_timeout=2, socket_connect_timeout=2)
    try:
        client.ping()
    except redis.RedisError as exc:  # the python-svc machine runs Redis on 127.0.0.1:6379
        pytest.fail(f"Redis at {REDIS_URL} is not reachable: {exc}")
    prefix = f"sleepwell-test-{uuid.uuid4().hex[:12]}"
    try:
        yield prefix
    finally:
        keys = list(client.scan_iter(match=f"{prefix}*", count=500))
        if keys:
            client.delete(*keys)
        client.close()


@pytest.fixture
def redis_prefix() -> Iterator[str]:
    with redis_namespace() as prefix:
        yield prefix


def redis_keys(prefix: str) -> list[bytes]:
    with redis.Redis.from_url(REDIS_URL, socket_timeout=2) as client:
        return list(client.scan_iter(match=f"{prefix}*", count=500))
