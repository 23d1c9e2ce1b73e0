"""Ask a running server: do the manifests probe, scrape and health-check what it serves?"""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path

import httpx

from tests.deploy.manifests import (
    ADAPTER_VALUES,
    IMAGE_PATHS,
    compose,
    dockerfile_healthcheck,
    k8s_documents,
    load_yaml,
)
from tests.support.server import RunningServer, free_port, gunicorn_server


def _native(argv: list[str]) -> list[str]:
    """A container command with the image's paths mapped onto this checkout."""
    return [IMAGE_PATHS.get(arg, arg) for arg in argv]


def _run_healthcheck(argv: list[str], port: int) -> subprocess.CompletedProcess[str]:
    # The container environment, as compose sets it: a wildcard bind and the port.
    env = {**os.environ, "SLEEPWELL_HOST": "0.0.0.0", "SLEEPWELL_PORT": str(port)}
    env.pop("SLEEPWELL_HEALTHCHECK_URL", None)
    started = time.monotonic()
    result = subprocess.run(_native(argv), env=env, capture_output=True, text=True,
                            timeout=30, check=False)
    assert time.monotonic() - started < 10, "a health check must be quick"
    return result


def _probe_paths() -> dict[str, str]:
    """Every HTTP path a manifest points a prober or scraper at."""
    container = k8s_documents()["Deployment"]["spec"]["template"]["spec"]["containers"][0]
    paths = {f"k8s {key}": container[key]["httpGet"]["path"]
             for key in ("startupProbe", "livenessProbe", "readinessProbe")}
    for endpoint in k8s_documents()["ServiceMonitor"]["spec"]["endpoints"]:
        paths["k8s ServiceMonitor"] = endpoint["path"]
    return paths


def test_manifest_probe_and_scrape_paths_answer_200_on_a_ready_server(
    container_like_server: RunningServer,
) -> None:
    with container_like_server.client(timeout=10) as client:
        for source, path in _probe_paths().items():
            response = client.get(path)
            assert response.status_code == 200, (source, path, response.text)


def test_compose_and_image_healthcheck_commands_pass_against_a_ready_server(
    container_like_server: RunningServer,
) -> None:
    _options, image_command = dockerfile_healthcheck()
    commands = {"Dockerfile HEALTHCHECK": image_command}
    for name in ("api", "api-cpu"):
        test = compose()["services"][name]["healthcheck"]["test"]
        assert test[0] == "CMD"
        commands[f"compose {name}"] = test[1:]
    for source, argv in commands.items():
        result = _run_healthcheck(argv, container_like_server.port)
        assert result.returncode == 0, (source, result.stderr)


def test_healthcheck_command_fails_when_nothing_listens() -> None:
    _options, argv = dockerfile_healthcheck()
    result = _run_healthcheck(argv, free_port())
    assert result.returncode == 1 and "unhealthy" in result.stderr


def test_unloadable_model_fails_the_healthcheck_then_the_master_exits_4(
    tmp_path: Path,
) -> None:
    """A bad model config: the container never turns healthy, and once every worker has
    failed SLEEPWELL_LOAD_ATTEMPTS times the master exits 4, so Docker's, systemd's or the
    kubelet's restart policy (with its own backoff) takes over, visibly."""
    _options, argv = dockerfile_healthcheck()
    bad = {"SLEEPWELL_MODEL": str(tmp_path / "no-such-model"), "SLEEPWELL_LOAD_ATTEMPTS": "2",
           "SLEEPWELL_LOAD_BACKOFF_S": "1"}
    with gunicorn_server(extra_env=bad, wait=False) as server:
        result = _run_healthcheck(argv, server.port)
        exit_code = server.process.wait(120)
        log = server.log()
    assert result.returncode == 1, result.stderr
    assert exit_code == 4, log[-3000:]
    assert "failed to load its model 2 times in a row" in log


def test_metrics_expose_the_series_the_hpa_adapter_reads(
    container_like_server: RunningServer,
) -> None:
    text = httpx.get(f"{container_like_server.url}/metrics", timeout=10).text
    for rule in load_yaml(ADAPTER_VALUES)["rules"]["custom"]:
        series = rule["seriesQuery"].split("{", 1)[0].strip("'")
        lines = [line for line in text.splitlines() if line.startswith(series)]
        assert lines, f"{series} is not exported"
        if 'status="rejected"' in rule["seriesQuery"]:
            assert any('status="rejected"' in line for line in lines), lines


def test_compose_log_file_setting_writes_json_logs_into_the_logs_directory(
    container_like_server: RunningServer,
) -> None:
    log_file = Path(container_like_server.env["SLEEPWELL_LOG_FILE"])
    with container_like_server.client(timeout=10) as client:
        assert client.get("/v1/models").status_code == 200
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and not (log_file.exists() and log_file.stat().st_size):
        time.sleep(0.1)
    assert log_file.exists() and log_file.stat().st_size > 0
    assert log_file.read_text().lstrip().startswith("{")


def test_metrics_dir_on_shm_holds_the_worker_files(
    container_like_server: RunningServer,
) -> None:
    metrics = Path(container_like_server.env["PROMETHEUS_MULTIPROC_DIR"])
    assert any(metrics.glob("*.db")), list(metrics.iterdir())
