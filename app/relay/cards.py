"""Alertmanager webhook payloads in, Feishu interactive cards out, always under the size cap.

A card is red while anything in the group fires and green once all of it is resolved. Each
alert shows its summary, description, runbook hint, labels, start and end time, and a link
to the rule; buttons link back to Alertmanager and, when configured, Grafana.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

# Room for ``timestamp`` and ``sign``, added after the card is sized.
SIGNATURE_RESERVE_BYTES = 128
FIELD_CHARS = 600  # per annotation value once the card has to shrink
TITLE_CHARS = 120
SHOWN_LABELS_FIRST = ("alertname", "severity", "instance", "job")


class AmAlert(BaseModel):
    model_config = ConfigDict(populate_by_name=True, extra="ignore")

    status: Literal["firing", "resolved"] = "firing"
    labels: dict[str, str] = Field(default_factory=dict)
    annotations: dict[str, str] = Field(default_factory=dict)
    starts_at: datetime | None = Field(None, alias="startsAt")
    ends_at: datetime | None = Field(None, alias="endsAt")
    generator_url: str = Field("", alias="generatorURL")
    fingerprint: str = ""


class AmWebhook(BaseModel):
    """Alertmanager's webhook body (version 4)."""

    model_config = ConfigDict(populate_by_name=True, extra="ignore")

    version: str = "4"
    status: Literal["firing", "resolved"]
    receiver: str = ""
    group_labels: dict[str, str] = Field(default_factory=dict, alias="groupLabels")
    common_labels: dict[str, str] = Field(default_factory=dict, alias="commonLabels")
    common_annotations: dict[str, str] = Field(default_factory=dict, alias="commonAnnotations")
    external_url: str = Field("", alias="externalURL")
    alerts: list[AmAlert] = Field(default_factory=list)
    truncated_alerts: int = Field(0, alias="truncatedAlerts")


def encoded_size(message: dict[str, Any]) -> int:
    return len(encode(message))


def encode(message: dict[str, Any]) -> bytes:
    """The exact bytes posted to Feishu."""
    return json.dumps(message, ensure_ascii=False, separators=(",", ":")).encode("utf-8")


def build_message(
    hook: AmWebhook,
    *,
    max_bytes: int,
    alertmanager_url: str | None = None,
    grafana_url: str | None = None,
) -> dict[str, Any]:
    """A Feishu ``interactive`` message for one Alertmanager notification, within max_bytes."""
    budget = max_bytes - SIGNATURE_RESERVE_BYTES
    alerts = _ordered(hook.alerts)
    actions = _actions(alertmanager_url or hook.external_url, grafana_url)
    message = _message(hook, alerts, len(alerts), actions, limit=None)
    if encoded_size(message) <= budget:
        return message
    # Shrink: shorten every field, then show as many alerts as fit (binary search).
    low, high = 1, len(alerts)
    while low < high:
        middle = (low + high + 1) // 2
        candidate = _message(hook, alerts, middle, actions, limit=FIELD_CHARS)
        low, high = (middle, high) if encoded_size(candidate) <= budget else (low, middle - 1)
    message = _message(hook, alerts, low, actions, limit=FIELD_CHARS)
    while encoded_size(message) > budget:  # one alert alone is still too large
        limit = max(40, _longest_field(message) // 2)
        message = _message(hook, alerts, min(low, 1), actions, limit=limit)
        if limit == 40:
            break
    return message


def _ordered(alerts: list[AmAlert]) -> list[AmAlert]:
    """Firing before resolved, then oldest first."""
    epoch = datetime.min.replace(tzinfo=UTC)
    return sorted(alerts, key=lambda a: (a.status != "firing", a.starts_at or epoch))


def _message(
    hook: AmWebhook,
    alerts: list[AmAlert],
    shown: int,
    actions: list[dict[str, Any]],
    limit: int | None,
) -> dict[str, Any]:
    shown = min(shown, len(alerts))
    elements: list[dict[str, Any]] = []
    for index, alert in enumerate(alerts[:shown]):
        if index:
            elements.append({"tag": "hr"})
        elements.append(_markdown(_alert_text(alert, limit)))
    hidden = len(alerts) - shown + hook.truncated_alerts
    if hidden > 0:
        note = f"{hidden} more alert(s) in this group are not shown here; see Alertmanager."
        elements.append({"tag": "note", "elements": [{"tag": "plain_text", "content": note}]})
    if actions:
        elements.append({"tag": "action", "actions": actions})
    return {
        "msg_type": "interactive",
        "card": {
            "config": {"wide_screen_mode": True},
            "header": {
                "template": "red" if hook.status == "firing" else "green",
                "title": {"tag": "plain_text", "content": _title(hook)},
            },
            "elements": elements,
        },
    }


def _title(hook: AmWebhook) -> str:
    name = hook.common_labels.get("alertname") or hook.group_labels.get("alertname") or "alerts"
    name = name[:TITLE_CHARS]
    firing = sum(1 for alert in hook.alerts if alert.status == "firing")
    severity = hook.common_labels.get("severity", "")[:TITLE_CHARS]
    status = f"FIRING:{firing}" if hook.status == "firing" else "RESOLVED"
    suffix = f" ({severity})" if severity else ""
    return f"[{status}] {name}{suffix}"


def _alert_text(alert: AmAlert, limit: int | None) -> str:
    def cut(text: str) -> str:
        return text if limit is None or len(text) <= limit else text[: limit - 1] + "…"

    name = alert.labels.get("alertname", "alert")
    lines = [f"**{alert.status.upper()} · {cut(name)}**"]
    for key, title in (("summary", "Summary"), ("description", "Description"),
                       ("runbook", "Runbook")):
        if alert.annotations.get(key):
            lines.append(f"**{title}:** {cut(alert.annotations[key])}")
    lines.append(f"**Labels:** {cut(_labels(alert.labels))}")
    lines.append(f"**Started:** {_when(alert.starts_at)}")
    if alert.status == "resolved":
        lines.append(f"**Ended:** {_when(alert.ends_at)}")
    if alert.generator_url and (limit is None or len(alert.generator_url) <= 4 * limit):
        lines.append(f"[Rule in Prometheus]({alert.generator_url})")
    return "\n".join(lines)


def _labels(labels: dict[str, str]) -> str:
    first = [key for key in SHOWN_LABELS_FIRST if key in labels]
    rest = sorted(key for key in labels if key not in SHOWN_LABELS_FIRST)
    return ", ".join(f"{key}={labels[key]}" for key in first + rest)


def _when(moment: datetime | None) -> str:
    if moment is None or moment.year <= 1:  # Alertmanager's "zero time": not ended
        return "—"
    return moment.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def _markdown(text: str) -> dict[str, Any]:
    return {"tag": "div", "text": {"tag": "lark_md", "content": text}}


def _actions(alertmanager_url: str, grafana_url: str | None) -> list[dict[str, Any]]:
    links = [("Alertmanager", alertmanager_url), ("Grafana", grafana_url)]
    return [
        {
            "tag": "button",
            "text": {"tag": "plain_text", "content": f"Open {label}"},
            "url": url,
            "type": "primary" if label == "Grafana" else "default",
        }
        for label, url in links
        if url
    ]


def _longest_field(message: dict[str, Any]) -> int:
    elements = message["card"]["elements"]
    lengths = [len(line) for element in elements if element.get("tag") == "div"
               for line in element["text"]["content"].split("\n")]
    return max(lengths, default=80)
