"""The relay's configuration, resolved once from Settings (secrets read from files here)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from pydantic import SecretStr

from app.settings import Settings


class RelayConfigError(ValueError):
    """A setting the relay cannot work with, e.g. a secret given twice."""


@dataclass(frozen=True)
class RelayConfig:
    host: str = "127.0.0.1"
    port: int = 9095
    webhook_url: str | None = None
    secret: str | None = None
    timeout_s: float = 5.0
    max_attempts: int = 4
    backoff_s: float = 0.5
    backoff_max_s: float = 8.0
    max_bytes: int = 19 * 1024
    grafana_url: str | None = None
    alertmanager_url: str | None = None

    @property
    def configured(self) -> bool:
        return self.webhook_url is not None

    @classmethod
    def from_settings(cls, settings: Settings) -> RelayConfig:
        url = read_secret(
            settings.feishu_webhook_url, settings.feishu_webhook_url_file, "FEISHU_WEBHOOK_URL"
        )
        if url is not None and not url.startswith(("https://", "http://")):
            raise RelayConfigError("SLEEPWELL_FEISHU_WEBHOOK_URL must be an http(s) URL")
        return cls(
            host=settings.relay_host,
            port=settings.relay_port,
            webhook_url=url,
            secret=read_secret(
                settings.feishu_secret, settings.feishu_secret_file, "FEISHU_SECRET"
            ),
            timeout_s=settings.feishu_timeout_s,
            max_attempts=settings.feishu_max_attempts,
            backoff_s=settings.feishu_backoff_s,
            backoff_max_s=settings.feishu_backoff_max_s,
            max_bytes=settings.feishu_max_bytes,
            grafana_url=settings.relay_grafana_url or None,
            alertmanager_url=settings.relay_alertmanager_url or None,
        )


def read_secret(value: SecretStr | None, path: Path | None, name: str) -> str | None:
    """The secret from the variable or from its ``_FILE`` variant; blank means unset."""
    if value is not None and path is not None:
        raise RelayConfigError(f"set SLEEPWELL_{name} or SLEEPWELL_{name}_FILE, not both")
    if path is not None:
        try:
            text = path.read_text(encoding="utf-8")
        except OSError as exc:
            raise RelayConfigError(f"SLEEPWELL_{name}_FILE: cannot read {path}: {exc}") from exc
    elif value is not None:
        text = value.get_secret_value()
    else:
        return None
    return text.strip() or None
