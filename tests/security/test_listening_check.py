"""Units of protected mode's check of the sockets really bound (issue 9, item 9).

The end-to-end proof is a real uvicorn in test_protected_mode.py; these pin the decisions
with the socket list and the exit given, plus one look at this process's real sockets.
"""

from __future__ import annotations

import asyncio
import logging
import socket
from collections.abc import Iterator
from typing import NoReturn

import httpx
import pytest
from pydantic import SecretStr

from app.security.protected_mode import (
    REFUSED_EXIT_CODE,
    ListeningSocketCheck,
    ListeningSocketGate,
    listening_addresses,
)
from app.settings import Settings


class Exited(Exception):
    pass


def _exit(code: int) -> NoReturn:
    raise Exited(code)


@pytest.fixture
def records() -> Iterator[list[logging.LogRecord]]:
    """What the check logs (the service's logger does not propagate to caplog's root)."""
    seen: list[logging.LogRecord] = []
    handler = logging.Handler()
    handler.emit = seen.append  # type: ignore[method-assign]
    log = logging.getLogger("sleepwell.security")
    log.addHandler(handler)
    try:
        yield seen
    finally:
        log.removeHandler(handler)


def _check(addresses: list[str] | None, **settings: object) -> ListeningSocketCheck:
    return ListeningSocketCheck(Settings(**settings), exit_process=_exit,  # type: ignore[arg-type]
                                list_addresses=lambda: addresses)


def test_listening_check_wildcard_without_keys_logs_reason_and_exits_3(records) -> None:
    check = _check(["127.0.0.1:9000", "0.0.0.0:8000"])
    with pytest.raises(Exited) as exited:
        check.check_now()
    assert exited.value.args == (REFUSED_EXIT_CODE,)
    (refusal,) = [r for r in records if r.levelno == logging.ERROR]
    assert "protected mode" in refusal.getMessage() and "0.0.0.0:8000" in refusal.getMessage()
    assert "127.0.0.1:9000" not in refusal.getMessage(), "name only the exposed sockets"


@pytest.mark.parametrize("addresses", [["127.0.0.1:8000"], ["[::1]:8000"],
                                       ["[::ffff:127.0.0.1]:8000"], ["127.0.0.5:1"]])
def test_listening_check_loopback_only_passes(addresses: list[str]) -> None:
    check = _check(addresses)
    assert check.check_now() and check.passed


def test_listening_check_nothing_listening_yet_is_pending_until_a_request_arrives() -> None:
    check = _check([])
    assert not check.check_now() and not check.passed
    assert check.check_now(final=True), "a request with no TCP listener came over a unix socket"


def test_listening_check_keys_or_allowed_serve_exposed_and_only_allowed_warns(records) -> None:
    keyed = _check(["0.0.0.0:8000"], api_keys=SecretStr("sk-1"))
    assert keyed.passed and keyed.start() is None, "with keys nothing needs watching"
    allowed = _check(["[::]:8000"], allow_unauthenticated=True)
    assert allowed.check_now()
    (warning,) = [r for r in records if r.levelno == logging.WARNING]
    assert "SECURITY WARNING" in warning.getMessage() and "[::]:8000" in warning.getMessage()


def test_listening_check_sockets_unknowable_falls_back_to_sleepwell_host() -> None:
    with pytest.raises(Exited):
        _check(None, host="0.0.0.0").check_now()
    assert _check(None, host="127.0.0.1").check_now()


async def test_listening_check_watch_refuses_once_a_socket_appears() -> None:
    addresses: list[str] = []
    check = ListeningSocketCheck(Settings(), exit_process=_exit, list_addresses=lambda: addresses)
    watcher = check.start()
    assert watcher is not None
    await asyncio.sleep(0)
    assert not watcher.done()
    addresses.append("0.0.0.0:8000")  # uvicorn binds after the lifespan startup
    with pytest.raises(Exited):
        await asyncio.wait_for(watcher, timeout=30)


async def test_listening_gate_checks_before_the_first_request_is_answered() -> None:
    answered: list[str] = []

    async def app(scope, receive, send) -> None:  # type: ignore[no-untyped-def]
        answered.append(scope["path"])
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})

    gate = ListeningSocketGate(app, _check(["0.0.0.0:8000"]))
    transport = httpx.ASGITransport(app=gate)
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
        with pytest.raises(Exited):
            await client.get("/health")
    assert answered == []


def test_listening_addresses_sees_this_process_listening_socket() -> None:
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        mine = f"127.0.0.1:{listener.getsockname()[1]}"
        found = listening_addresses()
        assert found is not None and mine in found
    assert mine not in (listening_addresses() or [])
