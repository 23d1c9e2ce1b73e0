"""Fixtures for the security suite: a Redis the session owns, a key namespace per test."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from contextlib import contextmanager

import pytest
import redis

from tests.support.redis_server import redis_server


@pytest.fixture(scope="session")
def redis_url() -> Iterator[str]:
    """``redis://127.0.0.1:<free port>/0`` of a redis-server started for this session."""
    try:
        with redis_server() as url:
            yield url
    except FileNotFoundError as exc:
        pytest.fail(str(exc))


@contextmanager
def redis_namespace(url: str) -> Iterator[str]:
    """A key prefix no other test uses; every key under it is deleted at the end."""
    client = redis.Redis.from_url(url, socket_timeout=2, socket_connect_timeout=2)
    prefix = f"sleepwell-test-{uuid.uuid4().hex[:12]}"
    try:
        yield prefix
    finally:
        keys = list(client.scan_iter(match=f"{prefix}*", count=500))
        if keys:
            client.delete(*keys)
        client.close()


@pytest.fixture
def redis_prefix(redis_url: str) -> Iterator[str]:
    with redis_namespace(redis_url) as prefix:
        yield prefix


def redis_keys(url: str, prefix: str) -> list[bytes]:
    with redis.Redis.from_url(url, socket_timeout=2) as client:
        return list(client.scan_iter(match=f"{prefix}*", count=500))
