"""Can the installed torch use the GPU this machine has? Asked before any model loads.

A CPU-only torch on a GPU box used to serve on the CPU in silence while gunicorn logged
"slot 0 (GPU 0)" (issue 20). Now the gunicorn master asks first, without importing torch
(nothing may touch CUDA before it forks): it reads the build from torch's ``version.py``,
pins no GPU to a worker that cannot use it, warns once, and refuses to start when
SLEEPWELL_DEVICE=cuda. A worker asks torch itself (``app.serving.model.resolve_device``)
and words its warning or failure with the same messages.

An NVIDIA driver counts as visible when its ``/proc`` file exists
(SLEEPWELL_NVIDIA_DRIVER_FILE) or NVML counts a GPU.
"""

from __future__ import annotations

import ast
import importlib.util
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from app.settings import DeviceChoice, Settings

# The CUDA build `make install` picks when it sees a driver (Makefile TORCH_CUDA).
DEFAULT_CUDA_BUILD = "cu128"
INSTALL_CUDA_TORCH = f"make install TORCH={DEFAULT_CUDA_BUILD}"


@dataclass(frozen=True)
class TorchBuild:
    version: str
    cuda: str | None = None
    hip: str | None = None  # ROCm builds drive AMD GPUs through torch.cuda

    @property
    def drives_gpus(self) -> bool:
        return self.cuda is not None or self.hip is not None


def installed_torch_build() -> TorchBuild | None:
    """The installed torch's build, read from its ``version.py`` without importing torch."""
    spec = importlib.util.find_spec("torch")
    if spec is None or not spec.submodule_search_locations:
        return None
    version_file = Path(next(iter(spec.submodule_search_locations))) / "version.py"
    try:
        tree = ast.parse(version_file.read_text(encoding="utf-8"))
    except (OSError, SyntaxError, ValueError):
        return None
    values: dict[str, object] = {}
    for name, expression in _assignments(tree):
        try:
            values[name] = ast.literal_eval(expression)
        except ValueError:  # not a literal: not one of the facts we read
            continue
    return TorchBuild(version=str(values.get("__version__", "unknown")),
                      cuda=_optional_str(values.get("cuda")), hip=_optional_str(values.get("hip")))


def _assignments(tree: ast.Module) -> Iterator[tuple[str, ast.expr]]:
    """``name = value`` and ``name: type = value`` at the top of a module."""
    for node in tree.body:
        if isinstance(node, ast.Assign) and len(node.targets) == 1:
            target, value = node.targets[0], node.value
        elif isinstance(node, ast.AnnAssign) and node.value is not None:
            target, value = node.target, node.value
        else:
            continue
        if isinstance(target, ast.Name):
            yield target.id, value


def _optional_str(value: object) -> str | None:
    return str(value) if value is not None else None


def gpu_evidence(settings: Settings, gpu_ids: list[str]) -> str | None:
    """What says this machine has an NVIDIA GPU, for a message; None when nothing does."""
    if settings.nvidia_driver_file.exists():
        return f"an NVIDIA driver is loaded ({settings.nvidia_driver_file})"
    if gpu_ids:
        return f"GPUs {','.join(gpu_ids)} are visible"
    return None


def cpu_only_torch_problem(build: TorchBuild, evidence: str | None, choice: DeviceChoice) -> str:
    """Why a torch without GPU support cannot serve on the GPU, and the fix."""
    seen = f"; {evidence}" if evidence else ""
    if choice is DeviceChoice.CUDA:
        return (f"Sleepwell refuses to start: SLEEPWELL_DEVICE=cuda, but torch {build.version} "
                f"is a CPU-only build{seen}. Fix: install a CUDA build with "
                f"`{INSTALL_CUDA_TORCH}` (docs/gpu.md), or set SLEEPWELL_DEVICE=auto to serve "
                "on the CPU.")
    return (f"GPU NOT USED: torch {build.version} is a CPU-only build{seen}; the model runs on "
            f"the CPU, many times slower. Fix: `{INSTALL_CUDA_TORCH}` (docs/gpu.md) installs "
            "the CUDA build; or set SLEEPWELL_DEVICE=cpu to serve on the CPU on purpose.")


def unreachable_gpu_problem(build: TorchBuild, evidence: str | None, choice: DeviceChoice,
                            cuda_visible_devices: str | None) -> str:
    """Why a torch built for GPUs still finds none, and what to check."""
    lead = ("Sleepwell refuses to start: SLEEPWELL_DEVICE=cuda, but" if choice is DeviceChoice.CUDA
            else "GPU NOT USED:")
    seen = evidence or "no NVIDIA driver is visible"
    return (f"{lead} torch {build.version} (CUDA {build.cuda or build.hip}) finds no usable GPU; "
            f"{seen}; CUDA_VISIBLE_DEVICES={cuda_visible_devices!r}. Check that `nvidia-smi` "
            "works here and that a container was given the GPU (docker run --gpus all); if the "
            "driver is older than this CUDA build needs, install an older build, e.g. "
            "`make install TORCH=cu126` (docs/gpu.md). SLEEPWELL_DEVICE=cpu serves on the CPU.")


@dataclass(frozen=True)
class GpuPlan:
    """The GPUs gunicorn pins workers to, and the warning to log once when it starts."""

    gpu_ids: list[str]
    warning: str | None = None


def plan_gpus(settings: Settings, visible: list[str], build: TorchBuild | None) -> GpuPlan:
    """Only GPUs torch can use get workers; SystemExit when SLEEPWELL_DEVICE=cuda cannot work.

    A torch built for GPUs keeps every visible GPU: only a worker can ask CUDA (after the
    fork) whether one is usable, and it says so itself.
    """
    if settings.device is DeviceChoice.CPU:
        return GpuPlan([])
    if build is None or build.drives_gpus:
        return GpuPlan(visible)
    evidence = gpu_evidence(settings, visible)
    if settings.device is DeviceChoice.CUDA:
        raise SystemExit(cpu_only_torch_problem(build, evidence, settings.device))
    warning = cpu_only_torch_problem(build, evidence, settings.device) if evidence else None
    return GpuPlan([], warning)
