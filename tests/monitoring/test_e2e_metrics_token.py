"""A protected /metrics, end to end (issue 9, item 10): the real service with
SLEEPWELL_METRICS_TOKEN set, scraped by a real Prometheus running the committed sleepwell
job and alert rules (addresses, intervals and the Compose secret's path rewritten, see
stack.py). With the token in the credentials file the target is up and ServiceDown stays
quiet; with the file emptied Prometheus gets 401, the target goes down and ServiceDown
fires, which is what happened before prometheus.yml sent credentials.
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from tests.monitoring.stack import (
    METRICS_TOKEN,
    Ports,
    Prometheus,
    rewrite_prometheus,
    rewrite_rules,
    start_prometheus,
    wait_until,
)
from tests.support.server import ROOT, RunningServer

pytestmark = pytest.mark.slow

TOKEN = METRICS_TOKEN


@dataclass
class Scraped:
    prometheus: Prometheus
    server: RunningServer
    token_file: Path

    def target(self) -> dict[str, Any]:
        (target,) = self.prometheus.targets("sleepwell")
        return target

    def service_down(self) -> list[dict[str, Any]]:
        return self.prometheus.firing("ServiceDown")

    def wait_health(self, health: str, timeout: float) -> dict[str, Any]:
        """The target once Prometheus reports it ``health``; else fail with what it says."""
        try:
            return dict(wait_until(
                lambda: self.target()["health"] == health and self.target(), timeout,
                f"the sleepwell target is {health}"))
        except TimeoutError as exc:
            now = self.prometheus.targets("sleepwell")
            raise AssertionError(f"{exc}; target now: {now}") from exc


def _config(api_port: int, prometheus_port: int, secrets: Path) -> str:
    addresses = {"api:8000": f"127.0.0.1:{api_port}",
                 "localhost:9090": f"127.0.0.1:{prometheus_port}"}
    text = rewrite_prometheus((ROOT / "prometheus.yml").read_text(), addresses, secrets)
    config = yaml.safe_load(text)
    # Only the job under test; the other jobs' exporters are not started here.
    config["scrape_configs"] = [job for job in config["scrape_configs"]
                                if job["job_name"] == "sleepwell"]
    config.pop("alerting", None)
    return str(yaml.safe_dump(config, sort_keys=False))


@pytest.fixture(scope="module")
def scraped(metrics_token_service: RunningServer) -> Iterator[Scraped]:
    if shutil.which("prometheus") is None:
        pytest.fail("prometheus is not installed (.ci/run installs the Debian package)")
    with ExitStack() as exits:
        workdir = Path(exits.enter_context(tempfile.TemporaryDirectory(prefix="sw-token-")))
        secrets = workdir / "secrets"
        secrets.mkdir()
        token_file = secrets / "metrics_token"
        token_file.write_text(TOKEN + "\n")  # as `echo "$TOKEN" > file` leaves it
        ports, server = Ports(), metrics_token_service  # booting since test_e2e.py's stack
        server.wait_ready()
        api_port = server.port
        process = start_prometheus(workdir, ports, _config(api_port, ports.prometheus, secrets),
                                   rewrite_rules((ROOT / "alert_rules.yml").read_text()))
        exits.callback(process.stop)
        prometheus = Prometheus(ports.prometheus)
        exits.callback(prometheus.close)
        yield Scraped(prometheus, server, token_file)


def test_metrics_token_service_refuses_a_scrape_without_it(scraped: Scraped) -> None:
    assert httpx.get(f"{scraped.server.url}/metrics", timeout=10).status_code == 401
    with_token = httpx.get(f"{scraped.server.url}/metrics", timeout=10,
                           headers={"Authorization": f"Bearer {TOKEN}"})
    assert with_token.status_code == 200 and "model_ready" in with_token.text


def test_metrics_token_prometheus_scrapes_up_with_the_credentials_file(scraped: Scraped) -> None:
    target = scraped.wait_health("up", 60)
    assert target["lastError"] == ""
    series = wait_until(lambda: scraped.prometheus.query('model_ready{job="sleepwell"}'), 30,
                        "the service's own series reach Prometheus")
    assert {s["metric"]["instance"] for s in series} == {f"127.0.0.1:{scraped.server.port}"}
    assert scraped.prometheus.query('up{job="sleepwell"} == 1')
    assert scraped.service_down() == []


def test_metrics_token_without_credentials_scrape_gets_401_and_service_down_fires(
    scraped: Scraped,
) -> None:
    scraped.wait_health("up", 60)
    scraped.token_file.write_text("")  # what an unset token gives; read at every scrape
    try:
        target = scraped.wait_health("down", 30)
        assert "401" in target["lastError"], target["lastError"]
        wait_until(scraped.service_down, 30, "ServiceDown fires")
    finally:
        scraped.token_file.write_text(TOKEN)
    # A rewritten file is picked up without a reload: token rotation needs no restart.
    scraped.wait_health("up", 30)
    wait_until(lambda: not scraped.service_down(), 30, "ServiceDown resolves")
