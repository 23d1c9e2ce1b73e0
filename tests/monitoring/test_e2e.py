"""End to end, natively on loopback: the real service, Prometheus, Alertmanager,
blackbox-exporter, node-exporter and the Feishu relay, from the project's own config files
(addresses and intervals rewritten, see stack.py), with a fake Feishu and an SMTP server.

The tests share one stack and run in file order: kill -> page -> restart -> resolved, then
failures -> HighFailureRate, then every dashboard query against the live Prometheus.
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import Iterator
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.monitoring import dashboards
from tests.monitoring.fakes import Card, FakeFeishu, FakeSmtp, Mail, fake_feishu, fake_smtp
from tests.monitoring.stack import (
    FIGURES,
    Ports,
    Process,
    Prometheus,
    missing_binaries,
    rewrite_alertmanager,
    rewrite_prometheus,
    rewrite_rules,
    start_alertmanager,
    start_exporters,
    start_prometheus,
    start_relay,
    wait_until,
)
from tests.support.server import ROOT, RunningServer, free_port, gunicorn_server

pytestmark = [
    pytest.mark.slow,
    # The fake SMTP server takes plain-text AUTH on purpose: loopback only, no TLS to set up.
    pytest.mark.filterwarnings("ignore:Requiring AUTH while not requiring TLS"),
]

SECRET = "e2e-signing-secret"
SMTP_USER = "sleepwell-alerts@example.com"  # smtp_auth_username in alertmanager.yml
SMTP_PASSWORD = "e2e-smtp-password"
ONCALL = "oncall@example.com"
SERVICE_ENV = {"SLEEPWELL_FAULT_INJECTION": "true"}


def _service_env(workdir: Path) -> dict[str, str]:
    """Jobs on, with the embedded PostgreSQL (the `make run` default) in the stack's dir:
    the Jobs row of the dashboard is checked too, and a SIGKILLed master leaves it running
    for the restarted one to reuse."""
    return {**SERVICE_ENV, "SLEEPWELL_JOBS_ENABLED": "true",
            "SLEEPWELL_EMBEDDED_POSTGRES_DIR": str(workdir / "postgres")}
PAGE_TIMEOUT_S = 90.0


@dataclass
class Stack:
    exits: ExitStack
    workdir: Path
    ports: Ports
    api_port: int
    feishu: FakeFeishu
    smtp: FakeSmtp
    prometheus: Prometheus
    processes: list[Process]
    server: RunningServer
    timings: dict[str, float] = field(default_factory=lambda: FIGURES)

    @property
    def instance(self) -> str:
        return f"127.0.0.1:{self.api_port}"

    @property
    def alertmanager_url(self) -> str:
        return f"http://127.0.0.1:{self.ports.alertmanager}"

    def start_service(self) -> RunningServer:
        self.server = self.exits.enter_context(
            gunicorn_server(_service_env(self.workdir), port=self.api_port, ready_timeout=120))
        return self.server

    def diagnostics(self) -> str:
        return "\n".join(f"--- {p.name} ---\n{p.log()}" for p in self.processes)


def _configs(stack_ports: Ports, api_port: int, smtp_port: int, workdir: Path) -> dict[str, str]:
    addresses = {
        "api:8000": f"127.0.0.1:{api_port}",
        "blackbox-exporter:9115": f"127.0.0.1:{stack_ports.blackbox}",
        "node-exporter:9100": f"127.0.0.1:{stack_ports.node}",
        "alertmanager:9093": f"127.0.0.1:{stack_ports.alertmanager}",
        "feishu-relay:9095": f"127.0.0.1:{stack_ports.relay}",
        "localhost:9090": f"127.0.0.1:{stack_ports.prometheus}",
    }
    password_file = workdir / "smtp_password"
    password_file.write_text(SMTP_PASSWORD)
    # No SLEEPWELL_METRICS_TOKEN here: Compose then mounts an empty metrics_token secret,
    # and the scrape must still work (test_e2e_metrics_token.py runs with the token on).
    secrets_dir = workdir / "secrets"
    secrets_dir.mkdir()
    (secrets_dir / "metrics_token").write_text("")
    return {
        "prometheus": rewrite_prometheus((ROOT / "prometheus.yml").read_text(), addresses,
                                         secrets_dir),
        "rules": rewrite_rules((ROOT / "alert_rules.yml").read_text()),
        "alertmanager": rewrite_alertmanager(
            (ROOT / "alertmanager.yml").read_text(), smtp_port,
            f"http://127.0.0.1:{stack_ports.relay}/alertmanager", password_file),
    }


@pytest.fixture(scope="module")
def stack(metrics_token_service: RunningServer) -> Iterator[Stack]:
    # Not used here: asking for it boots test_e2e_metrics_token.py's service beside ours.
    del metrics_token_service
    if missing := missing_binaries():
        pytest.fail(f"not installed: {missing} (.ci/run installs the Debian packages)")
    with ExitStack() as exits:
        workdir = Path(exits.enter_context(tempfile.TemporaryDirectory(prefix="sw-monitor-")))
        ports, api_port = Ports(), free_port()
        feishu = exits.enter_context(fake_feishu(secret=SECRET))
        smtp = exits.enter_context(fake_smtp(SMTP_USER, SMTP_PASSWORD))
        configs = _configs(ports, api_port, smtp.port, workdir)
        processes: list[Process] = []
        exits.callback(lambda: [p.stop() for p in reversed(processes)])
        processes += start_exporters(workdir, ports)
        processes.append(start_relay(workdir, ports, feishu.url, SECRET))
        processes.append(start_alertmanager(workdir, ports, configs["alertmanager"]))
        # The service is ready before Prometheus looks: on a busy machine a slow first load
        # would otherwise fire HealthProbeFailing, whose late "resolved" card then lands in
        # the window where only ServiceDown may page.
        server = exits.enter_context(gunicorn_server(_service_env(workdir), port=api_port))
        processes.append(start_prometheus(workdir, ports, configs["prometheus"], configs["rules"]))
        prometheus = Prometheus(ports.prometheus)
        exits.callback(prometheus.close)
        built = Stack(exits, workdir, ports, api_port, feishu, smtp, prometheus, processes, server)
        try:
            wait_until(lambda: not prometheus.targets_down(), 60, "every target up")
            wait_until(lambda: prometheus.query("probe_success == 1"), 30, "probe succeeds")
        except TimeoutError as exc:
            pytest.fail(f"{exc}\n{prometheus.targets_down()}\n{built.diagnostics()}")
        yield built


def _card(stack: Stack, title: str, since: float) -> Card:
    card: Card = stack.feishu.cards.wait_for(
        lambda c: c.received_at >= since and c.title.startswith(title), PAGE_TIMEOUT_S)
    return card


def _mail(stack: Stack, subject: str, since: float) -> Mail:
    mail: Mail = stack.smtp.mails.wait_for(
        lambda m: m.received_at >= since and m.subject.startswith(subject), PAGE_TIMEOUT_S)
    return mail


def _kill(server: RunningServer) -> None:
    """SIGKILL the gunicorn master and its workers: a crash, not a graceful stop."""
    workers = server.kill()
    wait_until(lambda: not any(Path(f"/proc/{pid}").exists() for pid in workers), 10,
               "workers gone", period=0.1)


def _alertmanager_alerts(stack: Stack, alertname: str) -> list[dict[str, Any]]:
    response = httpx.get(f"{stack.alertmanager_url}/api/v2/alerts",
                         params={"filter": f'alertname="{alertname}"'}, timeout=5)
    alerts: list[dict[str, Any]] = response.json()
    return alerts


def _assert_service_down_page(stack: Stack, card: Card, mail: Mail) -> None:
    assert card.color == "red"
    assert card.title == "[FIRING:1] ServiceDown (critical)"
    assert f"**Summary:** Sleepwell API {stack.instance} is down" in card.text
    assert f"alertname=ServiceDown, severity=critical, instance={stack.instance}, job=sleepwell" \
        in card.text
    assert "**Started:** 20" in card.text and "**Ended:**" not in card.text
    assert card.buttons["Open Alertmanager"] == stack.alertmanager_url
    assert stack.feishu.rejected.snapshot() == []  # every request was correctly signed
    assert mail.rcpt_tos == [ONCALL] and mail.login == SMTP_USER
    assert f"[FIRING] ServiceDown (critical) on {stack.instance}" in mail.text


def test_service_killed_pages_email_and_feishu_then_resolves(stack: Stack) -> None:
    killed_at = time.monotonic()
    _kill(stack.server)
    card = _card(stack, "[FIRING:1] ServiceDown", killed_at)
    stack.timings["kill -> ServiceDown Feishu card"] = card.received_at - killed_at
    mail = _mail(stack, "[FIRING:1] ServiceDown", killed_at)
    stack.timings["kill -> ServiceDown email"] = mail.received_at - killed_at
    _assert_service_down_page(stack, card, mail)

    # While ServiceDown fires, the failing probe is held back by the inhibition rule.
    probe = wait_until(lambda: _alertmanager_alerts(stack, "HealthProbeFailing"), 30,
                       "HealthProbeFailing reaches Alertmanager")
    assert probe[0]["status"]["state"] == "suppressed", probe
    assert probe[0]["status"]["inhibitedBy"], probe

    restarted_at = time.monotonic()
    stack.start_service()
    stack.timings["restart -> service ready"] = time.monotonic() - restarted_at
    resolved = _card(stack, "[RESOLVED] ServiceDown", restarted_at)
    stack.timings["restart -> resolved Feishu card"] = resolved.received_at - restarted_at
    resolved_mail = _mail(stack, "[RESOLVED] ServiceDown", restarted_at)
    stack.timings["restart -> resolved email"] = resolved_mail.received_at - restarted_at
    assert resolved.color == "green" and "**Ended:** 20" in resolved.text
    assert resolved_mail.rcpt_tos == [ONCALL]
    # Nothing but ServiceDown paged while it fired. (Once it resolves, a probe that still
    # fails because the model is loading may page on its own: users still get 503s.)
    while_down = [c.title for c in stack.feishu.cards.snapshot()
                  if killed_at <= c.received_at < restarted_at]
    assert while_down == ["[FIRING:1] ServiceDown (critical)"]


def _generate(client: httpx.Client, prompt: str) -> int:
    body = {"prompt": prompt, "size": "64x64", "n": 1}
    return client.post("/v1/images/generations", json=body).status_code


def _drive_failures_until_firing(stack: Stack, limit_s: float = 120.0) -> float:
    """Alternate injected failures and successes until Prometheus fires HighFailureRate."""
    started = time.monotonic()
    statuses: list[int] = []
    with stack.server.client(timeout=30) as client:
        for number in range(600):
            if stack.prometheus.firing("HighFailureRate"):
                return time.monotonic() - started
            if time.monotonic() - started > limit_s:
                break
            statuses.append(_generate(client, "[[fail]] a red fox" if number % 2 else "a fox"))
            time.sleep(0.2)
    raise AssertionError(f"HighFailureRate did not fire in {limit_s}s; statuses {statuses}")


def test_injected_failures_fire_high_failure_rate_and_page(stack: Stack) -> None:
    started = time.monotonic()
    stack.timings["failures -> HighFailureRate firing"] = _drive_failures_until_firing(stack)
    card = _card(stack, "[FIRING:1] HighFailureRate", started)
    stack.timings["failures -> HighFailureRate Feishu card"] = card.received_at - started
    (alert,) = stack.prometheus.firing("HighFailureRate")
    assert alert["labels"]["instance"] == stack.instance
    assert 0.1 < float(alert["value"]) < 1.0
    assert card.color == "red" and "of image requests fail on" in card.text


def _variables(stack: Stack) -> dict[str, str]:
    """Each dashboard variable set to "All" of the values its own query returns."""
    values: dict[str, str] = {}
    for name, query in dashboards.variable_queries():
        selector, label = dashboards.split_label_values(query)
        if selector:
            selector = dashboards.substitute(selector, values, "1m", "10m")
        found = stack.prometheus.label_values(label, selector)
        assert found, f"variable {name}: {query} returned nothing"
        values[name] = dashboards.regex_of(found)
    return values


def test_every_dashboard_query_runs_on_live_prometheus(stack: Stack) -> None:
    if not stack.prometheus.firing("HighFailureRate"):
        _drive_failures_until_firing(stack)  # so "alerts firing" panels have something
    variables = _variables(stack)
    assert stack.instance.replace(".", "\\\\.") in variables["instance"]
    empty, gpu_empty = [], []
    for query in dashboards.panel_queries():
        expr = dashboards.substitute(query.expr, variables, "1m", "10m")
        result = stack.prometheus.query(expr)  # raises unless Prometheus says success
        if not result:
            (gpu_empty if query.gpu_only else empty).append(f"{query}: {expr}")
    assert empty == [], "CPU-fed panels without data:\n" + "\n".join(empty)
    stack.timings["dashboard queries run"] = len(dashboards.panel_queries())
    stack.timings["of which GPU-only, empty on this CPU machine"] = len(gpu_empty)
