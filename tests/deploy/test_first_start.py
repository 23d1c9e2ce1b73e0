"""A new user's first `make run` (issue 20): a fresh copy of the checkout starts and stops
with nothing but JSON on its output, no library warning, one line that says what to open,
and its `.env` read, with the environment still winning."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.support.fresh_checkout import MakeRun, fresh_copy, make_run
from tests.support.server import ROOT, free_port
from tests.support.waiting import wait_until

READY_LINE = "Sleepwell is ready"
# Ours: the service's own loggers. Everything else is a library (gunicorn, uvicorn, saq,
# diffusers, transformers, py.warnings ...) and must stay below WARNING on a clean start.
PROJECT_LOGGERS = ("sleepwell", "app.")


def _start(run: MakeRun) -> list[str]:
    """Ready, then the startup line (written after the load that makes it ready): the
    served model ids."""
    run.wait_ready()
    models = httpx.get(f"{run.url}/v1/models", timeout=10).json()
    wait_until(lambda: any(READY_LINE in line for line in run.output_lines()), 30,
               what="the startup line")
    return [model["id"] for model in models["data"]]


def _assert_clean_json_with_one_ready_line(run: MakeRun) -> None:
    lines = [line for line in run.output_lines() if line.strip()]
    entries = [json.loads(line) for line in lines]  # any plain-text line fails here
    noisy = [entry for entry in entries if entry["level"] in ("WARNING", "ERROR", "CRITICAL")
             and not str(entry["logger"]).startswith(PROJECT_LOGGERS)]
    assert noisy == []
    assert any(entry["message"] == "Shutting down: Master" for entry in entries)
    # One line per start, however many workers.
    (ready,) = [entry for entry in entries if str(entry["message"]).startswith(READY_LINE)]
    base = f"http://127.0.0.1:{run.port}"
    assert ready["level"] == "INFO"
    assert (ready["api"], ready["ui"], ready["docs"]) == (f"{base}/v1", f"{base}/ui",
                                                          f"{base}/docs")
    assert (ready["model"], ready["device"]) == ("from-dotenv", "cpu")
    data = run.checkout / ".cache" / "postgres"
    assert ready["postgres_data"] == str(data)
    for value in (base, "/ui", "/docs", "from-dotenv", "cpu", str(data)):
        assert value in str(ready["message"])


@pytest.fixture
def checkout() -> Iterator[Path]:
    with fresh_copy() as copy:
        yield copy


def test_make_run_fresh_checkout_logs_only_json_says_what_to_open_and_reads_dotenv(
    checkout: Path,
) -> None:
    # The port is in both: the environment's must win; the model name only in the file.
    (checkout / ".env").write_text(
        f"SLEEPWELL_MODEL_NAME=from-dotenv\nSLEEPWELL_PORT={free_port()}\n", encoding="utf-8"
    )
    # The first start builds the demo model and the database; Ctrl-C stops it, as in a
    # terminal. The restart finds both; it is stopped as systemd or `docker stop` does.
    with make_run(checkout, free_port()) as first:
        assert _start(first) == ["from-dotenv"]
        assert first.interrupt() in (0, -signal.SIGINT)
    with make_run(checkout, free_port()) as restart:
        assert _start(restart) == ["from-dotenv"]
        assert restart.stop() == 0
    for run in (first, restart):
        _assert_clean_json_with_one_ready_line(run)


# Settings read in a process of its own, as gunicorn's would be: the suite's own processes
# read no .env (tests/conftest.py sets SLEEPWELL_ENV_FILE empty).
READ_SETTINGS = (
    "from app.settings import Settings; s = Settings(); print(s.model_name, s.max_queue)"
)


@pytest.fixture
def directory_with_dotenv(tmp_path: Path) -> Path:
    (tmp_path / ".env").write_text(
        "# a comment\nSLEEPWELL_MODEL_NAME=from-dotenv\nSLEEPWELL_MAX_QUEUE=3\n"
        "HF_HOME=/not/a/setting\n", encoding="utf-8",
    )
    return tmp_path


def settings_read_in(directory: Path, **environment: str) -> list[str]:
    """(model_name, max_queue) as a fresh process in ``directory`` reads them."""
    env = {key: value for key, value in os.environ.items()
           if not key.startswith("SLEEPWELL_")}
    done = subprocess.run([sys.executable, "-c", READ_SETTINGS], cwd=directory,
                          env={**env, "PYTHONPATH": str(ROOT), **environment},
                          capture_output=True, text=True, timeout=120, check=True)
    return done.stdout.split()


def test_settings_dotenv_in_working_directory_supplies_values(
    directory_with_dotenv: Path,
) -> None:
    assert settings_read_in(directory_with_dotenv) == ["from-dotenv", "3"]


def test_settings_environment_variable_beats_dotenv(directory_with_dotenv: Path) -> None:
    read = settings_read_in(directory_with_dotenv, SLEEPWELL_MODEL_NAME="from-environment")
    assert read == ["from-environment", "3"]


def test_settings_env_file_empty_reads_no_dotenv(directory_with_dotenv: Path) -> None:
    assert settings_read_in(directory_with_dotenv, SLEEPWELL_ENV_FILE="") == ["None", "16"]
