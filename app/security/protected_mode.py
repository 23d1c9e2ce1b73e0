"""Protected mode: with no API keys, refuse to serve an address other machines can reach.

Two checks. Gunicorn's master checks its final binds before it opens a socket
(``enforce_protected_mode``, from gunicorn.conf.py). Every app process also checks the
sockets it really listens on (``ListeningSocketCheck``): a bare ``uvicorn --host 0.0.0.0``
never reads SLEEPWELL_HOST, and uvicorn runs the lifespan startup *before* it binds, so
the check runs as soon as a listening socket appears, and a gate in front of the app runs
it before the first request is answered. A refusal logs the reason and ends the process
with exit code 3 (uvicorn's startup failure; for gunicorn a worker boot error, which
stops the master instead of respawning workers that would refuse again).
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import os
from collections.abc import Callable
from typing import Any, NoReturn, Protocol

import psutil
from starlette.types import ASGIApp, Receive, Scope, Send

from app.security.keys import SecurityConfigError, configured_api_keys
from app.settings import Settings

logger = logging.getLogger("sleepwell.security")

REFUSED_EXIT_CODE = 3


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
        ip = ipaddress.ip_address(host)
    except ValueError:
        return False
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped.is_loopback  # ::ffff:127.0.0.1
    return ip.is_loopback


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
        "on loopback only (SLEEPWELL_HOST=127.0.0.1, or --host 127.0.0.1 for a bare "
        "uvicorn); or, if something in front of the "
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


def validate_key_sources(settings: Settings) -> None:
    """Exit with the reason when the keys file is missing, unreadable or empty."""
    try:
        configured_api_keys(settings)
    except SecurityConfigError as exc:
        raise SystemExit(f"Sleepwell refuses to start: {exc}") from None


def listening_addresses() -> list[str] | None:
    """``host:port`` of every TCP socket this process listens on; None if unknowable.

    psutil reads /proc/self/fd and /proc/net/tcp{,6} on Linux, and works on macOS too.
    """
    try:
        connections = psutil.Process().net_connections(kind="inet")
    except (psutil.Error, OSError, NotImplementedError):
        return None
    addresses = []
    for connection in connections:
        if connection.status == psutil.CONN_LISTEN and connection.laddr:
            host, port = connection.laddr[0], connection.laddr[1]
            addresses.append(f"[{host}]:{port}" if ":" in host else f"{host}:{port}")
    return sorted(set(addresses))


def _flush(log: logging.Logger) -> None:
    """Flush every handler a record of ``log`` reaches; a broken one must not stop us."""
    current: logging.Logger | None = log
    while current is not None:
        for handler in current.handlers:
            with contextlib.suppress(Exception):
                handler.flush()
        current = current.parent if current.propagate else None


class ListeningSocketCheck:
    """Protected mode against the sockets this process really listens on."""

    def __init__(
        self, settings: Settings, exit_process: Callable[[int], NoReturn] = os._exit,
        list_addresses: Callable[[], list[str] | None] = listening_addresses,
    ) -> None:
        self.settings = settings
        self.needed = not configured_api_keys(settings)  # with keys, any address is fine
        self.passed = not self.needed
        self._exit = exit_process
        self._list = list_addresses

    def check_now(self, final: bool = False) -> bool:
        """True once the listening sockets are known to be allowed; exits if they are not.

        Before anything listens the answer is False, unless ``final`` (a request has
        arrived, so whatever listens is in place: none over TCP means a unix socket).
        """
        if self.passed:
            return True
        addresses = self._list()
        if addresses is None:
            logger.warning("cannot list this process's listening sockets; protected mode "
                           "checks SLEEPWELL_HOST (%s) instead", self.settings.bind)
            addresses = [self.settings.bind]
        if not addresses and not final:
            return False
        self._decide(addresses)
        self.passed = True
        return True

    def _decide(self, addresses: list[str]) -> None:
        exposed = [address for address in addresses if not is_loopback_bind(address)]
        if not exposed:
            return
        if not self.settings.allow_unauthenticated:
            problem = protected_mode_problem(exposed, False, False)
            logger.error("%s (These are the sockets this process really listens on, "
                         "whatever SLEEPWELL_HOST says, e.g. from uvicorn --host.)", problem)
            _flush(logger)  # the reason must be out before the hard exit
            self._exit(REFUSED_EXIT_CODE)
        if self.settings.worker_slot is None:  # under gunicorn the master has warned
            logger.warning(UNAUTHENTICATED_WARNING.format(binds=", ".join(exposed)))

    async def watch(self, max_wait_s: float = 60.0) -> None:
        """Check as soon as a socket listens (uvicorn binds after the lifespan startup).

        Every 10 ms at first (one look costs about 0.1 ms), then every 0.5 s: nothing may
        ever listen over TCP (a unix socket), and the gate covers any request meanwhile.
        """
        waited = 0.0
        while not self.check_now() and waited < max_wait_s:
            delay = 0.01 if waited < 2.0 else 0.5
            await asyncio.sleep(delay)
            waited += delay

    def start(self) -> asyncio.Task[None] | None:
        """The watcher task, owned by the lifespan; None when no check is needed."""
        return None if self.passed else asyncio.create_task(self.watch())


class ListeningSocketGate:
    """Outermost ASGI layer: no request is answered before the listening check passed."""

    def __init__(self, app: ASGIApp, check: ListeningSocketCheck) -> None:
        self.app = app
        self.check = check

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "lifespan" and not self.check.passed:
            self.check.check_now(final=True)  # exits the process on a refusal
        await self.app(scope, receive, send)
