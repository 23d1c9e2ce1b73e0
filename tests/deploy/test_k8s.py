"""deploy/k8s: strict schema validation, and every reference between manifests holds."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from app.settings import Settings
from tests.deploy.manifests import (
    ADAPTER_VALUES,
    ALERT_RULES,
    K8S_DIR,
    K8S_VERSION,
    import_script,
    k8s_documents,
    load_yaml,
)
from tests.support.server import VENV_BIN

GENERATOR = K8S_DIR / "generate_prometheusrule.py"
CUSTOM_KINDS = {"ServiceMonitor", "PrometheusRule"}  # CRDs: no schema in kubernetes-validate
PROMTOOL = shutil.which("promtool")
needs_promtool = pytest.mark.skipif(PROMTOOL is None, reason="promtool is not installed")


def _manifest_files() -> list[Path]:
    return [K8S_DIR / name for name in load_yaml(K8S_DIR / "kustomization.yaml")["resources"]]


def _builtin_files() -> list[Path]:
    return [path for path in _manifest_files()
            if load_yaml(path)["kind"] not in CUSTOM_KINDS]


def _container() -> dict[str, Any]:
    (container,) = k8s_documents()["Deployment"]["spec"]["template"]["spec"]["containers"]
    return container


def _env() -> dict[str, str]:
    return {item["name"]: item["value"] for item in _container()["env"]}


@pytest.mark.parametrize("path", _builtin_files(), ids=lambda path: path.name)
def test_k8s_manifest_validates_strictly_for_target_version(path: Path) -> None:
    result = subprocess.run(
        [str(VENV_BIN / "kubernetes-validate"), "--strict", "-k", K8S_VERSION, str(path)],
        capture_output=True, text=True, timeout=120, check=False,
    )
    assert result.returncode == 0 and "passed" in result.stdout, result.stdout + result.stderr


def test_k8s_kustomization_lists_every_manifest_in_the_directory() -> None:
    listed = {path.name for path in _manifest_files()}
    present = {path.name for path in K8S_DIR.glob("*.yaml")}
    not_manifests = {"kustomization.yaml", ADAPTER_VALUES.name}
    assert listed == present - not_manifests
    kinds = {load_yaml(path)["kind"] for path in _manifest_files()}
    assert {"Deployment", "Service", "PodDisruptionBudget", "HorizontalPodAutoscaler",
            "ServiceMonitor", "PrometheusRule"} <= kinds


def test_k8s_prometheusrule_is_generated_from_alert_rules() -> None:
    generator = import_script(GENERATOR)
    committed = (K8S_DIR / "prometheusrule.yaml").read_text(encoding="utf-8")
    assert committed == generator.render(ALERT_RULES), (
        "stale: run .venv/bin/python deploy/k8s/generate_prometheusrule.py"
    )
    assert load_yaml(K8S_DIR / "prometheusrule.yaml")["spec"] == load_yaml(ALERT_RULES)


def test_k8s_prometheusrule_generator_check_mode_flags_a_stale_file(tmp_path: Path) -> None:
    stale = tmp_path / "prometheusrule.yaml"
    stale.write_text("# stale\n")
    result = subprocess.run(
        [str(VENV_BIN / "python"), str(GENERATOR), "--check", "--target", str(stale)],
        capture_output=True, text=True, timeout=60, check=False,
    )
    assert result.returncode == 1 and "stale" in result.stderr


@needs_promtool
def test_k8s_prometheusrule_groups_pass_promtool(tmp_path: Path) -> None:
    rules = tmp_path / "rules.yml"
    rules.write_text(yaml.safe_dump(k8s_documents()["PrometheusRule"]["spec"]))
    result = subprocess.run([str(PROMTOOL), "check", "rules", str(rules)],
                            capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == 0, result.stdout + result.stderr


def test_k8s_custom_resources_have_the_operator_shape() -> None:
    docs = k8s_documents()
    monitor, rule = docs["ServiceMonitor"], docs["PrometheusRule"]
    for document in (monitor, rule):
        assert document["apiVersion"] == "monitoring.coreos.com/v1"
        assert document["metadata"]["labels"]["release"] == "kube-prometheus-stack"
        assert set(document) == {"apiVersion", "kind", "metadata", "spec"}
    assert set(monitor["spec"]) <= {"selector", "endpoints", "namespaceSelector", "jobLabel"}
    for endpoint in monitor["spec"]["endpoints"]:
        assert set(endpoint) <= {"port", "path", "interval", "scrapeTimeout", "scheme",
                                 "authorization"}
        assert re.fullmatch(r"\d+[smh]", endpoint["interval"])
    for group in rule["spec"]["groups"]:
        assert set(group) <= {"name", "interval", "rules"}


def test_k8s_deployment_requests_exactly_one_gpu_per_pod_and_one_worker() -> None:
    resources = _container()["resources"]
    assert resources["limits"]["nvidia.com/gpu"] == 1
    assert resources["requests"]["nvidia.com/gpu"] == 1
    assert {"cpu", "memory"} <= set(resources["requests"]) and "memory" in resources["limits"]
    assert _env()["SLEEPWELL_WORKERS"] == "1"
    assert _env()["SLEEPWELL_DEVICE"] == "cuda"


def test_k8s_probes_use_the_health_endpoints_as_meant() -> None:
    container = _container()
    startup, live, ready = (container[key] for key in
                            ("startupProbe", "livenessProbe", "readinessProbe"))
    assert startup["httpGet"]["path"] == "/health/ready"
    assert live["httpGet"]["path"] == "/health/live"
    assert ready["httpGet"]["path"] == "/health/ready"
    # Tolerant of a slow model download: at least 10 minutes before a restart.
    assert startup["periodSeconds"] * startup["failureThreshold"] >= 600
    # The app answers in milliseconds; the timeouts only cover a busy node.
    for probe in (startup, live, ready):
        assert probe["timeoutSeconds"] >= 2
    # A stalled worker reports 503 and exits by itself after stall_exit_delay_s, so
    # gunicorn replaces just that worker; the kubelet restarts the pod only if it cannot.
    window = live["periodSeconds"] * live["failureThreshold"]
    assert window > Settings.model_fields["stall_exit_delay_s"].default * 3


def test_k8s_probe_and_service_ports_resolve_to_the_app_port() -> None:
    container = _container()
    ports = {port["name"]: port["containerPort"] for port in container["ports"]}
    assert ports == {"http": int(_env()["SLEEPWELL_PORT"])}
    assert ports["http"] == Settings.model_fields["port"].default
    for key in ("startupProbe", "livenessProbe", "readinessProbe"):
        assert container[key]["httpGet"]["port"] in ports
    service = k8s_documents()["Service"]
    (port,) = service["spec"]["ports"]
    assert port["targetPort"] in ports
    monitor = k8s_documents()["ServiceMonitor"]
    assert {endpoint["port"] for endpoint in monitor["spec"]["endpoints"]} <= {port["name"]}
    assert _env()["SLEEPWELL_HOST"] == "0.0.0.0"


def test_k8s_termination_grace_covers_prestop_and_drain() -> None:
    pod = k8s_documents()["Deployment"]["spec"]["template"]["spec"]
    command = _container()["lifecycle"]["preStop"]["exec"]["command"]
    assert command[0] == "sleep"
    pre_stop = int(command[1])
    drain = float(_env()["SLEEPWELL_GRACEFUL_TIMEOUT_S"])
    assert pod["terminationGracePeriodSeconds"] >= pre_stop + drain + 5


def test_k8s_selectors_pick_the_deployment_pods() -> None:
    docs = k8s_documents()
    pod_labels = docs["Deployment"]["spec"]["template"]["metadata"]["labels"]
    selectors = [
        docs["Deployment"]["spec"]["selector"]["matchLabels"],
        docs["PodDisruptionBudget"]["spec"]["selector"]["matchLabels"],
        docs["Service"]["spec"]["selector"],
    ]
    for selector in selectors:
        assert selector.items() <= pod_labels.items(), selector
    monitor = docs["ServiceMonitor"]["spec"]["selector"]["matchLabels"]
    assert monitor.items() <= docs["Service"]["metadata"]["labels"].items()
    target = docs["HorizontalPodAutoscaler"]["spec"]["scaleTargetRef"]
    assert (target["kind"], target["name"]) == ("Deployment",
                                                 docs["Deployment"]["metadata"]["name"])
    pdb = docs["PodDisruptionBudget"]["spec"]
    hpa = docs["HorizontalPodAutoscaler"]["spec"]
    assert pdb["maxUnavailable"] < hpa["minReplicas"], "a drain must leave a pod serving"


def test_k8s_service_name_is_the_job_label_the_alert_rules_use() -> None:
    jobs = set(re.findall(r'job="([^"]+)"', ALERT_RULES.read_text()))
    assert k8s_documents()["Service"]["metadata"]["name"] in jobs


def test_k8s_hpa_metrics_are_served_by_the_adapter_rules() -> None:
    hpa = k8s_documents()["HorizontalPodAutoscaler"]["spec"]
    wanted = {metric["pods"]["metric"]["name"] for metric in hpa["metrics"]
              if metric["type"] == "Pods"}
    assert wanted
    rules = load_yaml(ADAPTER_VALUES)["rules"]["custom"]
    served = {rule["name"]["as"] for rule in rules}
    assert wanted <= served
    for rule in rules:
        assert rule["resources"]["overrides"]["pod"] == {"resource": "pod"}
        assert rule["resources"]["overrides"]["namespace"] == {"resource": "namespace"}


@needs_promtool
def test_k8s_adapter_queries_render_to_valid_promql(tmp_path: Path) -> None:
    """Fill in the adapter's template the way it does, and let promtool parse the result."""
    rules = load_yaml(ADAPTER_VALUES)["rules"]["custom"]
    recording = []
    for rule in rules:
        series = rule["seriesQuery"].split("{", 1)[0].strip("'")
        query = (rule["metricsQuery"]
                 .replace("<<.Series>>", series)
                 .replace("<<.LabelMatchers>>", 'namespace="sleepwell",pod=~"sleepwell-.*"')
                 .replace("<<.GroupBy>>", "pod"))
        recording.append({"record": f"adapter:{rule['name']['as']}", "expr": query})
    path = tmp_path / "adapter.yml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "adapter", "rules": recording}]}))
    result = subprocess.run([str(PROMTOOL), "check", "rules", str(path)],
                            capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == 0, result.stdout + result.stderr


def test_k8s_hpa_scales_on_jobs_queued_through_an_external_adapter_rule() -> None:
    """jobs (issue 10): the backlog is one number for all pods (External, AverageValue)."""
    hpa = k8s_documents()["HorizontalPodAutoscaler"]["spec"]
    (external,) = [m["external"] for m in hpa["metrics"] if m["type"] == "External"]
    assert external["target"]["type"] == "AverageValue"
    rules = load_yaml(ADAPTER_VALUES)["rules"]["external"]
    (rule,) = [r for r in rules if r["name"]["as"] == external["metric"]["name"]]
    assert rule["seriesQuery"].startswith("'jobs_queued") or "jobs_queued" in rule["seriesQuery"]
    assert rule["metricsQuery"].startswith("max(")
