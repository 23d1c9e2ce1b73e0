"""Protected mode through the real gunicorn: no keys + a non-loopback bind = no start.

Every run that asks for 0.0.0.0 happens inside a fresh network namespace (``unshare -n``),
which has no interface but a downed loopback: even a check that came too late could not
expose anything. The refusals must still happen before gunicorn opens a socket, which
the absence of gunicorn's "Listening at" line shows.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path

import pytest
from pydantic import SecretStr

from app.main import create_app
from app.settings import Settings
from tests.support.server import ROOT, TEST_ENV, VENV_BIN, free_port

GUNICORN = [str(VENV_BIN / "gunicorn"), "-c", str(ROOT / "gunicorn.conf.py")]


def _isolated(argv: list[str]) -> list[str]:
    unshare = shutil.which("unshare")
    if unshare is None or subprocess.run([unshare, "-n", "true"], check=False).returncode:
        pytest.skip("needs 'unshare -n' (a private network namespace) to bind 0.0.0.0 safely")
    return [unshare, "-n", *argv]


def _env(extra: dict[str, str]) -> dict[str, str]:
    env = {**os.environ, **TEST_ENV, "SLEEPWELL_PORT": str(free_port())}
    for name in ("SLEEPWELL_API_KEYS", "SLEEPWELL_API_KEYS_FILE",
                 "SLEEPWELL_ALLOW_UNAUTHENTICATED"):
        env.pop(name, None)
    env["PROMETHEUS_MULTIPROC_DIR"] = tempfile.mkdtemp(prefix="sleepwell-pm-")
    return {**env, **extra}


def _refused(argv: list[str], extra_env: dict[str, str]) -> tuple[int, str]:
    result = subprocess.run(argv, cwd=ROOT, env=_env(extra_env), capture_output=True,
                            text=True, timeout=60, check=False)
    return result.returncode, result.stdout + result.stderr


def test_gunicorn_wildcard_host_without_keys_exits_before_binding() -> None:
    started = time.monotonic()
    code, output = _refused(_isolated(GUNICORN), {"SLEEPWELL_HOST": "0.0.0.0"})
    assert code != 0, output
    assert "protected mode" in output and "0.0.0.0" in output
    for fix in ("SLEEPWELL_API_KEYS", "SLEEPWELL_API_KEYS_FILE",
                "SLEEPWELL_ALLOW_UNAUTHENTICATED=true"):
        assert fix in output
    assert "Listening at" not in output and "Booting worker" not in output
    assert "Traceback" not in output, "the reason must read as a message, not a crash"
    assert time.monotonic() - started < 30


def test_gunicorn_bind_flag_overriding_host_is_checked_before_binding() -> None:
    argv = _isolated([*GUNICORN, "--bind", f"0.0.0.0:{free_port()}"])
    code, output = _refused(argv, {"SLEEPWELL_HOST": "127.0.0.1"})
    assert code != 0, output
    assert "protected mode" in output and "Listening at" not in output


def test_gunicorn_unreadable_keys_file_exits_with_reason(tmp_path: Path) -> None:
    missing = tmp_path / "no-such-keys"
    code, output = _refused(GUNICORN, {"SLEEPWELL_API_KEYS_FILE": str(missing)})
    assert code != 0
    assert f"SLEEPWELL_API_KEYS_FILE={missing}" in output and "Listening at" not in output


def _start_until_listening(extra_env: dict[str, str]) -> str:
    """Start gunicorn on 0.0.0.0 in a private namespace; stop it once it listens."""
    log_path = Path(tempfile.mkdtemp(prefix="sleepwell-pm-")) / "out.log"
    env = _env({"SLEEPWELL_HOST": "0.0.0.0", "SLEEPWELL_WARMUP": "false", **extra_env})
    with log_path.open("wb") as log:
        process = subprocess.Popen(_isolated(GUNICORN), cwd=ROOT, env=env, stdout=log,
                                   stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and process.poll() is None:
            if "Listening at" in log_path.read_text(errors="replace"):
                break
            time.sleep(0.1)
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(10)
    return log_path.read_text(errors="replace")


def test_gunicorn_allow_unauthenticated_starts_and_warns_loudly() -> None:
    output = _start_until_listening({"SLEEPWELL_ALLOW_UNAUTHENTICATED": "true"})
    assert "Listening at: http://0.0.0.0:" in output, output[-3000:]
    warnings = [json.loads(line) for line in output.splitlines()
                if line.startswith("{") and "SECURITY WARNING" in line]
    assert warnings, output[-3000:]
    assert warnings[0]["level"] == "WARNING" and "NO API keys" in warnings[0]["message"]


def test_gunicorn_wildcard_host_with_keys_starts_without_warning() -> None:
    output = _start_until_listening({"SLEEPWELL_API_KEYS": "sk-protected-mode-test"})
    assert "Listening at: http://0.0.0.0:" in output, output[-3000:]
    assert "SECURITY WARNING" not in output
    assert "sk-protected-mode-test" not in output


def test_create_app_uvicorn_direct_wildcard_host_without_keys_refuses() -> None:
    with pytest.raises(SystemExit, match="protected mode"):
        create_app(Settings(host="0.0.0.0"))
    create_app(Settings(host="0.0.0.0", api_keys=SecretStr("sk-1")))  # keys: fine
