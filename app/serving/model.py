"""Choosing a device and dtype, and loading any diffusers text-to-image pipeline."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from app.errors import ServiceUnavailable
from app.serving.budget import MemoryBudget
from app.serving.demo_model import ensure_demo_model
from app.serving.device_check import (
    TorchBuild,
    cpu_only_torch_problem,
    gpu_evidence,
    unreachable_gpu_problem,
)
from app.settings import DeviceChoice, DtypeChoice, Settings, is_local_path

logger = logging.getLogger("sleepwell.model")

_DTYPES = {
    DtypeChoice.FLOAT32: torch.float32,
    DtypeChoice.FLOAT16: torch.float16,
    DtypeChoice.BFLOAT16: torch.bfloat16,
}


class ModelLoadError(ServiceUnavailable):
    code = "model_load_failed"


class DeviceUnavailable(ModelLoadError):
    code = "device_unavailable"


def resolve_device(settings: Settings) -> torch.device:
    choice = settings.device
    if choice is DeviceChoice.CPU:
        return torch.device("cpu")
    if torch.cuda.is_available():
        # Each worker sees exactly one GPU (CUDA_VISIBLE_DEVICES is set per slot).
        return torch.device("cuda", 0)
    build = TorchBuild(torch.__version__, torch.version.cuda, torch.version.hip)
    evidence = gpu_evidence(settings, _visible_ids(settings.cuda_visible_devices))
    if build.drives_gpus:
        problem = unreachable_gpu_problem(build, evidence, choice, settings.cuda_visible_devices)
    else:
        problem = cpu_only_torch_problem(build, evidence, choice)
    if choice is DeviceChoice.CUDA:
        raise DeviceUnavailable(problem)
    # Under gunicorn the master has already said it once for a CPU-only torch (plan_gpus);
    # a GPU build that finds no GPU is only seen here, after the fork.
    said_by_master = settings.worker_slot is not None and not build.drives_gpus
    if evidence is not None and not said_by_master:
        logger.warning(problem)
    return torch.device("cpu")


def _visible_ids(cuda_visible_devices: str | None) -> list[str]:
    return [part for part in (cuda_visible_devices or "").split(",") if part.strip()]


def resolve_dtype(choice: DtypeChoice, device: torch.device) -> torch.dtype:
    if choice is not DtypeChoice.AUTO:
        return _DTYPES[choice]
    # fp16 halves memory and doubles speed on GPUs; CPUs lack fast fp16 kernels.
    return torch.float16 if device.type == "cuda" else torch.float32


@dataclass(frozen=True)
class LoadedModel:
    pipeline: Any
    name: str
    source: str
    device: torch.device
    dtype: torch.dtype
    native_width: int
    native_height: int
    load_seconds: float
    # What a request may cost here; mutable, it learns from OOMs (see MemoryBudget).
    budget: MemoryBudget = field(default_factory=MemoryBudget)
    warmup_seconds_per_step: float | None = None  # None: warm-up was off


def model_source(settings: Settings) -> str:
    if settings.model is None:
        return str(ensure_demo_model(settings.demo_model_dir))
    return settings.model


def native_size(pipeline: Any) -> tuple[int, int]:
    unet = getattr(pipeline, "unet", None) or getattr(pipeline, "transformer", None)
    sample_size = getattr(getattr(unet, "config", None), "sample_size", None) or 64
    if isinstance(sample_size, (list, tuple)):
        sample_size = sample_size[0]
    scale = int(getattr(pipeline, "vae_scale_factor", 8))
    side = int(sample_size) * scale
    return side, side


def load_model(settings: Settings) -> LoadedModel:
    """Load, move to the device and warm up. Runs on the inference thread, never the loop."""
    from diffusers import AutoPipelineForText2Image

    started = time.monotonic()
    if settings.torch_threads is not None:
        # More threads than cores (several workers on one box) makes OpenMP spin-wait for
        # descheduled threads: every step slows down many times over.
        torch.set_num_threads(settings.torch_threads)
    device = resolve_device(settings)
    dtype = resolve_dtype(settings.dtype, device)
    source = model_source(settings)
    if is_local_path(source) and not Path(source).expanduser().is_dir():
        # Never ask the hub for a path: say what is wrong, at once, offline.
        raise ModelLoadError(f"could not load model directory {source!r}: it does not exist")
    logger.info("loading model %s on %s as %s", source, device, dtype)
    try:
        pipeline = AutoPipelineForText2Image.from_pretrained(source, dtype=dtype)
    except Exception as exc:  # diffusers raises many types for a bad path or id
        kind = "directory" if Path(source).exists() else "path or hub id"
        raise ModelLoadError(f"could not load model {kind} {source!r}: {exc}") from exc
    pipeline = pipeline.to(device)
    pipeline.set_progress_bar_config(disable=True)
    width, height = native_size(pipeline)
    warmup_per_step = _warm_up(pipeline, width, height) if settings.warmup else None
    budget = MemoryBudget(vram_bytes=vram_budget(settings, device))
    if warmup_per_step is not None:
        budget.record_success(width * height)
    return LoadedModel(
        budget=budget,
        warmup_seconds_per_step=warmup_per_step,
        pipeline=pipeline,
        name=settings.served_model_name,
        source=source,
        device=device,
        dtype=dtype,
        native_width=width,
        native_height=height,
        load_seconds=time.monotonic() - started,
    )


def vram_budget(settings: Settings, device: torch.device) -> int | None:
    """GPU bytes one request may use: configured, or 90% of what is free right now.

    Call it when only the serving model is resident (after a swap has freed the old one),
    or the budget is measured too small.
    """
    if device.type != "cuda":
        return None
    if settings.vram_budget_gb is not None:
        return int(settings.vram_budget_gb * 1024**3)
    torch.cuda.empty_cache()
    free, _total = torch.cuda.mem_get_info(device)
    return int(free * 0.9)  # keep 10% for fragmentation


_WARMUP_STEPS = 2


def _warm_up(pipeline: Any, width: int, height: int) -> float:
    """One small generation; returns the seconds its last step took (the first estimate of
    speed, which the playground's size offer and Retry-After start from)."""
    # The first call pays for kernel selection and allocator growth; do it before READY.
    # That first step is no measure of speed (on a CPU, 40x a later one): time the last.
    step_ends: list[float] = []

    def note_step(_pipe: Any, _step: int, _timestep: Any, kwargs: dict[str, Any]) -> Any:
        step_ends.append(time.monotonic())
        return kwargs

    started = time.monotonic()
    with torch.inference_mode():
        pipeline(prompt="warm-up", width=width, height=height,
                 num_inference_steps=_WARMUP_STEPS, callback_on_step_end=note_step)
    seconds = time.monotonic() - started
    logger.info("warm-up generation took %.2fs", seconds)
    if len(step_ends) >= 2:
        return step_ends[-1] - step_ends[-2]
    return seconds / _WARMUP_STEPS
