"""Wait on observed state under a deadline: never a fixed sleep that guards an assertion."""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar, overload

T = TypeVar("T")


def wait_until(
    predicate: Callable[[], T], timeout: float, period: float = 0.05, what: str = "condition"
) -> T:
    """Poll ``predicate`` until it returns something truthy; that value, or AssertionError."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise AssertionError(f"{what} not reached within {timeout}s")
        time.sleep(period)


@overload
async def async_wait_until(
    predicate: Callable[[], Awaitable[T]], within_s: float, period: float = ...,
    what: str = ...,
) -> T: ...


@overload
async def async_wait_until(
    predicate: Callable[[], T], within_s: float, period: float = ..., what: str = ...
) -> T: ...


async def async_wait_until(
    predicate: Callable[[], Any], within_s: float, period: float = 0.01, what: str = "condition"
) -> Any:
    """``wait_until`` for coroutines: yields to the loop between polls; ``predicate`` may be
    a coroutine function (each poll is awaited)."""
    deadline = time.monotonic() + within_s
    while True:
        value = predicate()
        if inspect.isawaitable(value):
            value = await value
        if value:
            return value
        if time.monotonic() >= deadline:
            raise AssertionError(f"{what} not reached within {within_s}s")
        await asyncio.sleep(period)
