"""Static checks of the monitoring config: the real tools validate every file."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.monitoring import dashboards, stack
from tests.monitoring.stack import BINARIES
from tests.support.server import ROOT, VENV_BIN

REQUIRED_ALERTS = {
    "ServiceDown", "HealthProbeFailing", "NotReady", "GPUMemoryHigh", "HighFailureRate",
    "HighLatency", "QueueSaturated", "CudaOOM", "WorkerRestarting", "DiskSpaceLow",
    "MetricsMissing", "ModelLoadFailing",
}
DASHBOARD_TOPICS = {
    "request rate by status": r"by \(status\) \(rate\(image_generation_total",
    "error ratio": r'status=~"failed\|timeout".*/',
    "latency p50": r"histogram_quantile\(0\.5,.*image_generation_latency_seconds_bucket",
    "latency p95": r"histogram_quantile\(0\.95,.*image_generation_latency_seconds_bucket",
    "latency p99": r"histogram_quantile\(0\.99,.*image_generation_latency_seconds_bucket",
    "queue depth": r"image_generation_queue_depth",
    "in-flight": r"image_generation_inflight",
    "queue wait": r"image_generation_queue_wait_seconds",
    "answer time by status": r"by \(le, status\) \(rate\(image_generation_answer_seconds_bucket",
    "request rate by kind": r"by \(kind\) \(rate\(image_generation_total",
    "error ratio by kind": (r"by \(kind\) \(rate\(image_generation_total\{[^}]*"
                            r'status=~"failed\|timeout"'),
    "latency by kind": r"by \(le, kind\) \(rate\(image_generation_latency_seconds_bucket",
    "queue wait by kind": r"by \(le, kind\) \(rate\(image_generation_queue_wait_seconds_bucket",
    "model load failures": r"model_load_failures_total",
    "batch size": r"image_generation_batch_size",
    "gpu memory allocated": r"gpu_memory_allocated_bytes",
    "gpu memory reserved": r"gpu_memory_reserved_bytes",
    "gpu memory total": r"gpu_memory_total_bytes",
    "gpu utilisation": r"gpu_utilization_ratio",
    "gpu temperature": r"gpu_temperature_celsius",
    "ooms": r"cuda_oom_total",
    "model ready per worker": r"model_ready",
    "probe success": r"probe_success",
    "uptime": r"avg_over_time\(probe_success",
    "alerts firing": r'ALERTS\{alertstate="firing"\}',
}


def run(argv: list[str], cwd: Path = ROOT) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, cwd=cwd, capture_output=True, text=True, timeout=120, check=False)


def tool(name: str) -> str:
    path = shutil.which(name) or shutil.which(name, path=str(VENV_BIN))
    if path is None:
        pytest.fail(f"{name} is not installed (.ci/run installs the Debian packages)")
    return path


def load_yaml(name: str) -> Any:
    return yaml.safe_load((ROOT / name).read_text())


def alert_rules() -> list[dict[str, Any]]:
    return [rule for group in load_yaml("alert_rules.yml")["groups"] for rule in group["rules"]
            if "alert" in rule]


# --- prometheus ---------------------------------------------------------------------
def test_prometheus_config_promtool_check_passes(tmp_path: Path) -> None:
    # promtool opens every credentials file: give it Compose's /run/secrets as a directory
    # of its own (an empty metrics_token, as Compose mounts with no token set).
    secrets = tmp_path / "secrets"
    secrets.mkdir()
    (secrets / "metrics_token").write_text("")
    text = (ROOT / "prometheus.yml").read_text().replace(stack.COMPOSE_SECRETS, f"{secrets}/")
    (tmp_path / "prometheus.yml").write_text(text)
    shutil.copy(ROOT / "alert_rules.yml", tmp_path / "alert_rules.yml")
    result = run([tool("promtool"), "check", "config", "prometheus.yml"], cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr


def test_prometheus_sleepwell_job_sends_the_metrics_token_compose_mounts() -> None:
    job = next(job for job in load_yaml("prometheus.yml")["scrape_configs"]
               if job["job_name"] == "sleepwell")
    assert job["authorization"] == {
        "type": "Bearer", "credentials_file": "/run/secrets/metrics_token"}
    compose = load_yaml("docker-compose.monitoring.yml")
    assert "metrics_token" in compose["services"]["prometheus"]["secrets"]
    # The same variable the API reads its token from (.env), never a literal value.
    assert compose["secrets"]["metrics_token"] == {"environment": "SLEEPWELL_METRICS_TOKEN"}
    text = (ROOT / "prometheus.yml").read_text()
    assert "credentials:" not in text and "bearer_token:" not in text


def test_prometheus_config_scrape_jobs_cover_every_source() -> None:
    config = load_yaml("prometheus.yml")
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    assert {"sleepwell", "blackbox-health", "node", "dcgm", "alertmanager"} <= set(jobs)
    assert jobs["sleepwell"]["static_configs"][0]["targets"] == ["api:8000"]
    assert jobs["blackbox-health"]["static_configs"][0]["targets"] == [
        "http://api:8000/health/ready"]
    assert jobs["blackbox-health"]["params"]["module"] == ["http_ready"]
    assert config["rule_files"] == ["alert_rules.yml"]


def test_alert_rules_promtool_check_passes() -> None:
    result = run([tool("promtool"), "check", "rules", "alert_rules.yml"])
    assert result.returncode == 0, result.stdout + result.stderr


def test_alert_rules_every_rule_has_severity_summary_description_runbook() -> None:
    rules = alert_rules()
    assert {rule["alert"] for rule in rules} >= REQUIRED_ALERTS
    for rule in rules:
        assert rule["labels"]["severity"] in {"critical", "warning"}, rule["alert"]
        for key in ("summary", "description", "runbook"):
            assert rule["annotations"].get(key, "").strip(), f"{rule['alert']} lacks {key}"


def test_alert_rules_gpu_memory_is_relative_to_total() -> None:
    rule = next(rule for rule in alert_rules() if rule["alert"] == "GPUMemoryHigh")
    assert "gpu_memory_total_bytes" in rule["expr"]
    assert not re.search(r"\d{2}e9|24|2[0-9]{10}", rule["expr"]), rule["expr"]


def test_alert_rules_unit_tests_pass() -> None:
    result = run([tool("promtool"), "test", "rules", "monitoring/alert_rules_test.yml"])
    assert result.returncode == 0, result.stdout + result.stderr


def test_alert_rules_unit_tests_cover_every_alert_firing_and_quiet() -> None:
    tests = yaml.safe_load((ROOT / "monitoring" / "alert_rules_test.yml").read_text())["tests"]
    fires: set[str] = set()
    quiet: set[str] = set()
    for case in tests:
        for check in case["alert_rule_test"]:
            (fires if check.get("exp_alerts") else quiet).add(check["alertname"])
    names = {rule["alert"] for rule in alert_rules()}
    assert names - fires == set(), "no firing case"
    assert names - quiet == set(), "no quiet case"


# --- alertmanager -------------------------------------------------------------------
def test_alertmanager_config_amtool_check_passes() -> None:
    result = run([tool("amtool"), "check-config", "alertmanager.yml"])
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize(
    ("labels", "receiver"),
    [
        (["severity=critical", "alertname=ServiceDown", "instance=api:8000"], "oncall-critical"),
        (["severity=critical", "alertname=HighFailureRate"], "oncall-critical"),
        (["severity=warning", "alertname=HighLatency"], "team-email"),
        (["severity=warning", "alertname=DiskSpaceLow"], "team-email"),
    ],
)
def test_alertmanager_routes_severity_reaches_receiver(labels: list[str], receiver: str) -> None:
    result = run([tool("amtool"), "config", "routes", "test", "--config.file=alertmanager.yml",
                  f"--verify.receivers={receiver}", *labels])
    assert result.returncode == 0, result.stdout + result.stderr


def test_alertmanager_critical_goes_to_email_and_feishu_every_15m() -> None:
    config = load_yaml("alertmanager.yml")
    critical = next(r for r in config["route"]["routes"] if r["receiver"] == "oncall-critical")
    assert critical["repeat_interval"] == "15m"
    receiver = next(r for r in config["receivers"] if r["name"] == "oncall-critical")
    assert receiver["email_configs"][0]["send_resolved"] is True
    assert receiver["webhook_configs"][0]["url"] == "http://feishu-relay:9095/alertmanager"
    assert receiver["webhook_configs"][0]["send_resolved"] is True


def test_alertmanager_service_down_inhibits_symptoms_on_same_instance() -> None:
    (rule,) = load_yaml("alertmanager.yml")["inhibit_rules"]
    assert rule["source_matchers"] == ['alertname="ServiceDown"']
    assert rule["equal"] == ["instance"]
    symptoms = REQUIRED_ALERTS - {"ServiceDown", "DiskSpaceLow"}
    target = rule["target_matchers"][0]
    assert all(name in target for name in symptoms), target


def test_alertmanager_config_commits_no_secret() -> None:
    text = (ROOT / "alertmanager.yml").read_text()
    assert "smtp_auth_password:" not in text
    assert "auth_password:" not in text
    assert "smtp_auth_password_file: /run/secrets/smtp_password" in text
    assert "feishu.cn" not in text and "larksuite" not in text


def test_monitoring_env_example_leaves_every_secret_empty() -> None:
    lines = (ROOT / "monitoring" / "monitoring.env.example").read_text().splitlines()
    values = dict(line.split("=", 1) for line in lines if line and not line.startswith("#"))
    assert set(values) == {"SMTP_AUTH_PASSWORD", "FEISHU_WEBHOOK_URL", "FEISHU_SIGNING_SECRET",
                           "GRAFANA_ADMIN_PASSWORD"}
    assert all(value == "" for value in values.values())


# --- blackbox, compose, relay image ---------------------------------------------------
def test_blackbox_config_check_passes() -> None:
    result = run([tool(BINARIES["blackbox"]), "--config.check",
                  "--config.file=monitoring/blackbox.yml"])
    assert result.returncode == 0, result.stdout + result.stderr


def test_compose_monitoring_file_matches_compose_spec() -> None:
    result = run([tool("check-jsonschema"), "--builtin-schema", "vendor.compose-spec",
                  "docker-compose.monitoring.yml"])
    assert result.returncode == 0, result.stdout + result.stderr


def test_compose_monitoring_images_pinned_and_data_in_named_volumes() -> None:
    compose = load_yaml("docker-compose.monitoring.yml")
    services = compose["services"]
    expected = {"prometheus", "alertmanager", "grafana", "node-exporter", "blackbox-exporter",
                "dcgm-exporter", "feishu-relay"}
    assert expected <= set(services)
    for name, service in services.items():
        image = service["image"]
        assert re.search(r":v?\d+\.\d+", image) and not image.endswith(":latest"), name
    assert "prometheus-data:/prometheus" in services["prometheus"]["volumes"]
    assert "grafana-data:/var/lib/grafana" in services["grafana"]["volumes"]
    assert {"prometheus-data", "grafana-data"} <= set(compose["volumes"])
    assert services["dcgm-exporter"]["profiles"] == ["gpu"]
    grafana_env = services["grafana"]["environment"]
    assert "GF_SECURITY_ADMIN_PASSWORD" not in grafana_env
    assert compose["secrets"]["grafana_admin_password"] == {"environment": "GRAFANA_ADMIN_PASSWORD"}


def test_relay_dockerfile_hadolint_passes() -> None:
    result = run([tool("hadolint"), "monitoring/relay.Dockerfile"])
    assert result.returncode == 0, result.stdout + result.stderr


# --- grafana ------------------------------------------------------------------------
def test_grafana_provisioning_points_at_prometheus_and_dashboards() -> None:
    datasources = load_yaml("grafana/provisioning/datasources/prometheus.yml")["datasources"]
    assert datasources[0]["uid"] == "prometheus"
    assert datasources[0]["url"] == "http://prometheus:9090"
    provider = load_yaml("grafana/provisioning/dashboards/sleepwell.yml")["providers"][0]
    grafana = load_yaml("docker-compose.monitoring.yml")["services"]["grafana"]
    assert f"./grafana/dashboards:{provider['options']['path']}:ro" in grafana["volumes"]


def test_grafana_dashboard_has_job_and_instance_variables_and_every_topic() -> None:
    dashboard = json.loads(dashboards.path_of("sleepwell-service.json").read_text())
    names = {v["name"] for v in dashboard["templating"]["list"]}
    assert {"job", "instance", "kind"} <= names
    exprs = "\n".join(query.expr for query in dashboards.panel_queries())
    missing = [topic for topic, pattern in DASHBOARD_TOPICS.items()
               if not re.search(pattern, exprs)]
    assert missing == []
    for panel in dashboards.all_panels(dashboard):
        if panel["type"] != "row":
            assert panel["datasource"]["uid"] == "prometheus", panel["title"]
            assert '$job' in json.dumps(panel["targets"]) or "job=" in json.dumps(
                panel["targets"]) or "ALERTS" in json.dumps(panel["targets"]), panel["title"]


def test_grafana_dashboard_queries_parse_with_promtool(tmp_path: Path) -> None:
    rules = []
    every = {name: ".*" for name, _ in dashboards.variable_queries()}  # "All" of each
    for number, query in enumerate(dashboards.panel_queries()):
        expr = dashboards.substitute(query.expr, every, "1m", "1h")
        rules.append({"record": f"dashboard:query_{number}", "expr": expr})
    for name, query in dashboards.variable_queries():
        selector, _ = dashboards.split_label_values(query)
        if selector:
            expr = dashboards.substitute(selector, every, "1m", "1h")
            rules.append({"record": f"dashboard:variable_{name}", "expr": expr})
    path = tmp_path / "dashboard_queries.yml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboards", "rules": rules}]}))
    result = run([tool("promtool"), "check", "rules", str(path)])
    assert result.returncode == 0, result.stdout + result.stderr
    assert len(rules) >= 30


# --- the end-to-end test's rewritten copies -------------------------------------------
def test_e2e_rewrites_change_only_addresses_and_intervals(tmp_path: Path) -> None:
    addresses = {"api:8000": "127.0.0.1:1", "alertmanager:9093": "127.0.0.1:2"}
    secrets = tmp_path / "secrets"
    prometheus = yaml.safe_load(stack.rewrite_prometheus(
        (ROOT / "prometheus.yml").read_text(), addresses, secrets))
    original = load_yaml("prometheus.yml")
    assert prometheus["rule_files"] == original["rule_files"]
    assert prometheus["global"]["scrape_interval"] == "1s"
    kept = [job["job_name"] for job in prometheus["scrape_configs"]]
    assert kept == [j["job_name"] for j in original["scrape_configs"] if j["job_name"] != "dcgm"]
    new_jobs = {job["job_name"]: job for job in prometheus["scrape_configs"]}
    for job in original["scrape_configs"]:
        if "authorization" in job:  # only the secret's path moves
            moved = new_jobs[job["job_name"]]["authorization"]
            assert moved == {**job["authorization"],
                             "credentials_file": str(secrets / "metrics_token")}

    rules = yaml.safe_load(stack.rewrite_rules((ROOT / "alert_rules.yml").read_text()))
    for new, old in zip(rules["groups"], load_yaml("alert_rules.yml")["groups"], strict=True):
        for new_rule, old_rule in zip(new["rules"], old["rules"], strict=True):
            assert {k: v for k, v in new_rule.items() if k != "for"} == {
                k: v for k, v in old_rule.items() if k != "for"}
            if "for" in old_rule:
                assert stack.seconds(new_rule["for"]) == max(
                    1, round(stack.seconds(old_rule["for"]) / stack.SPEED))

    password = tmp_path / "password"
    manager = yaml.safe_load(stack.rewrite_alertmanager(
        (ROOT / "alertmanager.yml").read_text(), 25, "http://127.0.0.1:3/alertmanager", password))
    original = load_yaml("alertmanager.yml")
    assert manager["inhibit_rules"] == original["inhibit_rules"]
    timing = {"group_wait", "group_interval", "repeat_interval"}
    for new_route, old_route in zip(manager["route"]["routes"], original["route"]["routes"],
                                    strict=True):
        assert {k: v for k, v in new_route.items() if k not in timing} == {
            k: v for k, v in old_route.items() if k not in timing}
    for new_receiver, old_receiver in zip(manager["receivers"], original["receivers"],
                                          strict=True):
        assert new_receiver["email_configs"] == old_receiver["email_configs"]
