"""A worker's start says nothing but JSON, and no library warns (issue 20, item 2).

The whole `make run` start and stop is proven in tests/deploy/test_first_start.py; these
are the parts one by one, each in the process state the service has.
"""

from __future__ import annotations

import json
import logging
import os
import stat
import subprocess
import sys
import tempfile
import textwrap
import warnings
from pathlib import Path

import pytest

from app.observability.logging_setup import WorkerStopSignalFilter
from app.serving.gunicorn_support import prepare_runtime_dir
from app.settings import Settings
from tests.support.server import ROOT

# A worker's first start in a fresh process: logging set up as create_app does, the demo
# model built (its scheduler config) and loaded the way every model is (diffusers and
# transformers: the torchvision and accelerate warnings were printed here).
_WORKER_START = textwrap.dedent("""
    import sys
    from pathlib import Path
    from app.observability.logging_setup import configure_logging
    from app.serving.demo_model import ensure_demo_model
    from app.serving.model import load_model
    from app.settings import Settings

    settings = Settings(_env_file=None, demo_model_dir=Path(sys.argv[1]), device="cpu",
                        warmup=False)
    configure_logging(settings)
    ensure_demo_model(settings.demo_model_dir)
    load_model(settings)
""")
_PROJECT_LOGGERS = ("sleepwell", "app.")


def _library_warnings(lines: list[str]) -> list[dict[str, object]]:
    entries = [json.loads(line) for line in lines]  # a plain-text line fails here
    return [entry for entry in entries if entry["level"] in ("WARNING", "ERROR", "CRITICAL")
            and not str(entry["logger"]).startswith(_PROJECT_LOGGERS)]


def test_worker_first_start_builds_and_loads_demo_model_with_only_json_and_no_warning(
    tmp_path: Path,
) -> None:
    env = {key: value for key, value in os.environ.items()
           if not key.startswith("SLEEPWELL_")}
    result = subprocess.run(
        [sys.executable, "-c", _WORKER_START, str(tmp_path / "demo-model")],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 0, result.stderr
    lines = [line for line in (result.stdout + result.stderr).splitlines() if line.strip()]
    assert lines, "the load logged nothing: the check below would prove nothing"
    assert _library_warnings(lines) == []


def test_demo_pipeline_scheduler_config_needs_no_deprecation_rewrite(tmp_path: Path) -> None:
    from app.serving.demo_model import build_demo_pipeline

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        pipeline = build_demo_pipeline(tmp_path / "raw-tokenizer")
    assert pipeline.scheduler.config.steps_offset == 1
    assert [str(warning.message) for warning in caught
            if issubclass(warning.category, FutureWarning | DeprecationWarning)] == []


@pytest.fixture
def private_tmp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """tempfile's directory moved to ``tmp_path``; XDG_RUNTIME_DIR unset; both restored."""
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    monkeypatch.delenv("XDG_RUNTIME_DIR", raising=False)
    return tmp_path


def test_prepare_runtime_dir_unset_exports_a_private_dir_platformdirs_accepts(
    private_tmp: Path,
) -> None:
    import platformdirs

    directory = prepare_runtime_dir(Settings(_env_file=None))
    assert directory is not None and directory.parent == private_tmp
    assert os.environ["XDG_RUNTIME_DIR"] == str(directory)
    assert stat.S_IMODE(directory.stat().st_mode) == 0o700
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        runtime = platformdirs.user_runtime_path("sleepwell-test")
    assert runtime.is_relative_to(directory)
    assert [str(warning.message) for warning in caught] == []


def test_prepare_runtime_dir_keeps_the_one_the_environment_sets(
    private_tmp: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    own = private_tmp / "own-runtime"
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(own))
    assert prepare_runtime_dir(Settings(_env_file=None)) == own
    assert os.environ["XDG_RUNTIME_DIR"] == str(own)
    assert not (private_tmp / f"sleepwell-runtime-{os.getuid()}").exists()


def test_prepare_runtime_dir_someone_elses_path_leaves_the_variable_unset(
    private_tmp: Path,
) -> None:
    (private_tmp / f"sleepwell-runtime-{os.getuid()}").write_text("not a directory")
    assert prepare_runtime_dir(Settings(_env_file=None)) is None
    assert "XDG_RUNTIME_DIR" not in os.environ


@pytest.mark.parametrize(("signal_name", "level"), [
    ("SIGINT", logging.INFO), ("SIGQUIT", logging.INFO),  # Ctrl-C, the quick shutdown
    ("SIGKILL", logging.WARNING), ("SIGSEGV", logging.WARNING),  # not a stop: still warns
])
def test_worker_stop_signal_filter_only_stop_signals_become_info(
    signal_name: str, level: int,
) -> None:
    # The record gunicorn's arbiter makes when it reaps a worker a signal ended.
    record = logging.LogRecord("gunicorn.error", logging.WARNING, "arbiter.py", 675,
                               "Worker (pid:%s) was sent %s!", (4321, signal_name), None)
    assert WorkerStopSignalFilter().filter(record)
    assert (record.levelno, record.levelname) == (level, logging.getLevelName(level))
