"""Fakes at the network boundary: a Feishu custom bot and an SMTP server, on loopback.

FakeFeishu checks each request the way Feishu does (signature and timestamp, message type,
the 20 KB body limit), answers HTTP 200 with a ``code`` in the body, and records the cards
it accepts. FakeSmtp (aiosmtpd) requires AUTH and records every mail it receives.
"""

from __future__ import annotations

import base64
import email
import email.policy
import hashlib
import hmac
import json
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from email.message import EmailMessage
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, TypeVar

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult, LoginPassword

from tests.support.server import free_port

FEISHU_LIMIT_BYTES = 20 * 1024
T = TypeVar("T")


@dataclass
class Card:
    received_at: float
    body: dict[str, Any]

    @property
    def header(self) -> dict[str, Any]:
        header: dict[str, Any] = self.body["card"]["header"]
        return header

    @property
    def title(self) -> str:
        return str(self.header["title"]["content"])

    @property
    def color(self) -> str:
        return str(self.header["template"])

    @property
    def text(self) -> str:
        """All lark_md text of the card, joined."""
        return "\n".join(
            element["text"]["content"]
            for element in self.body["card"]["elements"]
            if element.get("tag") == "div"
        )

    @property
    def buttons(self) -> dict[str, str]:
        found = {}
        for element in self.body["card"]["elements"]:
            for action in element.get("actions", []):
                found[action["text"]["content"]] = action["url"]
        return found


class _Recorder:
    """A list that threads append to and tests wait on, always with a deadline."""

    def __init__(self) -> None:
        self._items: list[Any] = []
        self._changed = threading.Condition()

    def append(self, item: Any) -> None:
        with self._changed:
            self._items.append(item)
            self._changed.notify_all()

    def snapshot(self) -> list[Any]:
        with self._changed:
            return list(self._items)

    def wait_for(self, predicate: Callable[[Any], bool], timeout: float) -> Any:
        deadline = time.monotonic() + timeout
        with self._changed:
            while True:
                for item in self._items:
                    if predicate(item):
                        return item
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise TimeoutError(f"nothing matched within {timeout}s: {self._items!r}"[:4000])
                self._changed.wait(min(remaining, 0.5))


def feishu_sign(timestamp: int, secret: str) -> str:
    """Feishu's documented check, written independently of app.relay.signing."""
    mac = hmac.new(f"{timestamp}\n{secret}".encode(), b"", hashlib.sha256)
    return base64.b64encode(mac.digest()).decode()


@dataclass
class FakeFeishu:
    secret: str | None = None
    # Scripted answers (HTTP status, body) served before the normal behaviour resumes.
    script: list[tuple[int, dict[str, Any] | str]] = field(default_factory=list)
    cards: _Recorder = field(default_factory=_Recorder)
    rejected: _Recorder = field(default_factory=_Recorder)
    requests: int = 0
    port: int = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/open-apis/bot/v2/hook/test-hook"

    def judge(self, raw: bytes) -> tuple[int, dict[str, Any] | str]:
        self.requests += 1
        if self.script:
            return self.script.pop(0)
        if len(raw) > FEISHU_LIMIT_BYTES:
            return self._reject(raw, 9499, "request body exceeds 20 KB")
        try:
            body = json.loads(raw)
        except ValueError:
            return self._reject(raw, 9499, "Bad Request")
        if self.secret is not None and not self._signature_ok(body):
            return self._reject(body, 19021, "sign match fail or timestamp is not within one hour")
        if body.get("msg_type") != "interactive" or "card" not in body:
            return self._reject(body, 9499, "Bad Request")
        self.cards.append(Card(time.monotonic(), body))
        return 200, {"code": 0, "msg": "success", "data": {}}

    def _signature_ok(self, body: dict[str, Any]) -> bool:
        try:
            timestamp = int(body["timestamp"])
        except (KeyError, TypeError, ValueError):
            return False
        fresh = abs(time.time() - timestamp) <= 3600
        return fresh and hmac.compare_digest(
            str(body.get("sign", "")), feishu_sign(timestamp, self.secret or "")
        )

    def _reject(self, body: Any, code: int, msg: str) -> tuple[int, dict[str, Any]]:
        self.rejected.append((code, body))
        return 200, {"code": code, "msg": msg, "data": {}}


@contextmanager
def fake_feishu(secret: str | None = None, script: list[Any] | None = None) -> Iterator[FakeFeishu]:
    fake = FakeFeishu(secret=secret, script=list(script or []))

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            raw = self.rfile.read(int(self.headers.get("Content-Length", "0")))
            status, answer = fake.judge(raw)
            data = answer.encode() if isinstance(answer, str) else json.dumps(answer).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    fake.port = server.server_address[1]
    thread = threading.Thread(target=server.serve_forever, name="fake-feishu", daemon=True)
    thread.start()
    try:
        yield fake
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


@dataclass
class Mail:
    received_at: float
    mail_from: str
    rcpt_tos: list[str]
    message: EmailMessage
    login: str | None

    @property
    def subject(self) -> str:
        return str(self.message["Subject"])

    @property
    def text(self) -> str:
        part = self.message.get_body(preferencelist=("plain", "html"))
        return part.get_content() if part is not None else ""


class _SmtpHandler:
    def __init__(self, mails: _Recorder) -> None:
        self.mails = mails

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        message = email.message_from_bytes(envelope.content, policy=email.policy.default)
        login = session.auth_data.login.decode() if session.auth_data else None
        self.mails.append(Mail(time.monotonic(), envelope.mail_from, list(envelope.rcpt_tos),
                               message, login))  # type: ignore[arg-type]
        return "250 OK"


@dataclass
class FakeSmtp:
    port: int
    username: str
    password: str
    mails: _Recorder
    failed_logins: list[str]


@contextmanager
def fake_smtp(username: str, password: str) -> Iterator[FakeSmtp]:
    """An SMTP server on loopback that refuses mail until the client logs in correctly."""
    mails = _Recorder()
    failed: list[str] = []

    def authenticator(server: Any, session: Any, envelope: Any, mechanism: str,
                      auth_data: Any) -> AuthResult:
        ok = (isinstance(auth_data, LoginPassword) and auth_data.login.decode() == username
              and auth_data.password.decode() == password)
        if not ok:
            failed.append(mechanism)
        return AuthResult(success=ok, handled=False, auth_data=auth_data)

    port = free_port()
    # LOGIN is left out: aiosmtpd's challenge text differs from the usual "Username:" that
    # Go's (Alertmanager's) LOGIN client expects. PLAIN is what Alertmanager uses anyway.
    controller = Controller(
        _SmtpHandler(mails), hostname="127.0.0.1", port=port,
        authenticator=authenticator, auth_required=True, auth_require_tls=False,
        auth_exclude_mechanism=["LOGIN"],
    )
    controller.start()
    try:
        yield FakeSmtp(port, username, password, mails, failed)
    finally:
        controller.stop()
