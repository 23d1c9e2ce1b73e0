"""How many gunicorn workers: one per GPU; on a CPU box two, as cores and memory allow.

Two CPU workers with adaptive threads (app/serving/cpu_share.py) answer a lone image as
fast as one worker with every core and serve about 1.1x the raw loop under load, where one
worker serves 0.87x (bench/throughput.py, docs/performance.md). But every worker holds
its own copy of the model, so the second costs a second copy.

The master decides before any worker forks and before the model is loaded (it never
imports torch), so the model's size is taken from its weight files on disk: one copy of
what diffusers loads (safetensors before pickles, no ``.fp16.``-style variant when plain
files exist). That is the resident size when the files hold the dtype loaded (CPU:
float32); half-precision files loaded as float32 take twice that, which the headroom
below does not cover: set ``SLEEPWELL_WORKERS`` there.

A worker is estimated at its weights, a quarter more for activations, and
``RUNTIME_BYTES`` of torch, diffusers and Python (a demo-model worker measured 565 MiB
RSS, 2 workers, after a generation). Workers are sized to fit in 90 % of the memory this
process may use (app/serving/host_limits.py): the master, page cache and an embedded
PostgreSQL share it. Never fewer than one.
"""

from __future__ import annotations

import re
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

from app.serving.host_limits import PROC, usable_cores, usable_memory_bytes
from app.settings import Settings, is_local_path

CPU_DEFAULT_WORKERS = 2
RUNTIME_BYTES = 600 * 2**20
ACTIVATION_SHARE = 0.25
MEMORY_USED_SHARE = 0.9
_WEIGHT_SUFFIXES = frozenset({".safetensors", ".bin", ".pt", ".pth", ".ckpt"})
_VARIANT = re.compile(r"\.(fp16|bf16|non_ema|ema_only)\.")


@dataclass(frozen=True)
class WorkerPlan:
    """The chosen count and what it was chosen from, for the master's startup log."""

    workers: int
    why: str
    cores: int
    memory_bytes: int | None
    model_bytes: int | None

    def log_fields(self) -> dict[str, object]:
        return {"workers": self.workers, "workers_why": self.why, "usable_cores": self.cores,
                "usable_memory_bytes": self.memory_bytes,
                "model_weight_bytes": self.model_bytes}


def plan_workers(settings: Settings, gpu_ids: list[str], proc: Path = PROC) -> WorkerPlan:
    cores = usable_cores(settings.cgroup_root, proc)
    memory = usable_memory_bytes(settings.cgroup_root, proc)
    model = model_weight_bytes(settings)

    def plan(workers: int, why: str) -> WorkerPlan:
        return WorkerPlan(workers, why, cores, memory, model)

    if settings.workers is not None:
        return plan(settings.workers, "SLEEPWELL_WORKERS")
    if gpu_ids:
        return plan(len(gpu_ids), "one per GPU")
    by_cores = min(CPU_DEFAULT_WORKERS, cores)
    if model is None or memory is None:
        unknown = "model size" if model is None else "usable memory"
        return plan(by_cores, f"{by_cores} by {cores} usable cores; {unknown} unknown")
    per_worker = worker_bytes(model)
    fits = int(memory * MEMORY_USED_SHARE // per_worker)
    estimate = (f"{_size(per_worker)} per worker estimated from {_size(model)} of weights, "
                f"{_size(memory)} usable, {cores} usable cores")
    if fits < 1:
        return plan(1, f"1 although memory fits none: {estimate}")
    if fits < by_cores:
        return plan(fits, f"{fits} by memory: {estimate}")
    return plan(by_cores, f"{by_cores} by cores, memory fits {fits}: {estimate}")


def worker_bytes(model_bytes: int) -> int:
    return int(model_bytes * (1 + ACTIVATION_SHARE)) + RUNTIME_BYTES


def model_weight_bytes(settings: Settings) -> int | None:
    """Bytes of the weight files the workers will load; None when they are not on disk yet
    (a hub id not downloaded, the demo model not built)."""
    source = _model_directory(settings)
    if source is None or not source.exists():
        return None
    if source.is_file():  # a single-file checkpoint
        return source.stat().st_size
    by_component: dict[Path, list[Path]] = defaultdict(list)
    for path in source.rglob("*"):
        if path.suffix in _WEIGHT_SUFFIXES and path.is_file():
            by_component[path.parent].append(path)
    total = sum(path.stat().st_size for files in by_component.values()
                for path in _loaded_copy(files))
    return total or None


def _loaded_copy(files: list[Path]) -> list[Path]:
    """The files of one component diffusers loads by default: one copy, not every format."""
    preferred = [path for path in files if path.suffix == ".safetensors"] or files
    plain = [path for path in preferred if not _VARIANT.search(path.name)]
    return plain or preferred


def _model_directory(settings: Settings) -> Path | None:
    if settings.model is None:
        return settings.demo_model_dir
    if is_local_path(settings.model):
        return Path(settings.model).expanduser()
    return _hub_snapshot(settings.model)


def _hub_snapshot(repo_id: str) -> Path | None:
    """The cached snapshot of a hub model, without touching the network."""
    try:
        from huggingface_hub import try_to_load_from_cache

        index = try_to_load_from_cache(repo_id, "model_index.json")
    except Exception:  # a malformed id, an unreadable cache: size unknown, not fatal
        return None
    return Path(index).parent if isinstance(index, str) else None


def _size(size: int) -> str:
    return f"{size / 2**30:.2f} GiB" if size >= 2**30 else f"{size / 2**20:.1f} MiB"
