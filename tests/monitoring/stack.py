"""The monitoring stack, natively on loopback, from the project's own config files.

The rewritten copies change only addresses (service names become 127.0.0.1 ports, the
SMTP password file and TLS for the local SMTP server) and intervals (scrape, evaluation,
``for:`` and Alertmanager's grouping, all divided by SPEED). Alert expressions, routes,
receivers and inhibitions are used exactly as committed. The dcgm job is dropped: it
resolves a DNS name, and no GPU is here.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import yaml

from tests.support.server import ROOT, free_port

SPEED = 15  # production scrape interval (15s) / test scrape interval (1s)
METRICS_TOKEN = "e2e-metrics-token-4f1c"  # test_e2e_metrics_token.py's service
# Measured figures, printed by conftest.py at the end of the run: name -> seconds (or count).
FIGURES: dict[str, float] = {}
BINARIES = {
    "prometheus": "prometheus",
    "alertmanager": "prometheus-alertmanager",
    "blackbox": "prometheus-blackbox-exporter",
    "node": "prometheus-node-exporter",
}
_DURATION = re.compile(r"^(\d+)(ms|s|m|h|d)$")
_UNIT_SECONDS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400}


def seconds(duration: str) -> float:
    match = _DURATION.match(str(duration))
    if match is None:
        raise ValueError(f"unsupported duration {duration!r}")
    return int(match.group(1)) * _UNIT_SECONDS[match.group(2)]


def scaled(duration: str) -> str:
    """A production duration divided by SPEED, at least one second."""
    return f"{max(1, round(seconds(duration) / SPEED))}s"


def missing_binaries() -> list[str]:
    return [name for name in BINARIES.values() if shutil.which(name) is None]


# --- config rewriting -----------------------------------------------------------------
COMPOSE_SECRETS = "/run/secrets/"


def rewrite_prometheus(text: str, addresses: dict[str, str], secrets_dir: Path) -> str:
    """Addresses, intervals, and Compose's /run/secrets/<name> files -> secrets_dir/<name>."""
    for old, new in addresses.items():
        text = text.replace(old, new)
    config = yaml.safe_load(text)
    config["global"].update(scrape_interval="1s", scrape_timeout="1s", evaluation_interval="1s")
    config["scrape_configs"] = [
        job for job in config["scrape_configs"] if "dns_sd_configs" not in job
    ]
    for job in config["scrape_configs"]:
        authorization = job.get("authorization", {})
        path = authorization.get("credentials_file", "")
        if path.startswith(COMPOSE_SECRETS):
            authorization["credentials_file"] = str(secrets_dir / path[len(COMPOSE_SECRETS):])
    return str(yaml.safe_dump(config, sort_keys=False))


def rewrite_rules(text: str) -> str:
    config = yaml.safe_load(text)
    for group in config["groups"]:
        if "interval" in group:
            group["interval"] = "1s"
        for rule in group["rules"]:
            if "for" in rule:
                rule["for"] = scaled(rule["for"])
    return str(yaml.safe_dump(config, sort_keys=False))


def rewrite_alertmanager(text: str, smtp_port: int, relay_url: str, password_file: Path) -> str:
    config = yaml.safe_load(text)
    config["global"].update(
        smtp_smarthost=f"127.0.0.1:{smtp_port}",
        smtp_auth_password_file=str(password_file),
        smtp_require_tls=False,
    )
    routes = [config["route"], *config["route"].get("routes", [])]
    for route in routes:
        for key in ("group_wait", "group_interval", "repeat_interval"):
            if key in route:
                route[key] = scaled(route[key])
    for receiver in config["receivers"]:
        for hook in receiver.get("webhook_configs", []):
            hook["url"] = relay_url
    return str(yaml.safe_dump(config, sort_keys=False))


# --- processes ------------------------------------------------------------------------
@dataclass
class Process:
    name: str
    popen: subprocess.Popen[bytes]
    log_path: Path

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")[-4000:]

    def stop(self) -> None:
        if self.popen.poll() is None:
            self.popen.send_signal(signal.SIGTERM)
            try:
                self.popen.wait(10)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait(10)


@dataclass
class Ports:
    prometheus: int = field(default_factory=free_port)
    alertmanager: int = field(default_factory=free_port)
    blackbox: int = field(default_factory=free_port)
    node: int = field(default_factory=free_port)
    relay: int = field(default_factory=free_port)


def spawn(name: str, argv: list[str], workdir: Path, env: dict[str, str] | None = None) -> Process:
    log_path = workdir / f"{name}.log"
    with log_path.open("wb") as log:
        popen = subprocess.Popen(argv, cwd=workdir, env=env, stdout=log,
                                 stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    return Process(name, popen, log_path)


def start_exporters(workdir: Path, ports: Ports) -> list[Process]:
    blackbox = spawn("blackbox", [
        BINARIES["blackbox"], f"--config.file={ROOT / 'monitoring' / 'blackbox.yml'}",
        f"--web.listen-address=127.0.0.1:{ports.blackbox}",
    ], workdir)
    node = spawn("node", [
        BINARIES["node"], f"--web.listen-address=127.0.0.1:{ports.node}",
    ], workdir)
    return [blackbox, node]


def start_relay(workdir: Path, ports: Ports, feishu_url: str, secret: str) -> Process:
    secret_file = workdir / "feishu_secret"
    secret_file.write_text(secret + "\n")
    env = {key: value for key, value in os.environ.items()
           if not key.startswith("SLEEPWELL_") and key != "PROMETHEUS_MULTIPROC_DIR"}
    env.update(
        SLEEPWELL_RELAY_HOST="127.0.0.1",
        SLEEPWELL_RELAY_PORT=str(ports.relay),
        SLEEPWELL_FEISHU_WEBHOOK_URL=feishu_url,
        SLEEPWELL_FEISHU_SECRET_FILE=str(secret_file),
        SLEEPWELL_FEISHU_BACKOFF_S="0.2",
        SLEEPWELL_RELAY_GRAFANA_URL="http://127.0.0.1:3000/d/sleepwell-service",
        SLEEPWELL_LOG_LEVEL="info",
    )
    return spawn("relay", [sys.executable, "-m", "app.relay"], workdir, env)


def start_alertmanager(workdir: Path, ports: Ports, config_text: str) -> Process:
    config = workdir / "alertmanager.yml"
    config.write_text(config_text)
    return spawn("alertmanager", [
        BINARIES["alertmanager"], f"--config.file={config}",
        f"--storage.path={workdir / 'alertmanager-data'}",
        f"--web.listen-address=127.0.0.1:{ports.alertmanager}",
        f"--web.external-url=http://127.0.0.1:{ports.alertmanager}",
        "--cluster.listen-address=",
    ], workdir)


def start_prometheus(workdir: Path, ports: Ports, config_text: str, rules_text: str) -> Process:
    (workdir / "prometheus.yml").write_text(config_text)
    (workdir / "alert_rules.yml").write_text(rules_text)
    return spawn("prometheus", [
        BINARIES["prometheus"], f"--config.file={workdir / 'prometheus.yml'}",
        f"--storage.tsdb.path={workdir / 'prometheus-data'}",
        f"--web.listen-address=127.0.0.1:{ports.prometheus}",
        f"--web.external-url=http://127.0.0.1:{ports.prometheus}",
    ], workdir)


# --- waiting and querying -------------------------------------------------------------
def wait_until(check: Callable[[], Any], timeout: float, what: str, period: float = 0.5) -> Any:
    """Call ``check`` until it returns something truthy; bounded in time and tries."""
    deadline = time.monotonic() + timeout
    last_error: Exception | None = None
    for _ in range(int(timeout / period) + 2):
        try:
            result = check()
        except (httpx.HTTPError, ValueError, KeyError) as exc:
            last_error, result = exc, None
        if result:
            return result
        if time.monotonic() >= deadline:
            break
        time.sleep(period)
    raise TimeoutError(f"{what}: not within {timeout}s (last error: {last_error})")


class Prometheus:
    def __init__(self, port: int) -> None:
        self.url = f"http://127.0.0.1:{port}"
        self.http = httpx.Client(base_url=self.url, timeout=10)

    def query(self, expr: str) -> list[dict[str, Any]]:
        response = self.http.get("/api/v1/query", params={"query": expr})
        body = response.json()
        if body.get("status") != "success":
            raise AssertionError(f"query failed: {expr}\n{body}")
        result: list[dict[str, Any]] = body["data"]["result"]
        return result

    def label_values(self, label: str, selector: str | None) -> list[str]:
        params = {"match[]": selector} if selector else {}
        body = self.http.get(f"/api/v1/label/{label}/values", params=params).json()
        if body.get("status") != "success":
            raise AssertionError(f"label values failed: {label} {selector}\n{body}")
        return list(body["data"])

    def targets(self, job: str) -> list[dict[str, Any]]:
        active = self.http.get("/api/v1/targets").json()["data"]["activeTargets"]
        return [target for target in active if target["labels"]["job"] == job]

    def targets_down(self) -> list[str]:
        active = self.http.get("/api/v1/targets").json()["data"]["activeTargets"]
        return [f"{t['labels']['job']} {t['scrapeUrl']}: {t['lastError']}"
                for t in active if t["health"] != "up"]

    def firing(self, alertname: str) -> list[dict[str, Any]]:
        alerts = self.http.get("/api/v1/alerts").json()["data"]["alerts"]
        return [a for a in alerts if a["labels"]["alertname"] == alertname
                and a["state"] == "firing"]

    def close(self) -> None:
        self.http.close()
