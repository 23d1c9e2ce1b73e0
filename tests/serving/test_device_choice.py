"""A torch that cannot use the machine's GPU is loud, never silent (issue 20).

This box has a CPU-only torch and no NVIDIA driver; a driver is faked at its boundary by
pointing SLEEPWELL_NVIDIA_DRIVER_FILE at a file of the test's own. With
SLEEPWELL_DEVICE=auto the model serves on the CPU and one WARNING names the fix; with
SLEEPWELL_DEVICE=cuda the service refuses to start with that message.
"""

from __future__ import annotations

import json
import logging
import subprocess
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import torch

from app.serving.device_check import (
    INSTALL_CUDA_TORCH,
    TorchBuild,
    installed_torch_build,
    plan_gpus,
)
from app.serving.engine import Engine
from app.serving.model import DeviceUnavailable
from app.settings import Settings
from tests.support.server import gunicorn_server

CPU_TORCH = TorchBuild("2.13.0+cpu")
CUDA_TORCH = TorchBuild("2.13.0+cu128", cuda="12.8")


@pytest.fixture
def driver_file(tmp_path: Path) -> Path:
    """A stand-in for /proc/driver/nvidia/version: an NVIDIA driver is 'visible'."""
    path = tmp_path / "nvidia-version"
    path.write_text("NVRM version: NVIDIA UNIX x86_64 Kernel Module  570.86.15\n")
    return path


class Recorder(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


@pytest.fixture
def model_log() -> Iterator[list[logging.LogRecord]]:
    """Records of the model logger, whatever handlers other tests configured."""
    recorder = Recorder()
    logger = logging.getLogger("sleepwell.model")
    logger.addHandler(recorder)
    try:
        yield recorder.records
    finally:
        logger.removeHandler(recorder)


def settings_for(device: str, driver: Path, demo_model_dir: Path) -> Settings:
    return Settings(device=device, nvidia_driver_file=driver, demo_model_dir=demo_model_dir,
                    warmup=False, cuda_visible_devices=None, worker_slot=None)


def test_installed_torch_build_read_without_import_matches_torch() -> None:
    build = installed_torch_build()
    assert build is not None
    assert build.version == torch.__version__
    assert build.cuda == torch.version.cuda
    assert build.drives_gpus == (torch.version.cuda is not None or torch.version.hip is not None)


def test_plan_gpus_cpu_torch_with_driver_pins_no_gpu_and_warns(driver_file: Path) -> None:
    plan = plan_gpus(Settings(device="auto", nvidia_driver_file=driver_file), ["0"], CPU_TORCH)
    assert plan.gpu_ids == []
    assert plan.warning is not None
    assert INSTALL_CUDA_TORCH in plan.warning
    assert str(driver_file) in plan.warning


def test_plan_gpus_cpu_torch_nvml_gpus_only_warns(tmp_path: Path) -> None:
    settings = Settings(device="auto", nvidia_driver_file=tmp_path / "absent")
    plan = plan_gpus(settings, ["0", "1"], CPU_TORCH)
    assert plan.gpu_ids == []
    assert plan.warning is not None
    assert "GPUs 0,1" in plan.warning


def test_plan_gpus_cpu_torch_no_gpu_is_quiet(tmp_path: Path) -> None:
    plan = plan_gpus(Settings(device="auto", nvidia_driver_file=tmp_path / "absent"), [],
                     CPU_TORCH)
    assert plan.gpu_ids == []
    assert plan.warning is None


def test_plan_gpus_device_cuda_cpu_torch_refuses(driver_file: Path) -> None:
    settings = Settings(device="cuda", nvidia_driver_file=driver_file)
    with pytest.raises(SystemExit, match="refuses to start") as refused:
        plan_gpus(settings, ["0"], CPU_TORCH)
    assert INSTALL_CUDA_TORCH in str(refused.value)


def test_plan_gpus_gpu_torch_keeps_visible_gpus(driver_file: Path) -> None:
    plan = plan_gpus(Settings(device="auto", nvidia_driver_file=driver_file), ["2", "3"],
                     CUDA_TORCH)
    assert plan.gpu_ids == ["2", "3"]
    assert plan.warning is None


def test_plan_gpus_device_cpu_claims_no_gpu(driver_file: Path) -> None:
    plan = plan_gpus(Settings(device="cpu", nvidia_driver_file=driver_file), ["0"], CUDA_TORCH)
    assert plan.gpu_ids == []
    assert plan.warning is None


def test_engine_device_cuda_without_cuda_fails_with_the_fix(
    driver_file: Path, demo_model_dir: Path
) -> None:
    engine = Engine(settings_for("cuda", driver_file, demo_model_dir))
    with pytest.raises(DeviceUnavailable, match="SLEEPWELL_DEVICE=cuda") as failed:
        engine.load()
    assert INSTALL_CUDA_TORCH in str(failed.value)
    assert engine.model is None


def test_engine_auto_visible_driver_warns_once_and_serves_on_cpu(
    driver_file: Path, demo_model_dir: Path, model_log: list[logging.LogRecord]
) -> None:
    model = Engine(settings_for("auto", driver_file, demo_model_dir)).load()
    assert model.device.type == "cpu"
    warnings = [record for record in model_log if record.levelno >= logging.WARNING]
    assert len(warnings) == 1, [record.getMessage() for record in warnings]
    assert "GPU NOT USED" in warnings[0].getMessage()
    assert INSTALL_CUDA_TORCH in warnings[0].getMessage()


def test_engine_auto_no_driver_serves_on_cpu_quietly(
    tmp_path: Path, demo_model_dir: Path, model_log: list[logging.LogRecord]
) -> None:
    model = Engine(settings_for("auto", tmp_path / "absent", demo_model_dir)).load()
    assert model.device.type == "cpu"
    assert [record for record in model_log if record.levelno >= logging.WARNING] == []


def test_gunicorn_device_cuda_cpu_torch_refuses_to_start(driver_file: Path) -> None:
    env = {"SLEEPWELL_DEVICE": "cuda", "SLEEPWELL_NVIDIA_DRIVER_FILE": str(driver_file)}
    with gunicorn_server(env, wait=False) as server:
        try:
            code = server.process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            pytest.fail(f"gunicorn kept running:\n{server.log()[-3000:]}")
        assert code != 0
        assert "SLEEPWELL_DEVICE=cuda" in server.log()
        assert INSTALL_CUDA_TORCH in server.log()
        assert "Booting worker" not in server.log()


def test_gunicorn_auto_visible_driver_warns_once_in_json_and_claims_no_gpu(
    driver_file: Path,
) -> None:
    env = {"SLEEPWELL_DEVICE": "auto", "SLEEPWELL_NVIDIA_DRIVER_FILE": str(driver_file)}
    with gunicorn_server(env, workers=2) as server:
        device = httpx.get(server.url + "/health", timeout=10).json()["device"]
        log = server.log()
    lines = [json.loads(line) for line in log.splitlines() if "GPU NOT USED" in line]
    assert len(lines) == 1, log[-4000:]
    assert lines[0]["level"] == "WARNING"
    assert INSTALL_CUDA_TORCH in lines[0]["message"]
    assert device == "cpu"
    slots = [json.loads(line)["message"] for line in log.splitlines() if " has slot " in line]
    assert len(slots) >= 2, log[-4000:]  # one per worker (more if one was respawned)
    assert all(message.endswith("(GPU none)") for message in slots), slots
