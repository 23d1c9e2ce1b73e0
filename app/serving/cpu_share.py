"""Torch threads per worker from how many sibling workers are denoising right now.

Measured on 2 cores (bench/throughput.py, README "Performance"): one worker with 2 threads
answers a lone image fastest, but under load two single-threaded workers serve about 1.14x
the raw loop where one 2-thread worker serves 0.87x (anything that preempts one OpenMP
thread stalls its partner at the next barrier). So with several workers on a CPU box each
takes ``cores // busy workers`` threads, re-read before every pipeline call and every
denoising step: alone it gets every core, under load one share, and no more threads in
all than cores for longer than one step.

The workers share a small file in the state directory: one 8-byte slot per worker, its
pid while it runs a call, 0 otherwise. A worker killed mid-call leaves its pid behind;
a pid that no longer exists counts as idle, so nobody waits for a respawn to clear it.

``cores`` are those the worker may use (affinity, cgroup CPU quota:
app/serving/host_limits.py), not the host's. The table belongs to one gunicorn master:
another master on the same box counts only its own workers, so give each master its own
cores (README "Adaptive threads").
"""

from __future__ import annotations

import mmap
import os
import struct
from collections.abc import Callable
from pathlib import Path

SLOTS = 256
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
        self.adjust()

    def adjust(self) -> None:
        """Take the share the table implies now (between denoising steps)."""
        wanted = self.threads()
        if wanted != self._current:
            self._set_threads(wanted)
            self._current = wanted

    def end(self) -> None:
        self._write(0)
