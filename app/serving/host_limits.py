"""The cores and memory this process may really use, not what the host has.

``os.cpu_count()`` counts the host's cores. A process may be pinned to fewer
(``taskset``, cpusets: ``sched_getaffinity``) or throttled to fewer by a CPU quota
(docker ``--cpus``, a k8s CPU limit: cgroup v2 ``cpu.max``, v1 ``cpu.cfs_quota_us`` over
``cpu.cfs_period_us``), and more threads than that stall OpenMP at every barrier. Memory
likewise: a container's limit (v2 ``memory.max``, v1 ``memory.limit_in_bytes``) is what
the kernel's OOM killer enforces, whatever ``/proc/meminfo`` says about the host.

A process's cgroup is read from ``/proc/self/cgroup`` and found under the cgroup mount;
when that path is not there (a container sees its own cgroup as the mount's root) the
mount's root is used. Limits of every ancestor count too: the tightest wins. Only kernel
files are read, so tests point ``cgroup_root`` (``SLEEPWELL_CGROUP_ROOT``) and ``proc`` at
fake ones.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterator
from pathlib import Path

CGROUP_ROOT = Path("/sys/fs/cgroup")
PROC = Path("/proc")
# cgroup v1 says "no limit" with a page-rounded 2**63 - 1; no real limit comes near 2**60.
_V1_UNLIMITED = 1 << 60


def usable_cores(cgroup_root: Path = CGROUP_ROOT, proc: Path = PROC) -> int:
    """Cores this process may run on at once: its affinity, capped by its CPU quota."""
    cores = len(os.sched_getaffinity(0))
    quota = cpu_quota_cores(cgroup_root, proc)
    return max(1, min(cores, quota) if quota is not None else cores)


def usable_memory_bytes(cgroup_root: Path = CGROUP_ROOT, proc: Path = PROC) -> int | None:
    """The cgroup's memory limit or the host's MemAvailable, whichever is smaller."""
    known = [value for value in (memory_limit_bytes(cgroup_root, proc), _mem_available(proc))
             if value is not None]
    return min(known) if known else None


def cpu_quota_cores(cgroup_root: Path = CGROUP_ROOT, proc: Path = PROC) -> int | None:
    """ceil(quota / period) of the tightest CPU quota on this process's cgroup path."""
    limits = [limit for directory in _cgroup_dirs(cgroup_root, proc, "cpu")
              if (limit := _cpu_limit(directory)) is not None]
    return min(limits) if limits else None


def memory_limit_bytes(cgroup_root: Path = CGROUP_ROOT, proc: Path = PROC) -> int | None:
    limits = [limit for directory in _cgroup_dirs(cgroup_root, proc, "memory")
              if (limit := _memory_limit(directory)) is not None]
    return min(limits) if limits else None


def _cpu_limit(directory: Path) -> int | None:
    v2 = _read(directory / "cpu.max")  # "max 100000" or "150000 100000"
    if v2 is not None:
        quota, _, period = v2.partition(" ")
        return _cores(quota, period) if quota != "max" else None
    v1_quota = _read(directory / "cpu.cfs_quota_us")  # -1: no quota
    v1_period = _read(directory / "cpu.cfs_period_us")
    if v1_quota is None or v1_period is None or v1_quota == "-1":
        return None
    return _cores(v1_quota, v1_period)


def _cores(quota: str, period: str) -> int | None:
    try:
        return max(1, math.ceil(int(quota) / int(period)))
    except (ValueError, ZeroDivisionError):
        return None


def _memory_limit(directory: Path) -> int | None:
    text = _read(directory / "memory.max")  # v2: "max" or bytes
    if text is None:
        text = _read(directory / "memory.limit_in_bytes")
    if text is None or not text.isdigit() or int(text) >= _V1_UNLIMITED:
        return None
    return int(text)


def _mem_available(proc: Path) -> int | None:
    for line in (_read(proc / "meminfo") or "").splitlines():
        name, _, value = line.partition(":")
        if name == "MemAvailable" and value.split()[0].isdigit():
            return int(value.split()[0]) * 1024  # the kernel writes kB (KiB)
    return None


def _cgroup_dirs(cgroup_root: Path, proc: Path, controller: str) -> Iterator[Path]:
    """This process's cgroup directory for ``controller``, then each ancestor to the mount."""
    unified = (cgroup_root / "cgroup.controllers").exists()
    mount = cgroup_root if unified else _v1_mount(cgroup_root, controller)
    if mount is None:
        return
    own = _own_cgroup(proc, "" if unified else controller)
    leaf = mount / own.lstrip("/") if own else mount
    if not leaf.is_dir():  # a cgroup namespace: our cgroup is the mount's root
        leaf = mount
    yield leaf
    yield from (parent for parent in leaf.parents if parent.is_relative_to(mount))


def _v1_mount(cgroup_root: Path, controller: str) -> Path | None:
    if (cgroup_root / controller).is_dir():
        return cgroup_root / controller
    try:  # co-mounted controllers: "cpu,cpuacct"
        return next((entry for entry in cgroup_root.iterdir()
                     if entry.is_dir() and controller in entry.name.split(",")), None)
    except OSError:
        return None


def _own_cgroup(proc: Path, controller: str) -> str | None:
    """The path in /proc/self/cgroup: "0::/path" (v2) or "N:cpu,cpuacct:/path" (v1)."""
    for line in (_read(proc / "self" / "cgroup") or "").splitlines():
        hierarchy, _, rest = line.partition(":")
        controllers, _, path = rest.partition(":")
        if (not controller and hierarchy == "0" and not controllers) or (
            controller and controller in controllers.split(",")
        ):
            return path
    return None


def _read(path: Path) -> str | None:
    try:
        return path.read_text().strip()
    except OSError:  # absent: no such controller or limit here
        return None
