"""Where the CPU went during a load window: per-thread CPU seconds from /proc (Linux only).

A worker's main thread runs the event loop; its other threads are the inference thread,
OpenMP's workers and the encode pool. Sampled before and after a window, the difference
says what share of the machine each side took, so a gap to the raw loop can be split into
"the model's threads ran less" and "the model's threads needed more CPU per image".
"""

from __future__ import annotations

import os
import resource
from dataclasses import dataclass
from pathlib import Path

_TICKS = os.sysconf("SC_CLK_TCK")


def thread_cpu_s(pid: int) -> dict[int, float]:
    """CPU seconds (user + system) of each thread of ``pid``, by thread id."""
    seconds: dict[int, float] = {}
    for stat in Path(f"/proc/{pid}/task").glob("*/stat"):
        try:
            text = stat.read_text()
        except OSError:
            continue  # the thread ended between the listing and the read
        fields = text[text.rindex(")") + 2 :].split()
        seconds[int(stat.parent.name)] = (int(fields[11]) + int(fields[12])) / _TICKS
    return seconds


def self_cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


@dataclass
class WorkerSnapshot:
    event_loop_s: float
    model_threads_s: float

    @classmethod
    def take(cls, pids: list[int]) -> WorkerSnapshot:
        event_loop = model_threads = 0.0
        for pid in pids:
            for tid, seconds in thread_cpu_s(pid).items():
                if tid == pid:
                    event_loop += seconds
                else:
                    model_threads += seconds
        return cls(event_loop, model_threads)

    def __sub__(self, earlier: WorkerSnapshot) -> WorkerSnapshot:
        return WorkerSnapshot(self.event_loop_s - earlier.event_loop_s,
                              self.model_threads_s - earlier.model_threads_s)


@dataclass
class CpuShares:
    """Shares of the machine (all cores x the window) during one window, 0..1."""

    model_threads: float
    event_loop: float
    load_generator: float
    prober: float
    model_cpu_s_per_image: float

    @classmethod
    def of(cls, used: WorkerSnapshot, load_generator_s: float, prober_s: float,
           images: int, seconds: float) -> CpuShares:
        box = (os.cpu_count() or 1) * seconds
        return cls(used.model_threads_s / box, used.event_loop_s / box,
                   load_generator_s / box, prober_s / box,
                   used.model_threads_s / max(1, images))
