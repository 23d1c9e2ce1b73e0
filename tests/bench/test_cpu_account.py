"""bench/cpu_account.py reads real per-thread CPU from /proc (no timing budget asserted)."""

from __future__ import annotations

import os
import threading
import time

import pytest

from bench.cpu_account import CpuShares, WorkerSnapshot, thread_cpu_s

CPU_TO_BURN_S = 0.2
DEADLINE_S = 30.0
TICK_S = 1 / os.sysconf("SC_CLK_TCK")  # /proc's resolution


def burn_cpu(seconds: float) -> None:
    """Spin until this thread has used ``seconds`` of CPU, or the deadline passes."""
    start, deadline = time.thread_time(), time.monotonic() + DEADLINE_S
    while time.thread_time() - start < seconds and time.monotonic() < deadline:
        pass


def test_thread_cpu_s_busy_thread_shows_its_own_seconds() -> None:
    burnt, release = threading.Event(), threading.Event()
    native_id: list[int] = []

    def busy() -> None:
        native_id.append(threading.get_native_id())
        burn_cpu(CPU_TO_BURN_S)
        burnt.set()
        release.wait(DEADLINE_S)  # stay alive: /proc lists only living threads

    thread = threading.Thread(target=busy)
    thread.start()
    try:
        assert burnt.wait(DEADLINE_S)
        seconds = thread_cpu_s(os.getpid())
        assert seconds[native_id[0]] >= CPU_TO_BURN_S - 2 * TICK_S
        assert os.getpid() in seconds  # the main thread is listed under the pid
    finally:
        release.set()
        thread.join()


def test_worker_snapshot_main_thread_work_counts_as_event_loop() -> None:
    before = WorkerSnapshot.take([os.getpid()])
    burn_cpu(CPU_TO_BURN_S)
    used = WorkerSnapshot.take([os.getpid()]) - before
    assert used.event_loop_s >= CPU_TO_BURN_S - 2 * TICK_S
    assert used.event_loop_s > used.model_threads_s


def test_cpu_shares_of_window_divides_by_every_core() -> None:
    cores = os.cpu_count() or 1
    used = WorkerSnapshot(event_loop_s=0.5 * cores, model_threads_s=4.0 * cores)
    shares = CpuShares.of(used, load_generator_s=0.25 * cores, prober_s=0.1 * cores,
                          images=8 * cores, seconds=5.0)
    assert (shares.model_threads, shares.event_loop) == pytest.approx((0.8, 0.1))
    assert (shares.load_generator, shares.prober) == pytest.approx((0.05, 0.02))
    assert shares.model_cpu_s_per_image == pytest.approx(0.5)
