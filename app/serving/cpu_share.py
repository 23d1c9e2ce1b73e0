"""Torch threads per worker from how many sibling workers are denoising right now.

Measured on 2 cores (bench/throughput.py, docs/performance.md): one worker with 2 threads
answers a lone image fastest, but under load two single-threaded workers serve about 1.14x
the raw loop where one 2-thread worker serves 0.87x (anything that preempts one OpenMP
thread stalls its partner at the next barrier). So with several workers on a CPU box each
takes ``cores // busy workers`` threads, re-read before every pipeline call and every
denoising step: alone it gets every core, under load one share, and no more threads in
all than cores for longer than one step.

Between steps a worker gives threads up at once but takes more only once its siblings have
looked idle at ``RAISE_AFTER_IDLE_STEPS`` steps in a row. Under steady load a sibling is
idle for a few milliseconds between its calls (encoding, gathering the next batch); taking
every core then and giving them back a step later oversubscribed the cores through the
sibling's text encoding and first steps, and rebuilt OpenMP's pool twice per call
(bench/throughput.py, 2 workers at c=8: 0.84x the raw best against 0.98x for a static
single thread). A call's start still takes every core at once when it is alone, so a
lone request is as fast as before.

The workers share a small file in the state directory: one 8-byte slot per worker, its
pid while it runs a call, 0 otherwise. A worker killed mid-call leaves its pid behind;
a pid that no longer exists counts as idle, so nobody waits for a respawn to clear it.

``cores`` are those the worker may use (affinity, cgroup CPU quota:
app/serving/host_limits.py), not the host's. The table belongs to one gunicorn master:
another master on the same box counts only its own workers, so give each master its own
cores (docs/performance.md, "CPU workers and threads").
"""

from __future__ import annotations

import logging
import mmap
import os
import struct
from collections.abc import Callable
from pathlib import Path

from app.settings import Settings

logger = logging.getLogger("sleepwell.engine")
SLOTS = 256
RAISE_AFTER_IDLE_STEPS = 2
_SLOT = struct.Struct("<q")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


class CpuShare:
    """This worker's slot in the shared busy table, and the thread count it implies."""

    def __init__(self, path: Path, slot: int, cores: int,
                 set_threads: Callable[[int], None]) -> None:
        if not 0 <= slot < SLOTS:
            raise ValueError(f"worker slot {slot} outside 0..{SLOTS - 1}")
        self._slot = slot
        self._cores = max(1, cores)
        self._set_threads = set_threads
        self._current: int | None = None
        self._steps_wanting_more = 0
        self._pid = os.getpid()
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            if os.fstat(fd).st_size < SLOTS * _SLOT.size:
                os.ftruncate(fd, SLOTS * _SLOT.size)  # siblings racing here agree on the size
            self._table = mmap.mmap(fd, SLOTS * _SLOT.size)
        finally:
            os.close(fd)
        self._write(0)  # a respawned worker inherits its predecessor's slot

    def _write(self, pid: int) -> None:
        _SLOT.pack_into(self._table, self._slot * _SLOT.size, pid)

    def busy_workers(self) -> int:
        """Workers in a call now, this one included when it is."""
        pids = {pid for (pid,) in _SLOT.iter_unpack(self._table) if pid}
        return sum(1 for pid in pids if pid == self._pid or _alive(pid))

    def threads(self) -> int:
        return max(1, self._cores // max(1, self.busy_workers()))

    def begin(self) -> None:
        """Mark this worker busy and take its share, before a pipeline call."""
        self._write(self._pid)
        self._take(self.threads())

    def adjust(self) -> None:
        """Between denoising steps: fewer threads at once, more only after a steady lull."""
        wanted = self.threads()
        if self._current is not None and wanted > self._current:
            self._steps_wanting_more += 1
            if self._steps_wanting_more < RAISE_AFTER_IDLE_STEPS:
                return
        self._take(wanted)

    def _take(self, threads: int) -> None:
        self._steps_wanting_more = 0
        if threads != self._current:
            self._set_threads(threads)
            self._current = threads

    def end(self) -> None:
        self._write(0)


def adaptive_share(settings: Settings, cores: int,
               set_threads: Callable[[int], None]) -> CpuShare | None:
    """The shared busy table when gunicorn asked for adaptive threads (several CPU workers)."""
    if not settings.adaptive_threads or settings.state_dir is None or settings.worker_slot is None:
        return None
    try:
        return CpuShare(settings.state_dir / "cpu-share", settings.worker_slot, cores,
                        set_threads)
    except (OSError, ValueError) as exc:  # serve with the static share rather than not at all
        logger.warning("adaptive torch threads off: %s", exc)
        return None
