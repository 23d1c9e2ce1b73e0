"""A small reverse proxy for tests: the service under a path prefix, as nginx would put it.

``/sub/<path>`` is forwarded to ``<upstream>/<path>`` with the prefix stripped, the way
``location /sub/ { proxy_pass http://upstream/; proxy_buffering off; }`` does. Each request
gets a fresh upstream connection (a new client, closed afterwards), so consecutive requests
of one browser land on whichever gunicorn worker accepts them: nothing may depend on
sticky sessions. Responses stream through unbuffered, and when the browser goes away the
upstream connection is closed, so the service sees the disconnect just as it would
without the proxy. Location headers pass through unchanged (relative ones keep the prefix).
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field

import httpx
import uvicorn
from starlette.types import Receive, Scope, Send

from tests.support.server import free_port

# Hop-by-hop headers (RFC 9110 7.6.1) are never forwarded; Host is the upstream's.
_HOP_BY_HOP = {b"connection", b"keep-alive", b"proxy-connection", b"te", b"trailer",
               b"transfer-encoding", b"upgrade", b"host"}


@dataclass
class PrefixProxy:
    upstream: str
    prefix: str = "/sub"
    seen: list[tuple[str, str, int]] = field(default_factory=list)  # method, path, status

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        path: str = scope["path"]
        if not path.startswith(self.prefix + "/"):
            await _plain(send, 404, b"not under the proxy prefix\n")
            self.seen.append((scope["method"], path, 404))
            return
        body = await _read_body(receive)
        query = scope.get("query_string", b"").decode("latin-1")
        url = self.upstream + path[len(self.prefix):] + (f"?{query}" if query else "")
        async with httpx.AsyncClient(timeout=httpx.Timeout(None, connect=5)) as client:
            request = client.build_request(
                scope["method"], url, headers=self._forwarded(scope), content=body
            )
            try:
                response = await client.send(request, stream=True)
            except httpx.HTTPError:
                await _plain(send, 502, b"upstream unreachable\n")
                return
            self.seen.append((scope["method"], path, response.status_code))
            try:
                await self._relay(response, receive, send)
            finally:
                await response.aclose()

    def _forwarded(self, scope: Scope) -> list[tuple[bytes, bytes]]:
        headers = [(k, v) for k, v in scope["headers"] if k.lower() not in _HOP_BY_HOP]
        client = scope.get("client")
        headers += [(b"x-forwarded-for", (client[0] if client else "unknown").encode()),
                    (b"x-forwarded-proto", b"http"),
                    (b"x-forwarded-prefix", self.prefix.encode())]
        return headers

    async def _relay(self, response: httpx.Response, receive: Receive, send: Send) -> None:
        headers = [(k, v) for k, v in response.headers.raw if k.lower() not in _HOP_BY_HOP]
        await send({"type": "http.response.start", "status": response.status_code,
                    "headers": headers})
        pump = asyncio.create_task(_pump(response, send))
        gone = asyncio.create_task(_disconnected(receive))
        await asyncio.wait({pump, gone}, return_when=asyncio.FIRST_COMPLETED)
        for task in (pump, gone):
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, httpx.HTTPError):
                await task


async def _pump(response: httpx.Response, send: Send) -> None:
    async for chunk in response.aiter_raw():
        await send({"type": "http.response.body", "body": chunk, "more_body": True})
    await send({"type": "http.response.body", "body": b"", "more_body": False})


async def _disconnected(receive: Receive) -> None:
    while (await receive())["type"] != "http.disconnect":
        pass


async def _read_body(receive: Receive) -> bytes:
    body = bytearray()
    while True:
        message = await receive()
        body += message.get("body", b"")
        if not message.get("more_body"):
            return bytes(body)


async def _plain(send: Send, status: int, text: bytes) -> None:
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"text/plain"),
                            (b"content-length", str(len(text)).encode())]})
    await send({"type": "http.response.body", "body": text})


@dataclass
class RunningProxy:
    app: PrefixProxy
    port: int

    @property
    def url(self) -> str:
        """Where the service appears: ``http://127.0.0.1:<port>/sub``."""
        return f"http://127.0.0.1:{self.port}{self.app.prefix}"


@contextlib.contextmanager
def prefix_proxy(upstream: str, prefix: str = "/sub") -> Iterator[RunningProxy]:
    """Serve ``upstream`` under ``prefix`` on a free loopback port, in a thread."""
    app = PrefixProxy(upstream.rstrip("/"), prefix)
    port = free_port()
    config = uvicorn.Config(app, host="127.0.0.1", port=port, lifespan="off",
                            log_level="warning", access_log=False)
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, name="test-proxy", daemon=True)
    thread.start()
    deadline = time.monotonic() + 15
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError("the test proxy did not start")
        time.sleep(0.05)
    try:
        yield RunningProxy(app, port)
    finally:
        server.should_exit = True
        thread.join(10)
