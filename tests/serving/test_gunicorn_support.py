"""GPU slot logic and worker sizing, exercised on the CPU."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from app.serving.gunicorn_support import (
    free_slot,
    prepare_metrics_dir,
    visible_gpu_ids,
    worker_count,
    worker_environment,
)
from app.serving.host_limits import usable_cores
from app.serving.lifecycle import LoadFailureLog
from app.serving.respawn import RespawnPolicy
from app.settings import Settings
from tests.support.server import ROOT


def test_free_slot_no_workers_takes_slot_zero() -> None:
    assert free_slot([], 4) == 0


def test_free_slot_dead_worker_slot_is_reused_first() -> None:
    # Workers hold 0, 2, 3; the one in slot 1 died: its replacement gets slot 1 back.
    assert free_slot([0, 2, 3], 4) == 1


def test_free_slot_all_taken_picks_least_used_slot() -> None:
    assert free_slot([0, 1], 2) == 0
    assert free_slot([0, 1, 0], 2) == 1


def test_worker_environment_pins_one_gpu_per_slot() -> None:
    gpus = ["3", "5"]
    settings = Settings(torch_threads=4)
    expected = {"SLEEPWELL_WORKER_SLOT": "0", "SLEEPWELL_WORKERS": "2",
                "CUDA_VISIBLE_DEVICES": "3"}
    assert worker_environment(0, gpus, settings, 2) == expected
    assert worker_environment(1, gpus, settings, 2)["CUDA_VISIBLE_DEVICES"] == "5"


def test_worker_environment_cpu_sets_no_cuda_devices() -> None:
    env = worker_environment(0, [], Settings(torch_threads=1), 1)
    assert env == {"SLEEPWELL_WORKER_SLOT": "0", "SLEEPWELL_WORKERS": "1"}


def test_worker_environment_shares_cores_between_workers() -> None:
    env = worker_environment(0, [], Settings(), workers=16, cores=4)
    assert env["SLEEPWELL_TORCH_THREADS"] == "1"
    assert worker_environment(0, [], Settings(), 1, cores=4)["SLEEPWELL_TORCH_THREADS"] == "4"
    halves = worker_environment(0, [], Settings(), workers=2, cores=4)["SLEEPWELL_TORCH_THREADS"]
    assert halves == "2"  # never more threads in all than cores


def test_worker_environment_cpu_quota_caps_the_default_share(tmp_path: Path) -> None:
    (tmp_path / "cgroup.controllers").write_text("cpu\n")  # a cgroup v2 root, faked
    (tmp_path / "cpu.max").write_text("100000 100000\n")  # docker --cpus=1
    alone = worker_environment(0, [], Settings(cgroup_root=tmp_path), 1)
    assert alone["SLEEPWELL_TORCH_THREADS"] == "1"


def test_worker_environment_several_workers_adapt_threads() -> None:
    assert worker_environment(0, [], Settings(), 2)["SLEEPWELL_ADAPTIVE_THREADS"] == "1"
    assert "SLEEPWELL_ADAPTIVE_THREADS" not in worker_environment(0, [], Settings(), 1)
    pinned = worker_environment(0, [], Settings(torch_threads=1), 2)
    assert "SLEEPWELL_ADAPTIVE_THREADS" not in pinned  # an explicit count is kept as is


def test_visible_gpu_ids_explicit_list_wins() -> None:
    settings = Settings(gpu_ids="1, 2", cuda_visible_devices="0")
    assert visible_gpu_ids(settings) == ["1", "2"]


def test_visible_gpu_ids_cuda_visible_devices_respected() -> None:
    assert visible_gpu_ids(Settings(cuda_visible_devices="2,3,7")) == ["2", "3", "7"]


def test_worker_count_defaults_to_gpus_or_two_on_cpu() -> None:
    assert worker_count(Settings(), ["0", "1", "2"]) == 3
    # The demo model fits twice in this machine's memory: cores decide (test_cpu_cores.py
    # covers a memory limit that fits one copy).
    assert worker_count(Settings(), []) == min(2, usable_cores())
    assert worker_count(Settings(workers=2), ["0", "1", "2"]) == 2


def test_prepare_metrics_dir_existing_files_are_removed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", "")  # restored after: the function sets it
    stale = tmp_path / "counter_123.db"
    stale.write_bytes(b"old")
    (tmp_path / "sub").mkdir()
    directory = prepare_metrics_dir(Settings(prometheus_multiproc_dir=tmp_path))
    assert directory == tmp_path and list(tmp_path.iterdir()) == []


def test_gunicorn_config_import_loads_neither_torch_nor_prometheus_client() -> None:
    # The master forks workers: torch (CUDA) must not start before the fork, and
    # prometheus_client must first see PROMETHEUS_MULTIPROC_DIR, set in on_starting.
    import subprocess
    import sys

    probe = (
        "import runpy, sys; runpy.run_path('gunicorn.conf.py'); "
        "print(sorted(m for m in ('torch', 'prometheus_client', 'diffusers') if m in sys.modules))"
    )
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                            timeout=60, check=True, cwd=ROOT)
    assert result.stdout.strip() == "[]"


def test_respawn_policy_backs_off_per_slot_and_gives_up_once_when_all_fail(
    tmp_path: Path,
) -> None:
    policy = RespawnPolicy(workers=2, attempts=2, first_backoff_s=1.0, max_backoff_s=3.0)
    slot0, slot1 = LoadFailureLog(tmp_path, 0), LoadFailureLog(tmp_path, 1)
    for _ in range(3):
        slot0.record("bad model")  # the note carries this (test) process's pid
        policy.worker_exited(tmp_path, 0, os.getpid())
    assert [policy.backoff_s(0), policy.backoff_s(1)] == [3.0, 0.0]  # 1, 2, 4 -> capped at 3
    assert policy.give_up_reason() is None  # slot 1 still serves
    slot1.record("bad model")
    policy.worker_exited(tmp_path, 1, os.getpid())
    policy.worker_exited(tmp_path, 1, os.getpid())
    reason = policy.give_up_reason()
    assert reason is not None and "every worker (2) failed" in reason and "bad model" in reason
    assert policy.give_up_reason() is None  # said once: the master is already halting


def test_respawn_policy_worker_that_loaded_resets_its_slot(tmp_path: Path) -> None:
    policy = RespawnPolicy(workers=1, attempts=3, first_backoff_s=1.0, max_backoff_s=60.0)
    LoadFailureLog(tmp_path, 0).record("flaky GPU")
    policy.worker_exited(tmp_path, 0, os.getpid())
    assert policy.backoff_s(0) == 1.0
    LoadFailureLog(tmp_path, 0).clear()  # the next worker loaded, then died of something else
    policy.worker_exited(tmp_path, 0, os.getpid() + 1)
    assert policy.backoff_s(0) == 0.0 and policy.give_up_reason() is None
