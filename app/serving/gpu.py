"""GPU facts for health and metrics: a cheap probe, memory figures and NVML readings.

Nothing here synchronises the device, so a probe never waits behind a running generation.
On a CPU deployment every function reports "not applicable" rather than a failure.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import torch

from app.observability import metrics

logger = logging.getLogger("sleepwell.gpu")
_GIB = 1024**3


@dataclass(frozen=True)
class GpuSnapshot:
    ok: bool
    error: str | None = None
    allocated_bytes: int = 0
    reserved_bytes: int = 0
    total_bytes: int = 0
    utilization_ratio: float | None = None
    temperature_celsius: float | None = None

    def memory_report(self) -> dict[str, float]:
        return {
            "allocated_gb": round(self.allocated_bytes / _GIB, 3),
            "reserved_gb": round(self.reserved_bytes / _GIB, 3),
            "total_gb": round(self.total_bytes / _GIB, 3),
        }


def probe(device: torch.device, nvml_index: int | None) -> GpuSnapshot:
    """Allocate a little memory and read the allocator's figures. CUDA only."""
    try:
        torch.empty(256, device=device)  # the allocation itself is the check
        _free, total = torch.cuda.mem_get_info(device)
        snapshot = GpuSnapshot(
            ok=True,
            allocated_bytes=torch.cuda.memory_allocated(device),
            reserved_bytes=torch.cuda.memory_reserved(device),
            total_bytes=total,
        )
    except Exception as exc:  # a broken GPU raises many kinds of error
        return GpuSnapshot(ok=False, error=f"GPU probe failed: {exc}")
    utilization, temperature = _nvml_readings(nvml_index)
    return GpuSnapshot(
        ok=True,
        allocated_bytes=snapshot.allocated_bytes,
        reserved_bytes=snapshot.reserved_bytes,
        total_bytes=snapshot.total_bytes,
        utilization_ratio=utilization,
        temperature_celsius=temperature,
    )


def _nvml_readings(index: int | None) -> tuple[float | None, float | None]:
    if index is None:
        return None, None
    try:
        import pynvml

        pynvml.nvmlInit()
        handle: Any = pynvml.nvmlDeviceGetHandleByIndex(index)
        utilization = pynvml.nvmlDeviceGetUtilizationRates(handle).gpu / 100.0
        temperature = float(pynvml.nvmlDeviceGetTemperature(handle, pynvml.NVML_TEMPERATURE_GPU))
    except Exception as exc:  # NVML missing or the driver is too old: readings are optional
        logger.debug("NVML readings unavailable: %s", exc)
        return None, None
    return utilization, temperature


def publish(snapshot: GpuSnapshot, gpu_label: str) -> None:
    """Export GPU gauges. Only ever called on GPU deployments: no fake zeros on CPU."""
    if not snapshot.ok:
        return
    metrics.GPU_MEMORY_ALLOCATED.labels(gpu=gpu_label).set(snapshot.allocated_bytes)
    metrics.GPU_MEMORY_RESERVED.labels(gpu=gpu_label).set(snapshot.reserved_bytes)
    metrics.GPU_MEMORY_TOTAL.labels(gpu=gpu_label).set(snapshot.total_bytes)
    if snapshot.utilization_ratio is not None:
        metrics.GPU_UTILIZATION.labels(gpu=gpu_label).set(snapshot.utilization_ratio)
    if snapshot.temperature_celsius is not None:
        metrics.GPU_TEMPERATURE.labels(gpu=gpu_label).set(snapshot.temperature_celsius)


def physical_index(cuda_visible_devices: str | None) -> int | None:
    """NVML counts physical GPUs; our worker's device 0 is the first visible one."""
    if not cuda_visible_devices:
        return 0
    first = cuda_visible_devices.split(",")[0].strip()
    return int(first) if first.isdigit() else None
