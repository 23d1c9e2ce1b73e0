"""What gunicorn.conf.py needs: worker count, GPU slots, metrics, state and runtime dirs.

The master never imports torch or touches CUDA: the GPU count comes from NVML or from
CUDA_VISIBLE_DEVICES, so forking stays safe (no preload_app).
"""

from __future__ import annotations

import logging
import os
import shutil
import stat
import tempfile
import time
from collections.abc import Callable, Iterable
from pathlib import Path

from app.serving.host_limits import usable_cores
from app.serving.worker_sizing import plan_workers
from app.settings import Settings

logger = logging.getLogger("sleepwell.gunicorn")


def visible_gpu_ids(settings: Settings) -> list[str]:
    """GPU ids workers may be pinned to, in slot order."""
    if settings.gpu_ids:
        return [part.strip() for part in settings.gpu_ids.split(",") if part.strip()]
    if settings.cuda_visible_devices is not None:
        return [part.strip() for part in settings.cuda_visible_devices.split(",") if part.strip()]
    return [str(index) for index in range(_nvml_device_count())]


def _nvml_device_count() -> int:
    try:
        import pynvml

        pynvml.nvmlInit()
        try:
            return int(pynvml.nvmlDeviceGetCount())
        finally:
            pynvml.nvmlShutdown()
    except Exception:  # no driver, no GPU: a CPU deployment
        return 0


def worker_count(settings: Settings, gpu_ids: list[str]) -> int:
    """One worker per GPU; on a CPU box two when cores and memory allow (see
    app/serving/worker_sizing.py, which also says why, for the startup log)."""
    return plan_workers(settings, gpu_ids).workers


def free_slot(used: Iterable[int | None], slots: int) -> int:
    """The lowest slot no live worker holds: a respawned worker inherits its predecessor's."""
    # More workers than slots (SLEEPWELL_WORKERS > GPUs) share: the least-used slot wins.
    holders = [slot for slot in used if slot is not None]
    return min(range(max(1, slots)), key=lambda slot: (holders.count(slot), slot))


def worker_environment(
    slot: int, gpu_ids: list[str], settings: Settings, workers: int, cores: int | None = None
) -> dict[str, str]:
    """Environment a worker in ``slot`` needs: its GPU, its slot, its share of the ``cores``
    it may use (default: this process's, app/serving/host_limits.py), and how many workers
    there are (it sheds keep-alive connections only with siblings)."""
    env = {"SLEEPWELL_WORKER_SLOT": str(slot), "SLEEPWELL_WORKERS": str(workers)}
    if gpu_ids:
        env["CUDA_VISIBLE_DEVICES"] = gpu_ids[slot % len(gpu_ids)]
    if settings.torch_threads is None:
        # The static share is what a worker loads and warms up with (no oversubscription
        # while siblings load side by side); with siblings it then adapts per step.
        usable = cores if cores is not None else usable_cores(settings.cgroup_root)
        env["SLEEPWELL_TORCH_THREADS"] = str(cpu_threads_per_worker(workers, usable))
        if workers > 1:
            env["SLEEPWELL_ADAPTIVE_THREADS"] = "1"
    return env


def cpu_threads_per_worker(workers: int, cores: int) -> int:
    """Each worker's share of the cores it may use: all of them for one worker, one each for
    one per core.

    Chosen by measurement (bench/throughput.py, 2 cores, 3 runs; docs/performance.md):
    one worker with 2 threads served more than with 1 and kept health p99 in the same range;
    keeping a core "free" cost 27-30 %. More threads than cores (oversubscription) is what
    stalls OpenMP, so the shares never add up to more than the cores. ``cores`` are those
    this process may run on (affinity, CPU quota), never the host's.
    """
    return max(1, cores // workers)


_worker_heartbeat: list[Callable[[], None]] = []


def register_worker_heartbeat(heartbeat: Callable[[], None]) -> None:
    """Called in post_fork: the app heart-beats itself while it holds its startup."""
    _worker_heartbeat[:] = [heartbeat]


def worker_heartbeat() -> Callable[[], None]:
    """gunicorn's heartbeat for this worker, or a no-op outside gunicorn."""
    return _worker_heartbeat[0] if _worker_heartbeat else _no_heartbeat


def _no_heartbeat() -> None:
    return None


def wait_with_heartbeat(seconds: float, heartbeat: Callable[[], None]) -> None:
    """Sleep ``seconds`` in a forked worker, heart-beating so the master keeps it."""
    deadline = time.monotonic() + seconds
    while (left := deadline - time.monotonic()) > 0:
        heartbeat()
        time.sleep(min(1.0, left))


def _clean_dir(configured: Path | None, prefix: str, variable: str) -> Path:
    directory = configured or Path(tempfile.mkdtemp(prefix=prefix))
    directory.mkdir(parents=True, exist_ok=True)
    for entry in directory.iterdir():
        if entry.is_dir():
            shutil.rmtree(entry)
        else:
            entry.unlink()
    os.environ[variable] = str(directory)  # inherited by every worker
    return directory


def prepare_metrics_dir(settings: Settings) -> Path:
    """A clean multiprocess directory: stale files from a previous run would be summed."""
    return _clean_dir(settings.prometheus_multiproc_dir, "sleepwell-metrics-",
                      "PROMETHEUS_MULTIPROC_DIR")


def prepare_state_dir(settings: Settings) -> Path:
    """The directory workers share for the desired model; a master start forgets old swaps."""
    return _clean_dir(settings.state_dir, "sleepwell-state-", "SLEEPWELL_STATE_DIR")


def prepare_runtime_dir(settings: Settings) -> Path | None:
    """Give XDG_RUNTIME_DIR a private directory when the environment has none.

    The embedded PostgreSQL's library asks platformdirs for the user's runtime directory
    (its start/stop lock, a socket when the data path is too long for one); with the
    variable unset, platformdirs warns at every start and falls back to a temp directory.
    We name one of the same kind: per user (so instances still share that lock),
    short (socket paths), mode 0700. A path that is not ours is left alone: then the
    library's own warning says why, through the JSON log. Returns the directory in use.
    """
    if settings.xdg_runtime_dir is not None:  # the environment's, or one from .env
        os.environ["XDG_RUNTIME_DIR"] = str(settings.xdg_runtime_dir)
        return settings.xdg_runtime_dir
    directory = Path(tempfile.gettempdir()) / f"sleepwell-runtime-{os.getuid()}"
    try:
        directory.mkdir(mode=0o700, exist_ok=True)
        info = directory.lstat()
    except OSError as exc:
        logger.warning("cannot make a runtime directory at %s: %s", directory, exc)
        return None
    if not stat.S_ISDIR(info.st_mode) or info.st_uid != os.getuid():
        logger.warning("%s is not a directory of this user; XDG_RUNTIME_DIR stays unset",
                       directory)
        return None
    directory.chmod(0o700)  # platformdirs accepts exactly 0700
    os.environ["XDG_RUNTIME_DIR"] = str(directory)
    return directory
