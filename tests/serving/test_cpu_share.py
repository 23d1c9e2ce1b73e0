"""The busy table sibling workers share: real processes, a real file, no torch."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from app.serving.cpu_share import SLOTS, CpuShare
from tests.support.waiting import wait_until

ROOT = Path(__file__).resolve().parents[2]

# A sibling worker: takes slot 1, marks itself busy, holds until its stdin closes.
SIBLING = """
import sys
from pathlib import Path
from app.serving.cpu_share import CpuShare
share = CpuShare(Path(sys.argv[1]), 1, 2, lambda threads: None)
share.begin()
sys.stdin.read()
share.end()
"""


@contextmanager
def busy_sibling(table: Path) -> Iterator[subprocess.Popen[bytes]]:
    child = subprocess.Popen([sys.executable, "-c", SIBLING, str(table)], cwd=ROOT,
                             stdin=subprocess.PIPE)
    try:
        yield child
    finally:
        child.kill()
        child.wait(timeout=30)


@contextmanager
def busy_beside_sibling(
    table: Path, taken: list[int]
) -> Iterator[tuple[CpuShare, subprocess.Popen[bytes]]]:
    """This worker (slot 0, 2 cores) in a call, and a sibling seen busy in slot 1."""
    share = CpuShare(table, 0, 2, taken.append)
    share.begin()
    with busy_sibling(table) as sibling:
        wait_until(lambda: share.busy_workers() == 2, 30, what="sibling busy")
        yield share, sibling


def test_cpu_share_alone_takes_every_core(tmp_path: Path) -> None:
    taken: list[int] = []
    share = CpuShare(tmp_path / "table", 0, 2, taken.append)
    share.begin()
    assert share.busy_workers() == 1
    assert taken == [2]


def test_cpu_share_busy_sibling_halves_then_restores_threads(tmp_path: Path) -> None:
    taken: list[int] = []
    with busy_beside_sibling(tmp_path / "table", taken) as (share, sibling):
        share.adjust()
        assert taken == [2, 1]
        assert sibling.stdin is not None
        sibling.stdin.close()  # the sibling's call ends
        wait_until(lambda: share.busy_workers() == 1, 30, what="sibling idle")
    share.adjust()
    assert taken == [2, 1]  # one idle look is a lull between the sibling's calls
    share.adjust()
    assert taken == [2, 1, 2]  # idle at RAISE_AFTER_IDLE_STEPS steps in a row: every core


def test_cpu_share_sibling_idle_for_one_step_keeps_the_share(tmp_path: Path) -> None:
    taken: list[int] = []
    table = tmp_path / "table"
    with busy_beside_sibling(table, taken) as (share, first_sibling):
        share.adjust()
        assert first_sibling.stdin is not None
        first_sibling.stdin.close()  # the sibling's call ends ...
        wait_until(lambda: share.busy_workers() == 1, 30, what="sibling idle")
        share.adjust()
    with busy_sibling(table):  # ... and its next call begins before our next step
        wait_until(lambda: share.busy_workers() == 2, 30, what="sibling busy again")
        share.adjust()
        share.adjust()
    assert taken == [2, 1]  # never flipped to every core and back


def test_cpu_share_call_begun_alone_takes_every_core_at_once(tmp_path: Path) -> None:
    taken: list[int] = []
    with busy_beside_sibling(tmp_path / "table", taken) as (share, sibling):
        share.adjust()
        share.end()
        assert sibling.stdin is not None
        sibling.stdin.close()
        wait_until(lambda: share.busy_workers() == 0, 30, what="both idle")
    share.begin()  # a lone request: no lull to wait out
    assert taken == [2, 1, 2]


def test_cpu_share_killed_sibling_counts_as_idle(tmp_path: Path) -> None:
    taken: list[int] = []
    with busy_beside_sibling(tmp_path / "table", taken) as (share, sibling):
        sibling.kill()  # kill -9 mid-call: its pid stays in the table
        sibling.wait(timeout=30)
        assert share.busy_workers() == 1
    share.adjust()
    assert taken == [2]  # never dropped below every core for a dead sibling


def test_cpu_share_respawned_worker_clears_its_slot(tmp_path: Path) -> None:
    first = CpuShare(tmp_path / "table", 1, 2, lambda threads: None)
    first.begin()
    CpuShare(tmp_path / "table", 1, 2, lambda threads: None)  # its successor in slot 1
    assert first.busy_workers() == 0


def test_cpu_share_idle_worker_is_not_counted(tmp_path: Path) -> None:
    share = CpuShare(tmp_path / "table", 0, 4, lambda threads: None)
    share.begin()
    share.end()
    assert share.busy_workers() == 0
    assert share.threads() == 4


def test_cpu_share_slot_outside_table_raises(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="worker slot"):
        CpuShare(tmp_path / "table", SLOTS, 2, lambda threads: None)
