"""The relay's own metrics, in a registry of their own (never mixed with the API's)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

OUTCOMES = ("delivered", "failed")
ATTEMPT_RESULTS = ("ok", "transport_error", "http_error", "feishu_error")


class RelayMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.notifications = Counter(
            "feishu_relay_notifications",
            "Alertmanager notifications relayed to Feishu, by final outcome.",
            ["outcome"],
            registry=self.registry,
        )
        self.attempts = Counter(
            "feishu_relay_delivery_attempts",
            "HTTP attempts to post a card to Feishu, by result.",
            ["result"],
            registry=self.registry,
        )
        self.duration = Histogram(
            "feishu_relay_delivery_seconds",
            "Seconds to deliver (or give up on) one notification, retries included.",
            buckets=(0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60),
            registry=self.registry,
        )
        self.hidden_alerts = Counter(
            "feishu_relay_alerts_not_shown",
            "Alerts left out of a card to keep it under Feishu's size limit.",
            registry=self.registry,
        )
        self.last_success = Gauge(
            "feishu_relay_last_success_timestamp_seconds",
            "Unix time of the last notification Feishu accepted.",
            registry=self.registry,
        )
        for outcome in OUTCOMES:
            self.notifications.labels(outcome=outcome)
        for result in ATTEMPT_RESULTS:
            self.attempts.labels(result=result)

    def count(self, outcome: str) -> float:
        value = self.registry.get_sample_value(
            "feishu_relay_notifications_total", {"outcome": outcome}
        )
        return value or 0.0

    def render(self) -> bytes:
        return generate_latest(self.registry)
