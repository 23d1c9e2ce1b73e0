"""The Feishu relay against a fake Feishu on loopback: cards, signing, limits, retries."""

from __future__ import annotations

import json
import shutil
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from pydantic import SecretStr

from app.relay.config import RelayConfig, RelayConfigError
from app.relay.server import create_relay_app
from app.relay.signing import sign
from app.settings import Settings
from tests.monitoring.fakes import FEISHU_LIMIT_BYTES, Card, FakeFeishu, fake_feishu, feishu_sign
from tests.support.server import free_port

SECRET = "s3cr3t-signing-key"
ZERO_TIME = "0001-01-01T00:00:00Z"


def alert(name: str = "ServiceDown", status: str = "firing", **extra: Any) -> dict[str, Any]:
    return {
        "status": status,
        "labels": {"alertname": name, "severity": "critical", "instance": "api:8000",
                   "job": "sleepwell", **extra.pop("labels", {})},
        "annotations": {"summary": "Sleepwell API api:8000 is down",
                        "description": "Prometheus cannot scrape api:8000.",
                        "runbook": "Restart it.", **extra.pop("annotations", {})},
        "startsAt": "2025-01-02T03:04:05.123Z",
        "endsAt": "2025-01-02T03:09:00Z" if status == "resolved" else ZERO_TIME,
        "generatorURL": "http://prometheus:9090/graph?g0.expr=up",
        "fingerprint": "abc123",
    }


def webhook(alerts: list[dict[str, Any]], status: str = "firing") -> dict[str, Any]:
    common = {"alertname": alerts[0]["labels"]["alertname"], "severity": "critical"}
    return {
        "version": "4", "groupKey": "{}:{alertname=\"x\"}", "truncatedAlerts": 0,
        "status": status, "receiver": "oncall-critical",
        "groupLabels": {"alertname": common["alertname"]}, "commonLabels": common,
        "commonAnnotations": {}, "externalURL": "http://alertmanager:9093", "alerts": alerts,
    }


def config_for(fake: FakeFeishu | None, **overrides: Any) -> RelayConfig:
    base = RelayConfig(
        webhook_url=fake.url if fake else None, secret=SECRET, timeout_s=2.0, max_attempts=3,
        backoff_s=0.01, backoff_max_s=0.05, grafana_url="http://grafana:3000/d/sleepwell-service",
    )
    return replace(base, **overrides)


@contextmanager
def relay(config: RelayConfig) -> Iterator[TestClient]:
    with TestClient(create_relay_app(config)) as client:
        yield client


def metric(client: TestClient, name: str, **labels: str) -> float:
    wanted = name + ("{" + ",".join(f'{k}="{v}"' for k, v in labels.items()) + "}"
                     if labels else "")
    for line in client.get("/metrics").text.splitlines():
        if line.startswith(wanted + " "):
            return float(line.rsplit(" ", 1)[1])
    raise AssertionError(f"{wanted} not exported")


# --- signing --------------------------------------------------------------------------
def test_sign_known_inputs_match_feishu_reference_check() -> None:
    for timestamp, secret in [(1599360473, "test-secret"), (1700000000, "密钥"), (0, "")]:
        assert sign(timestamp, secret) == feishu_sign(timestamp, secret)


# --- cards ----------------------------------------------------------------------------
def test_relay_firing_webhook_posts_red_signed_card() -> None:
    with fake_feishu(secret=SECRET) as fake, relay(config_for(fake)) as client:
        response = client.post("/alertmanager", json=webhook([alert()]))
        assert response.status_code == 200, response.text
        assert response.json() == {"delivered": True, "attempts": 1}
        card: Card = fake.cards.wait_for(lambda c: True, timeout=5)
    assert fake.rejected.snapshot() == []
    assert card.color == "red"
    assert card.title == "[FIRING:1] ServiceDown (critical)"
    for text in ("**Summary:** Sleepwell API api:8000 is down", "**Runbook:** Restart it.",
                 "alertname=ServiceDown, severity=critical, instance=api:8000, job=sleepwell",
                 "**Started:** 2025-01-02 03:04:05 UTC",
                 "[Rule in Prometheus](http://prometheus:9090/graph?g0.expr=up)"):
        assert text in card.text
    assert "**Ended:**" not in card.text
    assert card.buttons == {"Open Alertmanager": "http://alertmanager:9093",
                            "Open Grafana": "http://grafana:3000/d/sleepwell-service"}


def test_relay_resolved_webhook_posts_green_card_with_end_time() -> None:
    with fake_feishu(secret=SECRET) as fake, relay(config_for(fake)) as client:
        hook = webhook([alert(status="resolved")], status="resolved")
        assert client.post("/alertmanager", json=hook).status_code == 200
        card: Card = fake.cards.wait_for(lambda c: True, timeout=5)
    assert card.color == "green"
    assert card.title == "[RESOLVED] ServiceDown (critical)"
    assert "**Ended:** 2025-01-02 03:09:00 UTC" in card.text


def test_relay_without_secret_posts_unsigned_card() -> None:
    with fake_feishu(secret=None) as fake, relay(config_for(fake, secret=None)) as client:
        assert client.post("/alertmanager", json=webhook([alert()])).status_code == 200
        card: Card = fake.cards.wait_for(lambda c: True, timeout=5)
    assert "sign" not in card.body and "timestamp" not in card.body


def test_relay_many_alerts_card_stays_under_20kb_and_says_what_is_hidden() -> None:
    long = "显存不足, 请检查。" * 200  # multi-byte text: the limit is in bytes
    alerts = [alert(labels={"pid": str(n)}, annotations={"description": long}) for n in range(300)]
    with fake_feishu(secret=SECRET) as fake, relay(config_for(fake)) as client:
        assert client.post("/alertmanager", json=webhook(alerts)).status_code == 200
        card: Card = fake.cards.wait_for(lambda c: True, timeout=5)
        hidden = metric(client, "feishu_relay_alerts_not_shown_total")
    size = len(json.dumps(card.body, ensure_ascii=False, separators=(",", ":")).encode())
    assert size <= FEISHU_LIMIT_BYTES
    shown = card.text.count("**FIRING · ServiceDown**")
    assert 1 <= shown < 300
    notes = [e for e in card.body["card"]["elements"] if e["tag"] == "note"]
    assert f"{300 - shown} more alert(s)" in notes[0]["elements"][0]["content"]
    assert hidden == 300 - shown


def test_relay_one_huge_alert_is_truncated_under_20kb() -> None:
    huge = alert(annotations={"description": "x" * 100_000, "summary": "y" * 50_000},
                 labels={"blob": "z" * 30_000})
    with fake_feishu(secret=SECRET) as fake, relay(config_for(fake)) as client:
        assert client.post("/alertmanager", json=webhook([huge])).status_code == 200
        card: Card = fake.cards.wait_for(lambda c: True, timeout=5)
    assert "**Summary:** yyy" in card.text and "…" in card.text


# --- retries and failures -------------------------------------------------------------
def test_relay_rate_limited_then_server_error_retries_then_delivers() -> None:
    script = [(200, {"code": 11232, "msg": "frequency limited"}), (502, "bad gateway")]
    with fake_feishu(secret=SECRET, script=script) as fake, relay(config_for(fake)) as client:
        response = client.post("/alertmanager", json=webhook([alert()]))
        assert response.json() == {"delivered": True, "attempts": 3}
        assert metric(client, "feishu_relay_delivery_attempts_total", result="feishu_error") == 1
        assert metric(client, "feishu_relay_delivery_attempts_total", result="http_error") == 1
        assert metric(client, "feishu_relay_notifications_total", outcome="delivered") == 1
        assert metric(client, "feishu_relay_notifications_total", outcome="failed") == 0
    assert len(fake.cards.snapshot()) == 1


def test_relay_wrong_secret_http_200_error_code_fails_fast_with_502() -> None:
    with fake_feishu(secret="the-real-secret") as fake, relay(config_for(fake)) as client:
        response = client.post("/alertmanager", json=webhook([alert()]))
        assert response.status_code == 502
        assert response.json()["attempts"] == 1  # a bad signature is not retried
        assert "code 19021" in response.json()["error"]
        assert metric(client, "feishu_relay_notifications_total", outcome="failed") == 1
        health = client.get("/health").json()
    assert "19021" in health["last_error"] and health["failed"] == 1
    assert fake.cards.snapshot() == []


def test_relay_feishu_unreachable_retries_every_attempt_then_502() -> None:
    config = config_for(None, webhook_url=f"http://127.0.0.1:{free_port()}/hook")
    with relay(config) as client:
        response = client.post("/alertmanager", json=webhook([alert()]))
        assert response.status_code == 502
        assert response.json()["attempts"] == 3
        assert metric(client, "feishu_relay_delivery_attempts_total",
                      result="transport_error") == 3


def test_relay_unconfigured_answers_503_and_health_says_so() -> None:
    with relay(config_for(None)) as client:
        assert client.get("/health").json()["feishu_configured"] is False
        response = client.post("/alertmanager", json=webhook([alert()]))
    assert response.status_code == 503
    assert "SLEEPWELL_FEISHU_WEBHOOK_URL" in response.json()["error"]


def test_relay_malformed_payload_rejected_with_422() -> None:
    with relay(config_for(None)) as client:
        assert client.post("/alertmanager", json={"alerts": "nope"}).status_code == 422


def test_relay_metrics_exposition_passes_promtool() -> None:
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.fail("promtool is not installed (.ci/run installs it)")
    with fake_feishu(secret=SECRET) as fake, relay(config_for(fake)) as client:
        client.post("/alertmanager", json=webhook([alert()]))
        exposition = client.get("/metrics").text
    result = subprocess.run([promtool, "check", "metrics"], input=exposition, text=True,
                            capture_output=True, timeout=60, check=False)
    assert result.returncode == 0, result.stdout + result.stderr


# --- configuration --------------------------------------------------------------------
def test_relay_config_secrets_from_files_are_read_and_stripped(tmp_path: Path) -> None:
    (tmp_path / "url").write_text("https://open.feishu.cn/open-apis/bot/v2/hook/x\n")
    (tmp_path / "secret").write_text("  abc \n")
    settings = Settings(feishu_webhook_url_file=tmp_path / "url",
                        feishu_secret_file=tmp_path / "secret")
    config = RelayConfig.from_settings(settings)
    assert config.webhook_url == "https://open.feishu.cn/open-apis/bot/v2/hook/x"
    assert config.secret == "abc"


def test_relay_config_empty_secret_file_means_unsigned(tmp_path: Path) -> None:
    (tmp_path / "secret").write_text("\n")
    config = RelayConfig.from_settings(Settings(feishu_secret_file=tmp_path / "secret"))
    assert config.secret is None and config.configured is False


def test_relay_config_value_and_file_both_set_rejected(tmp_path: Path) -> None:
    (tmp_path / "secret").write_text("a")
    settings = Settings(feishu_secret=SecretStr("b"), feishu_secret_file=tmp_path / "secret")
    with pytest.raises(RelayConfigError, match="not both"):
        RelayConfig.from_settings(settings)


def test_relay_config_missing_file_or_bad_url_rejected(tmp_path: Path) -> None:
    with pytest.raises(RelayConfigError, match="cannot read"):
        RelayConfig.from_settings(Settings(feishu_secret_file=tmp_path / "absent"))
    with pytest.raises(RelayConfigError, match="http"):
        RelayConfig.from_settings(Settings(feishu_webhook_url=SecretStr("ftp://x")))


def test_relay_config_secret_hidden_from_settings_repr() -> None:
    settings = Settings(feishu_secret=SecretStr("do-not-print"))
    assert "do-not-print" not in repr(settings)
