"""Protected mode through the real gunicorn and a bare uvicorn: no keys + a non-loopback
bind = no service.

Every run that asks for 0.0.0.0 happens inside a fresh network namespace (``unshare -n``):
gunicorn's in one with only a downed loopback, uvicorn's (whose client must reach it) in
one whose loopback is up, and nothing else. Even a check that came too late could not
expose anything. Gunicorn's refusals must happen before it opens a socket, which the
absence of its "Listening at" line shows; a bare uvicorn binds before the app can look,
so it must exit before it answers anything.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import pytest

from app.main import create_app
from app.settings import Settings
from tests.support.server import ROOT, TEST_ENV, VENV_BIN, free_port

GUNICORN = [str(VENV_BIN / "gunicorn"), "-c", str(ROOT / "gunicorn.conf.py")]


def _isolated(argv: list[str]) -> list[str]:
    unshare = shutil.which("unshare")
    if unshare is None or subprocess.run([unshare, "-n", "true"], check=False).returncode:
        reason = "needs 'unshare -n' (a private network namespace) to bind 0.0.0.0 safely"
        if in_ci():  # CI runs as root with iproute2 installed: a skip there hides a failure
            pytest.fail(f"{reason}; CI must be able to run it (CI={os.environ['CI']})")
        pytest.skip(reason)
    return [unshare, "-n", *argv]


def in_ci() -> bool:
    """CI sets CI=true (GitHub Actions, GitLab, most others)."""
    return os.environ.get("CI", "").strip().lower() in {"true", "1", "yes"}


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


# --- a bare uvicorn: the sockets really bound, not SLEEPWELL_HOST (issue 9) -------------
def _in_private_network(argv: list[str]) -> list[str]:
    """``argv`` in a fresh network namespace with its loopback up: the probe's client
    reaches the server there, nothing outside does. Without unshare/ip (no root), the
    probe runs here: a 0.0.0.0 bind on a free port for seconds."""
    unshare, ip = shutil.which("unshare"), shutil.which("ip")
    if unshare is None or ip is None or subprocess.run(
        [unshare, "-n", ip, "link", "set", "lo", "up"], check=False, capture_output=True
    ).returncode:
        if in_ci():  # CI runs as root with iproute2: it must never bind 0.0.0.0 for real
            pytest.fail("'unshare -n' with 'ip link set lo up' must work in CI "
                        f"(CI={os.environ['CI']}); .ci/run installs iproute2")
        return argv
    return [unshare, "-n", "sh", "-c", f'{ip} link set lo up && exec "$@"', "sh", *argv]


# The probe ends a serving uvicorn with SIGTERM, which uvicorn re-raises once it has shut
# down; a refusal is exit code 3.
STOPPED_BY_THE_PROBE = (0, -signal.SIGTERM)


def _uvicorn(host: str, extra_env: dict[str, str], key: str | None = None) -> dict[str, Any]:
    port = free_port()
    argv = [sys.executable, "-m", "tests.support.uvicorn_probe", "--port", str(port),
            *(["--key", key] if key else []), "--",
            "--factory", "app.main:create_app", "--host", host, "--port", str(port)]
    env = _env({"SLEEPWELL_WARMUP": "false", **extra_env})
    result = subprocess.run(_in_private_network(argv), cwd=ROOT, env=env, capture_output=True,
                            text=True, timeout=180, check=False)
    assert result.returncode == 0, result.stdout + result.stderr
    outcome: dict[str, Any] = json.loads(result.stdout.strip().splitlines()[-1])
    return {**outcome, "port": port}


def test_uvicorn_direct_wildcard_host_without_keys_exits_before_answering() -> None:
    # SLEEPWELL_HOST says loopback; uvicorn's --host is what is really bound.
    outcome = _uvicorn("0.0.0.0", {"SLEEPWELL_HOST": "127.0.0.1"})
    output = outcome["output"]
    assert outcome["returncode"] == 3, output[-3000:]
    assert outcome["answers"] == [], "not one request may be answered, not even an error"
    (refusal,) = [json.loads(line) for line in output.splitlines()
                  if line.startswith("{") and "protected mode" in line]
    # The socket uvicorn really bound (its --port; SLEEPWELL_PORT is another free port).
    assert refusal["level"] == "ERROR" and f"0.0.0.0:{outcome['port']}" in refusal["message"]
    assert "SLEEPWELL_API_KEYS" in refusal["message"] and "--host 127.0.0.1" in refusal["message"]
    assert "Traceback" not in output and "Application startup complete" in output


@pytest.mark.parametrize(
    ("extra_env", "key"),
    [({"SLEEPWELL_API_KEYS": "sk-uvicorn-direct"}, "sk-uvicorn-direct"),
     ({"SLEEPWELL_ALLOW_UNAUTHENTICATED": "true"}, None)],
    ids=["keys", "allow-unauthenticated"],
)
def test_uvicorn_direct_wildcard_host_serves_with_keys_or_when_allowed(
    extra_env: dict[str, str], key: str | None
) -> None:
    outcome = _uvicorn("0.0.0.0", extra_env, key)
    assert outcome["answers"][-1:] == [200], outcome["output"][-3000:]
    assert outcome["returncode"] in STOPPED_BY_THE_PROBE
    warned = "SECURITY WARNING" in outcome["output"]
    assert warned == (key is None), "warn exactly when an exposed API has no keys"


def test_uvicorn_direct_loopback_host_serves_without_keys_whatever_sleepwell_host_says() -> None:
    outcome = _uvicorn("127.0.0.1", {"SLEEPWELL_HOST": "0.0.0.0"})
    assert outcome["answers"][-1:] == [200], outcome["output"][-3000:]
    assert outcome["returncode"] in STOPPED_BY_THE_PROBE
    assert "protected mode" not in outcome["output"]


def test_create_app_checks_keys_file_but_not_sleepwell_host() -> None:
    create_app(Settings(host="0.0.0.0"))  # the real sockets decide, once bound
    with pytest.raises(SystemExit, match="SLEEPWELL_API_KEYS_FILE"):
        create_app(Settings(api_keys_file=Path("/nonexistent/sleepwell-keys")))
