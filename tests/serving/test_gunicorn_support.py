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
    expected = {"SLEEPWELL_WORKER_SLOT": "0", "CUDA_VISIBLE_DEVICES": "3"}
    assert worker_environment(0, gpus, settings, 2) == expected
    assert worker_environment(1, gpus, settings, 2)["CUDA_VISIBLE_DEVICES"] == "5"


def test_worker_environment_cpu_sets_no_cuda_devices() -> None:
    env = worker_environment(0, [], Settings(torch_threads=1), 1)
    assert env == {"SLEEPWELL_WORKER_SLOT": "0"}


def test_worker_environment_shares_cores_between_workers() -> None:
    cores = os.cpu_count() or 1
    env = worker_environment(0, [], Settings(), workers=cores * 4)
    assert env["SLEEPWELL_TORCH_THREADS"] == "1"
    expected = str(max(1, cores - 1))  # one core stays free for the event loop
    assert worker_environment(0, [], Settings(), 1)["SLEEPWELL_TORCH_THREADS"] == expected


def test_visible_gpu_ids_explicit_list_wins() -> None:
    settings = Settings(gpu_ids="1, 2", cuda_visible_devices="0")
    assert visible_gpu_ids(settings) == ["1", "2"]


def test_visible_gpu_ids_cuda_visible_devices_respected() -> None:
    assert visible_gpu_ids(Settings(cuda_visible_devices="2,3,7")) == ["2", "3", "7"]


def test_worker_count_defaults_to_gpus_or_one() -> None:
    assert worker_count(Settings(), ["0", "1", "2"]) == 3
    assert worker_count(Settings(), []) == 1
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
