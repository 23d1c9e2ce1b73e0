"""What a restart costs, measured: bench/restart_cost.py under the unit's own policy."""

from __future__ import annotations

import dataclasses
import json
import re
import signal
import subprocess
from pathlib import Path
from types import ModuleType

import pytest

from tests.deploy.manifests import UNIT_FILE, import_script
from tests.support.server import ROOT, VENV_BIN

BENCH = ROOT / "bench" / "restart_cost.py"


@pytest.fixture(scope="module")
def bench() -> ModuleType:
    return import_script(BENCH)


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("5", 5.0), ("5s", 5.0), ("500ms", 0.5), ("1min 30s", 90.0), ("2h", 7200.0)],
)
def test_restart_cost_parse_timespan_reads_systemd_spans(
    bench: ModuleType, text: str, seconds: float,
) -> None:
    assert bench.parse_timespan(text) == seconds


@pytest.mark.parametrize(
    ("restart", "returncode", "expected"),
    [("always", 0, True), ("always", -signal.SIGKILL, True), ("no", -signal.SIGKILL, False),
     ("on-failure", -signal.SIGKILL, True), ("on-failure", 0, False),
     ("on-failure", -signal.SIGTERM, False), ("on-abnormal", 1, False),
     ("on-abnormal", -signal.SIGKILL, True), ("on-success", 0, True)],
)
def test_restart_cost_should_restart_follows_systemd_table(
    bench: ModuleType, restart: str, returncode: int, expected: bool,
) -> None:
    assert bench.should_restart(restart, returncode) is expected


def test_restart_cost_reads_the_unit_policy(bench: ModuleType) -> None:
    policy = bench.parse_unit(UNIT_FILE)
    assert policy.restart == "always"
    assert policy.kill_mode == "mixed"
    assert policy.restart_sec > 0


# The unit's policy with a shorter RestartSec: each kill otherwise idles the full 5 s, and
# what is proven (the supervisor waits RestartSec, whatever it is, then respawns) holds.
TEST_RESTART_SEC = 1.0


def _unit_with_short_restart_sec(bench: ModuleType, directory: Path) -> Path:
    text = UNIT_FILE.read_text(encoding="utf-8")
    assert text.count("\nRestartSec=") == 1
    unit = directory / UNIT_FILE.name
    unit.write_text(re.sub(r"\nRestartSec=.*", f"\nRestartSec={TEST_RESTART_SEC:g}", text),
                    encoding="utf-8")
    real, short = bench.parse_unit(UNIT_FILE), bench.parse_unit(unit)
    assert short == dataclasses.replace(real, restart_sec=TEST_RESTART_SEC)
    assert real.restart_sec > short.restart_sec
    return unit


@pytest.mark.slow
def test_restart_cost_sigkilled_master_is_ready_again_under_unit_policy(
    bench: ModuleType, tmp_path: Path,
) -> None:
    """SIGKILL the gunicorn master twice; the loop supervisor (Restart=, KillMode= etc. read
    from the unit, RestartSec shortened) brings it back. Prints the seconds; asserts
    recovery, never a timing."""
    unit = _unit_with_short_restart_sec(bench, tmp_path)
    result = subprocess.run(
        [str(VENV_BIN / "python"), str(BENCH), "--runs", "2", "--mode", "loop", "--json",
         "--unit", str(unit)],
        cwd=ROOT, capture_output=True, text=True, timeout=240, check=False,
    )
    print(result.stdout)
    assert result.returncode == 0, result.stdout + result.stderr
    rows = json.loads(result.stdout.strip().splitlines()[-1])
    assert len(rows) == 2
    policy = bench.parse_unit(unit)
    for row in rows:
        assert row["new_pid"] != row["old_pid"]
        assert row["notes"] == [f"exit {-signal.SIGKILL}"]
        assert row["restart_sec"] == policy.restart_sec
        # The supervisor waited RestartSec before respawning, as systemd would.
        assert row["respawned_s"] >= policy.restart_sec
    assert rows[1]["old_pid"] == rows[0]["new_pid"]
