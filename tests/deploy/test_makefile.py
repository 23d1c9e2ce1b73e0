"""The Makefile picks the torch build for the machine and serves from runtime deps (issue 20).

``make -n`` prints what ``make`` would run without running it. The machine is faked at its
boundary: PATH holds only a temp directory (with or without a fake ``nvidia-smi``) and
NVIDIA_DRIVER_FILE names a file that exists or not, so the answer is the same on a GPU box.
The venv is a temp directory, so the checkout's own stamps never count.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.support.server import ROOT

MAKE = shutil.which("make")
CPU_INSTALL = "pip install -q torch==2.13.0 ;"
CUDA_INDEX = "--index-url https://download.pytorch.org/whl/"


def fake_machine(tmp_path: Path, nvidia_smi_exit: int | None, driver_file: bool) -> dict[str, str]:
    """PATH and NVIDIA_DRIVER_FILE of a machine with or without an NVIDIA driver."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    if nvidia_smi_exit is not None:
        smi = bin_dir / "nvidia-smi"
        smi.write_text(f"#!/bin/sh\nexit {nvidia_smi_exit}\n")
        smi.chmod(0o755)
    version_file = tmp_path / "nvidia-version"
    if driver_file:
        version_file.write_text("NVRM version: NVIDIA UNIX x86_64 Kernel Module  570.86.15\n")
    return {"PATH": str(bin_dir), "NVIDIA_DRIVER_FILE": str(version_file)}


def make_dry_run(tmp_path: Path, target: str, machine: dict[str, str], *args: str) -> str:
    assert MAKE is not None, "make is required to build and run Sleepwell"
    # The caller's own make variables (a `make test` run, an exported TORCH) must not count.
    inherited = ("TORCH", "TORCH_CUDA", "MAKEFLAGS", "MAKELEVEL", "MFLAGS")
    env = {key: value for key, value in os.environ.items() if key not in inherited}
    env["PATH"] = machine["PATH"]
    result = subprocess.run(
        [MAKE, "-n", "-C", str(ROOT), target, f"VENV={tmp_path / 'venv'}",
         f"NVIDIA_DRIVER_FILE={machine['NVIDIA_DRIVER_FILE']}", *args],
        env=env, capture_output=True, text=True, timeout=60, check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout


def test_makefile_no_driver_installs_cpu_torch(tmp_path: Path) -> None:
    commands = make_dry_run(tmp_path, "install", fake_machine(tmp_path, None, False))
    assert CPU_INSTALL in commands
    assert CUDA_INDEX not in commands
    assert f"touch {tmp_path / 'venv'}/.torch-cpu" in commands


def test_makefile_failing_nvidia_smi_installs_cpu_torch(tmp_path: Path) -> None:
    # nvidia-smi installed but no driver loaded ("NVIDIA-SMI has failed"): no usable GPU.
    commands = make_dry_run(tmp_path, "install", fake_machine(tmp_path, 9, False))
    assert CPU_INSTALL in commands
    assert CUDA_INDEX not in commands


@pytest.mark.parametrize(("nvidia_smi_exit", "driver_file"), [(0, False), (None, True)])
def test_makefile_visible_driver_installs_cuda_torch(
    tmp_path: Path, nvidia_smi_exit: int | None, driver_file: bool
) -> None:
    commands = make_dry_run(tmp_path, "install",
                            fake_machine(tmp_path, nvidia_smi_exit, driver_file))
    assert f"pip install -q torch==2.13.0 {CUDA_INDEX}cu128" in commands
    assert f"touch {tmp_path / 'venv'}/.torch-cu128" in commands


def test_makefile_torch_cpu_overrides_a_visible_driver(tmp_path: Path) -> None:
    commands = make_dry_run(tmp_path, "install", fake_machine(tmp_path, 0, True), "TORCH=cpu")
    assert CPU_INSTALL in commands
    assert CUDA_INDEX not in commands


def test_makefile_named_cuda_build_installs_it_without_a_driver(tmp_path: Path) -> None:
    commands = make_dry_run(tmp_path, "run", fake_machine(tmp_path, None, False), "TORCH=cu126")
    assert f"torch==2.13.0 {CUDA_INDEX}cu126" in commands
    assert "grep -qx 'Version: 2.13.0+cu126'" in commands


def test_makefile_torch_cuda_sets_the_build_a_driver_gets(tmp_path: Path) -> None:
    commands = make_dry_run(tmp_path, "install", fake_machine(tmp_path, 0, False),
                            "TORCH_CUDA=cu126")
    assert f"{CUDA_INDEX}cu126" in commands


def test_makefile_unknown_build_name_refuses(tmp_path: Path) -> None:
    assert MAKE is not None
    result = subprocess.run(
        [MAKE, "-n", "-C", str(ROOT), "install", f"VENV={tmp_path / 'venv'}", "TORCH=gpu"],
        capture_output=True, text=True, timeout=60, check=False,
    )
    assert result.returncode != 0
    assert "TORCH=gpu: name one build" in result.stderr


def test_makefile_installed_build_is_kept_until_another_is_named(tmp_path: Path) -> None:
    venv = tmp_path / "venv"
    venv.mkdir()
    for stamp in (".torch-cpu", ".installed-runtime"):  # newer than pyproject.toml
        (venv / stamp).touch()
    machine = fake_machine(tmp_path, None, False)
    assert "pip" not in make_dry_run(tmp_path, "install", machine)
    switched = make_dry_run(tmp_path, "install", machine, "TORCH=cu128")
    # The other build's stamp goes, the installed torch is replaced, the app reinstalled.
    assert f"rm -f {venv}/.torch-*" in switched
    assert "pip uninstall -q -y torch" in switched
    assert f"{CUDA_INDEX}cu128" in switched
    assert "pip install -q -e ." in switched


@pytest.mark.parametrize("target", ["install", "run"])
def test_makefile_serving_targets_install_runtime_dependencies_only(
    tmp_path: Path, target: str
) -> None:
    commands = make_dry_run(tmp_path, target, fake_machine(tmp_path, None, False))
    assert "pip install -q -e .\n" in commands
    assert "[dev]" not in commands


@pytest.mark.parametrize("target", ["test", "lint", "typecheck", "bench"])
def test_makefile_developer_targets_install_the_dev_extra(tmp_path: Path, target: str) -> None:
    commands = make_dry_run(tmp_path, target, fake_machine(tmp_path, None, False))
    assert "pip install -q -e '.[dev]'" in commands
