"""Feishu custom-bot signing: HMAC-SHA256 keyed by ``"{timestamp}\\n{secret}"``, base64."""

from __future__ import annotations

import base64
import hashlib
import hmac
import time


def sign(timestamp: int, secret: str) -> str:
    """Feishu's scheme: the key is the string to sign and the message is empty."""
    key = f"{timestamp}\n{secret}".encode()
    digest = hmac.new(key, b"", digestmod=hashlib.sha256).digest()
    return base64.b64encode(digest).decode("ascii")


def signed(message: dict[str, object], secret: str | None, now: float | None = None) -> dict[
    str, object
]:
    """The message with ``timestamp`` and ``sign`` added when a secret is configured."""
    if not secret:
        return message
    timestamp = int(time.time() if now is None else now)
    return {"timestamp": str(timestamp), "sign": sign(timestamp, secret), **message}
