"""docker-compose.yml: valid against the compose spec, and wired the way the app works."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from app.settings import Settings
from tests.deploy.manifests import (
    COMPOSE_FILE,
    ENV_EXAMPLE,
    compose,
    dockerfile_env,
    dockerfile_healthcheck,
    duration_s,
)
from tests.support.server import VENV_BIN


def _api_services() -> dict[str, dict]:
    services = compose()["services"]
    return {name: services[name] for name in ("api", "api-cpu")}


def _docker_compose_command() -> list[str] | None:
    """docker-compose v1/v2 when installed: $DOCKER_COMPOSE, docker-compose, docker compose."""
    configured = os.environ.get("DOCKER_COMPOSE")
    if configured:
        return configured.split()
    if shutil.which("docker-compose"):
        return ["docker-compose"]
    if shutil.which("docker"):
        probe = subprocess.run(["docker", "compose", "version"], capture_output=True,
                               timeout=30, check=False)
        if probe.returncode == 0:
            return ["docker", "compose"]
    return None


def test_compose_file_validates_against_compose_spec() -> None:
    result = subprocess.run(
        [str(VENV_BIN / "check-jsonschema"), "--builtin-schema", "vendor.compose-spec",
         str(COMPOSE_FILE)],
        capture_output=True, text=True, timeout=120, check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_compose_config_accepted_by_docker_compose(tmp_path: Path) -> None:
    command = _docker_compose_command()
    if command is None:
        pytest.skip("no docker-compose here: the PyPI 1.29.2 needs PyYAML 5 (it does not "
                    "build on Python 3.11 without pinning Cython<3), so it cannot go in "
                    ".venv; set DOCKER_COMPOSE or install Debian's docker-compose")
    shutil.copy(COMPOSE_FILE, tmp_path / "docker-compose.yml")
    shutil.copy(ENV_EXAMPLE, tmp_path / ".env")  # the documented first step
    result = subprocess.run(
        [*command, "--profile", "cpu", "--profile", "tunnel", "config"], cwd=tmp_path,
        capture_output=True, text=True, timeout=120, check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    rendered = yaml.safe_load(result.stdout)
    assert {"api", "api-cpu", "tunnel"} <= set(rendered["services"])
    assert rendered["services"]["api"]["environment"]["SLEEPWELL_DEVICE"] == "cuda"


def test_compose_api_reserves_gpus_and_restarts_unless_stopped() -> None:
    api = compose()["services"]["api"]
    assert api["restart"] == "unless-stopped"
    (device,) = api["deploy"]["resources"]["reservations"]["devices"]
    assert device["driver"] == "nvidia" and "gpu" in device["capabilities"]
    assert device["count"] in ("all", 1) or int(device["count"]) >= 1
    assert "profiles" not in api, "the GPU service is the default one"


def test_compose_cpu_profile_runs_without_gpu_reservation() -> None:
    cpu = compose()["services"]["api-cpu"]
    assert cpu["profiles"] == ["cpu"]
    assert "deploy" not in cpu
    assert cpu["environment"]["SLEEPWELL_DEVICE"] == "cpu"
    assert cpu["build"]["args"]["TORCH_INDEX_URL"].endswith("/whl/cpu")
    assert not cpu["build"]["args"]["BASE_IMAGE"].startswith("nvidia/")
    assert "api" in cpu["networks"]["default"]["aliases"], "the tunnel targets http://api"
    assert cpu["restart"] == "unless-stopped"


@pytest.mark.parametrize("service", ["api", "api-cpu"])
def test_compose_healthcheck_is_the_image_healthcheck_with_long_start(service: str) -> None:
    check = _api_services()[service]["healthcheck"]
    _options, command = dockerfile_healthcheck()
    assert check["test"] == ["CMD", *command]
    assert duration_s(check["start_period"]) >= 300
    assert duration_s(check["timeout"]) <= duration_s(check["interval"])


@pytest.mark.parametrize("service", ["api", "api-cpu"])
def test_compose_stop_grace_covers_gunicorn_graceful_timeout(service: str) -> None:
    grace = duration_s(_api_services()[service]["stop_grace_period"])
    graceful = Settings.model_fields["graceful_timeout_s"].default
    env = _api_services()[service]["environment"]
    graceful = float(env.get("SLEEPWELL_GRACEFUL_TIMEOUT_S", graceful))
    assert grace >= graceful + 10, (grace, graceful)


@pytest.mark.parametrize("service", ["api", "api-cpu"])
def test_compose_volumes_hold_model_cache_and_logs(service: str) -> None:
    spec = _api_services()[service]
    targets = {volume.split(":")[1] for volume in spec["volumes"]}
    env = spec["environment"]
    assert env["HF_HOME"] in targets
    assert env["HF_HOME"] == dockerfile_env()["HF_HOME"]
    assert str(Path(env["SLEEPWELL_LOG_FILE"]).parent) in targets
    named = {volume.split(":")[0] for volume in spec["volumes"]}
    assert named <= set(compose()["volumes"])


@pytest.mark.parametrize("service", ["api", "api-cpu"])
def test_compose_port_and_environment_match_the_app(service: str) -> None:
    spec = _api_services()[service]
    env = spec["environment"]
    assert env["SLEEPWELL_PORT"] == "8000" == str(Settings.model_fields["port"].default)
    assert env["SLEEPWELL_HOST"] == "0.0.0.0"
    (port,) = spec["ports"]
    assert port.rsplit(":", 1)[1] == env["SLEEPWELL_PORT"]
    assert env["PROMETHEUS_MULTIPROC_DIR"].startswith("/dev/shm/")
    assert spec["env_file"] == ".env"
    assert spec["init"] is True, "tini reaps and forwards SIGTERM to gunicorn"


def test_compose_tunnel_is_optional_and_takes_its_token_from_the_environment() -> None:
    tunnel = compose()["services"]["tunnel"]
    assert tunnel["profiles"] == ["tunnel"]
    assert re.fullmatch(r"\$\{[A-Z_]+(:-)?\}", tunnel["environment"]["TUNNEL_TOKEN"])
    assert ":latest" not in tunnel["image"] and ":" in tunnel["image"]
    assert "depends_on" not in tunnel, "it must work with either api or api-cpu"
