"""Cores and memory this process may really use, and the worker count they give.

The kernel's files are faked at their boundary (a cgroup tree and a /proc in a temp
directory); affinity is real: a subprocess pinned with ``taskset``.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from app.serving.host_limits import (
    cpu_quota_cores,
    memory_limit_bytes,
    usable_cores,
    usable_memory_bytes,
)
from app.serving.worker_sizing import WorkerPlan, model_weight_bytes, plan_workers, worker_bytes
from app.settings import Settings
from tests.support.server import DEMO_MODEL_DIR, ROOT, TEST_ENV, VENV_BIN, RunningServer, free_port
from tests.support.waiting import wait_until

GIB = 2**30
AFFINITY = len(os.sched_getaffinity(0))


def fake_proc(tmp_path: Path, cgroup: str = "0::/\n", mem_available_kib: int = 16 * 2**20) -> Path:
    """A /proc with this process's cgroup line(s) and a MemAvailable (16 GiB by default)."""
    proc = tmp_path / "proc"
    (proc / "self").mkdir(parents=True)
    (proc / "self" / "cgroup").write_text(cgroup)
    (proc / "meminfo").write_text(f"MemTotal: {2 * mem_available_kib} kB\n"
                                  f"MemAvailable: {mem_available_kib} kB\n")
    return proc


def fake_cgroup_v2(tmp_path: Path, files: dict[str, str]) -> Path:
    """A unified (v2) hierarchy: ``files`` maps "dir/cpu.max"-style paths to contents."""
    root = tmp_path / "cgroup"
    root.mkdir(parents=True)
    (root / "cgroup.controllers").write_text("cpu memory\n")
    for name, text in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text)
    return root


def fake_cgroup_v1(tmp_path: Path, files: dict[str, str]) -> Path:
    """Per-controller mounts (v1): "cpu,cpuacct/cpu.cfs_quota_us"-style paths."""
    root = tmp_path / "cgroup"
    for name, text in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text)
    return root


def test_usable_cores_pinned_to_one_core_is_one_everywhere_threads_are_chosen() -> None:
    """A real process pinned to core 0: worker count, thread share and the engine's cores."""
    if AFFINITY < 2 or shutil.which("taskset") is None:
        pytest.skip("needs 2 cores and taskset to pin below them")
    probe = (
        "from app.serving.engine import Engine\n"
        "from app.serving.gunicorn_support import worker_count, worker_environment\n"
        "from app.serving.host_limits import usable_cores\n"
        "from app.settings import Settings\n"
        "env = worker_environment(0, [], Settings(), 1)\n"
        "print(usable_cores(), worker_count(Settings(), []), env['SLEEPWELL_TORCH_THREADS'],"
        " Engine(Settings()).cores)\n"
    )
    result = subprocess.run(["taskset", "-c", "0", sys.executable, "-c", probe], cwd=ROOT,
                            capture_output=True, text=True, timeout=120, check=True)
    assert result.stdout.split() == ["1", "1", "1", "1"], result.stderr[-2000:]


def test_cpu_quota_cgroup_v2_half_a_core_gives_one(tmp_path: Path) -> None:
    root = fake_cgroup_v2(tmp_path, {"cpu.max": "50000 100000\n"})
    proc = fake_proc(tmp_path)
    assert cpu_quota_cores(root, proc) == 1
    assert usable_cores(root, proc) == 1


def test_cpu_quota_cgroup_v2_unlimited_keeps_affinity(tmp_path: Path) -> None:
    root = fake_cgroup_v2(tmp_path, {"cpu.max": "max 100000\n"})
    proc = fake_proc(tmp_path)
    assert cpu_quota_cores(root, proc) is None
    assert usable_cores(root, proc) == AFFINITY


def test_cpu_quota_cgroup_v2_fraction_rounds_up_and_affinity_caps(tmp_path: Path) -> None:
    root = fake_cgroup_v2(tmp_path, {"cpu.max": "150000 100000\n"})  # docker --cpus=1.5
    proc = fake_proc(tmp_path)
    assert cpu_quota_cores(root, proc) == 2
    assert usable_cores(root, proc) == min(2, AFFINITY)


def test_cpu_quota_cgroup_v2_ancestor_limit_counts(tmp_path: Path) -> None:
    root = fake_cgroup_v2(tmp_path, {"pod/cpu.max": "100000 100000\n",
                                     "pod/app/cpu.max": "max 100000\n"})
    proc = fake_proc(tmp_path, cgroup="0::/pod/app\n")
    assert cpu_quota_cores(root, proc) == 1


def test_cpu_quota_cgroup_namespace_path_absent_reads_the_root(tmp_path: Path) -> None:
    # In a container /proc/self/cgroup names the host's path; the mount is our own cgroup.
    root = fake_cgroup_v2(tmp_path, {"cpu.max": "100000 100000\n"})
    proc = fake_proc(tmp_path, cgroup="0::/kubepods/burstable/pod1/abc\n")
    assert cpu_quota_cores(root, proc) == 1


def test_cpu_quota_cgroup_v1_cfs_quota_over_period(tmp_path: Path) -> None:
    root = fake_cgroup_v1(tmp_path, {"cpu,cpuacct/cpu.cfs_quota_us": "100000\n",
                                     "cpu,cpuacct/cpu.cfs_period_us": "100000\n"})
    proc = fake_proc(tmp_path, cgroup="4:cpu,cpuacct:/\n3:memory:/\n")
    assert cpu_quota_cores(root, proc) == 1
    assert usable_cores(root, proc) == 1


def test_cpu_quota_cgroup_v1_minus_one_is_no_quota(tmp_path: Path) -> None:
    root = fake_cgroup_v1(tmp_path, {"cpu/cpu.cfs_quota_us": "-1\n",
                                     "cpu/cpu.cfs_period_us": "100000\n"})
    proc = fake_proc(tmp_path, cgroup="4:cpu:/\n")
    assert cpu_quota_cores(root, proc) is None


def test_memory_limit_v1_unlimited_falls_back_to_mem_available(tmp_path: Path) -> None:
    root = fake_cgroup_v1(tmp_path, {"memory/memory.limit_in_bytes": "9223372036854771712\n"})
    proc = fake_proc(tmp_path, cgroup="3:memory:/\n", mem_available_kib=4 * 2**20)
    assert memory_limit_bytes(root, proc) is None
    assert usable_memory_bytes(root, proc) == 4 * GIB


def test_memory_limit_v2_below_mem_available_wins(tmp_path: Path) -> None:
    root = fake_cgroup_v2(tmp_path, {"memory.max": f"{GIB}\n"})
    assert usable_memory_bytes(root, fake_proc(tmp_path)) == GIB


def model_dir_with_variants(tmp_path: Path) -> Path:
    """unet: plain safetensors (loaded), an fp16 variant and a .bin copy (not); vae: .bin."""
    model = tmp_path / "model"
    sizes = {"unet/diffusion_pytorch_model.safetensors": 4000,
             "unet/diffusion_pytorch_model.fp16.safetensors": 2000,
             "unet/diffusion_pytorch_model.bin": 4000, "unet/config.json": 50,
             "vae/diffusion_pytorch_model.bin": 300}
    for name, size in sizes.items():
        (model / name).parent.mkdir(parents=True, exist_ok=True)
        (model / name).write_bytes(b"\0" * size)
    return model


def test_model_weight_bytes_counts_one_loaded_copy(tmp_path: Path) -> None:
    assert model_weight_bytes(Settings(model=str(model_dir_with_variants(tmp_path)))) == 4300


def test_model_weight_bytes_missing_directory_is_unknown(tmp_path: Path) -> None:
    assert model_weight_bytes(Settings(model=str(tmp_path / "absent"))) is None


def plan_with_memory(tmp_path: Path, memory_bytes: int, **settings: Any) -> WorkerPlan:
    root = fake_cgroup_v2(tmp_path, {"memory.max": f"{memory_bytes}\n"})
    model = model_dir_with_variants(tmp_path)
    return plan_workers(Settings(cgroup_root=root, model=str(model), **settings), [],
                        fake_proc(tmp_path))


def test_worker_count_memory_for_one_copy_gives_one_worker(tmp_path: Path) -> None:
    if AFFINITY < 2:
        pytest.skip("one core gives one worker whatever the memory")
    plan = plan_with_memory(tmp_path, int(worker_bytes(4300) * 1.5))
    assert plan.workers == 1
    assert plan.model_bytes == 4300 and plan.cores == AFFINITY
    assert "by memory" in plan.why


def test_worker_count_memory_for_two_copies_gives_two_workers(tmp_path: Path) -> None:
    if AFFINITY < 2:
        pytest.skip("one core gives one worker whatever the memory")
    plan = plan_with_memory(tmp_path, 4 * GIB)
    assert plan.workers == 2 and "by cores" in plan.why


def test_worker_count_memory_for_no_copy_still_gives_one(tmp_path: Path) -> None:
    plan = plan_with_memory(tmp_path, 100 * 2**20)
    assert plan.workers == 1 and "fits none" in plan.why


def test_worker_count_explicit_workers_and_gpus_win_over_memory(tmp_path: Path) -> None:
    assert plan_with_memory(tmp_path / "a", 100 * 2**20, workers=3).workers == 3
    root = fake_cgroup_v2(tmp_path / "b", {"memory.max": f"{100 * 2**20}\n"})
    assert plan_workers(Settings(cgroup_root=root), ["0", "1", "2"]).workers == 3


def test_gunicorn_memory_limit_for_one_copy_starts_one_worker_and_logs_why(
    tmp_path: Path, demo_model_dir: Path,
) -> None:
    """A real master under a fake cgroup memory limit that fits one demo-model worker."""
    if AFFINITY < 2:
        pytest.skip("one core gives one worker whatever the memory")
    demo = model_weight_bytes(Settings(demo_model_dir=DEMO_MODEL_DIR))
    assert demo is not None
    limit = int(worker_bytes(demo) * 1.5)
    root = fake_cgroup_v2(tmp_path, {"memory.max": f"{limit}\n", "cpu.max": "max 100000\n"})
    with master_without_worker_count({"SLEEPWELL_CGROUP_ROOT": str(root)}) as server:
        server.wait_ready(timeout=120)
        line = wait_until(lambda: plan_line(server.log()), 30, what="the worker plan line")
        assert len(server.worker_pids()) == 1
    assert line["workers"] == 1 and "by memory" in line["workers_why"]
    assert line["usable_cores"] == usable_cores()
    assert line["usable_memory_bytes"] <= limit and line["model_weight_bytes"] == demo


def plan_line(log: str) -> dict[str, object] | None:
    for text in log.splitlines():
        if text.startswith("{") and '"workers_why"' in text:
            line: dict[str, object] = json.loads(text)
            return line
    return None


@contextmanager
def master_without_worker_count(extra_env: dict[str, str]) -> Iterator[RunningServer]:
    """``gunicorn -c gunicorn.conf.py`` as tests/support/server.py starts it, but with
    SLEEPWELL_WORKERS unset, so the master chooses the count itself."""
    port = free_port()
    work = Path(tempfile.mkdtemp(prefix="sleepwell-cores-"))
    env = {**os.environ, **TEST_ENV, "SLEEPWELL_PORT": str(port),
           "PROMETHEUS_MULTIPROC_DIR": str(work / "metrics"), **extra_env}
    env.pop("SLEEPWELL_WORKERS")
    log_path = work / "server.log"
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            [str(VENV_BIN / "gunicorn"), "-c", str(ROOT / "gunicorn.conf.py")],
            cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT,
        )
    server = RunningServer(process, port, log_path, work / "metrics", env)
    try:
        yield server
    finally:
        server.stop()
        shutil.rmtree(work, ignore_errors=True)
