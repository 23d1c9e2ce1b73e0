"""deploy/systemd: systemd-analyze verify with clean stderr, and the unit's contract."""

from __future__ import annotations

import shlex
import shutil
import subprocess
from pathlib import Path

import pytest

from app.settings import Settings
from tests.deploy.manifests import (
    INSTALL_SCRIPT,
    UNIT_FILE,
    import_script,
    unit_entries,
    unit_environment,
)
from tests.support.server import ROOT, VENV_BIN

INSTALL_PREFIX = "/opt/sleepwell"
SYSTEMD_ANALYZE = shutil.which("systemd-analyze")


def _service() -> dict[str, list[str]]:
    return unit_entries()["Service"]


def _one(key: str) -> str:
    return _service()[key][-1]


def _for_this_checkout(tmp_path: Path) -> Path:
    """The unit with /opt/sleepwell (where install.sh puts the code) mapped to this
    checkout, because verify requires ExecStart's binary to exist. Nothing else changes."""
    original = UNIT_FILE.read_text(encoding="utf-8")
    rewritten = original.replace(f"{INSTALL_PREFIX}/.venv/bin/", f"{VENV_BIN}/")
    rewritten = rewritten.replace(f"{INSTALL_PREFIX}/gunicorn.conf.py",
                                  str(ROOT / "gunicorn.conf.py"))
    rewritten = rewritten.replace(f"WorkingDirectory={INSTALL_PREFIX}",
                                  f"WorkingDirectory={ROOT}")
    changed = [
        (old, new) for old, new in zip(original.splitlines(), rewritten.splitlines(),
                                       strict=True) if old != new
    ]
    assert {old.split("=", 1)[0] for old, _ in changed} == {"WorkingDirectory", "ExecStart"}
    target = tmp_path / UNIT_FILE.name  # verify derives the unit name from the file name
    target.write_text(rewritten, encoding="utf-8")
    return target


@pytest.mark.skipif(SYSTEMD_ANALYZE is None, reason="systemd-analyze is not installed")
def test_systemd_unit_verify_passes_with_empty_stderr(tmp_path: Path) -> None:
    unit = _for_this_checkout(tmp_path)
    result = subprocess.run(
        [str(SYSTEMD_ANALYZE), "verify", "--man=no", str(unit)],
        capture_output=True, text=True, timeout=60, check=False, cwd=tmp_path,
    )
    # verify exits 0 on unknown keys and bad values; only stderr tells.
    assert result.returncode == 0 and result.stderr.strip() == "", result.stderr


@pytest.mark.skipif(SYSTEMD_ANALYZE is None, reason="systemd-analyze is not installed")
def test_systemd_verify_stderr_check_catches_an_unknown_key(tmp_path: Path) -> None:
    """The check above is only worth something if a typo shows up in stderr."""
    unit = _for_this_checkout(tmp_path)
    unit.write_text(unit.read_text().replace("Restart=always", "Restart=always\nRestartt=5"))
    result = subprocess.run(
        [str(SYSTEMD_ANALYZE), "verify", "--man=no", str(unit)],
        capture_output=True, text=True, timeout=60, check=False, cwd=tmp_path,
    )
    assert "Unknown key" in result.stderr, result.stderr


def test_systemd_unit_restarts_always_after_a_delay() -> None:
    assert _one("Restart") == "always"
    policy = import_script(ROOT / "bench" / "restart_cost.py").parse_unit(UNIT_FILE)
    assert 1 <= policy.restart_sec <= 30
    assert unit_entries()["Unit"]["StartLimitIntervalSec"] == ["0"], "never give up"


def test_systemd_unit_stop_timeout_covers_the_graceful_drain() -> None:
    parse = import_script(ROOT / "bench" / "restart_cost.py").parse_timespan
    graceful = Settings.model_fields["graceful_timeout_s"].default
    assert parse(_one("TimeoutStopSec")) >= graceful + 10
    assert _one("KillMode") == "mixed", "SIGTERM to the master only; it drains its workers"


def test_systemd_unit_runs_gunicorn_from_the_venv_as_a_dedicated_user() -> None:
    argv = shlex.split(_one("ExecStart"))
    assert argv[0] == f"{INSTALL_PREFIX}/.venv/bin/gunicorn"
    assert argv[1:] == ["-c", f"{INSTALL_PREFIX}/gunicorn.conf.py"]
    assert _one("User") == _one("Group") == "sleepwell"
    assert _one("EnvironmentFile") == "/etc/sleepwell/sleepwell.env"
    assert _one("WorkingDirectory") == INSTALL_PREFIX
    assert _one("Type") == "notify", "gunicorn sends READY=1 itself"


def test_systemd_hardening_leaves_gpu_and_model_cache_usable() -> None:
    service = _service()
    for key, value in {"NoNewPrivileges": "yes", "ProtectSystem": "strict",
                       "ProtectHome": "yes", "PrivateTmp": "yes"}.items():
        assert service[key] == [value], key
    # /dev/nvidia* must stay visible and CUDA needs W+X pages.
    assert service.get("PrivateDevices", ["no"])[-1] == "no"
    assert "MemoryDenyWriteExecute" not in service
    assert "DevicePolicy" not in service
    env = unit_environment()
    cache = f"/var/cache/{_one('CacheDirectory')}/"
    assert env["HF_HOME"].startswith(cache), "the model cache must be writable"
    assert env["SLEEPWELL_DEMO_MODEL_DIR"].startswith(cache)
    assert env["PROMETHEUS_MULTIPROC_DIR"].startswith(f"/run/{_one('RuntimeDirectory')}/")


def test_systemd_install_script_is_valid_bash_and_installs_this_unit() -> None:
    result = subprocess.run(["bash", "-n", str(INSTALL_SCRIPT)], capture_output=True,
                            text=True, timeout=30, check=False)
    assert result.returncode == 0, result.stderr
    text = INSTALL_SCRIPT.read_text()
    assert "deploy/systemd/sleepwell.service" in text
    assert f"PREFIX=${{PREFIX:-{INSTALL_PREFIX}}}" in text
    assert '"$PREFIX/.venv/bin/pip" install' in text
    assert INSTALL_SCRIPT.stat().st_mode & 0o111, "install.sh must be executable"
