"""What a restart costs, measured: bench/restart_cost.py under the unit's own policy."""

from __future__ import annotations

import json
import signal
import subprocess
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


@pytest.mark.slow
def test_restart_cost_sigkilled_master_is_ready_again_under_unit_policy(
    bench: ModuleType,
) -> None:
    """SIGKILL the gunicorn master twice; the loop supervisor (RestartSec etc. read from
    the unit) brings it back. Prints the seconds; asserts recovery, never a timing."""
    result = subprocess.run(
        [str(VENV_BIN / "python"), str(BENCH), "--runs", "2", "--mode", "loop", "--json"],
        cwd=ROOT, capture_output=True, text=True, timeout=240, check=False,
    )
    print(result.stdout)
    assert result.returncode == 0, result.stdout + result.stderr
    rows = json.loads(result.stdout.strip().splitlines()[-1])
    assert len(rows) == 2
    policy = bench.parse_unit(UNIT_FILE)
    for row in rows:
        assert row["new_pid"] != row["old_pid"]
        assert row["notes"] == [f"exit {-signal.SIGKILL}"]
        assert row["restart_sec"] == policy.restart_sec
        # The supervisor waited RestartSec before respawning, as systemd would.
        assert row["respawned_s"] >= policy.restart_sec
    assert rows[1]["old_pid"] == rows[0]["new_pid"]
