"""What a restart costs: SIGKILL the gunicorn master and time until /health/ready is 200.

Two supervisors:

* ``--mode systemd`` (where systemd is PID 1 and the unit is installed and running):
  SIGKILL the unit's MainPID and let systemd do the restart.
* ``--mode loop`` (everywhere else, e.g. containers and CI): a small supervisor loop that
  applies the unit file's own ``Restart=``, ``RestartSec=``, ``KillMode=`` and
  ``TimeoutStopSec=``, read from deploy/systemd/sleepwell.service. It starts gunicorn
  exactly like ``make run`` (demo model, CPU, loopback, a free port).

``--mode auto`` (the default) picks systemd when it can, else the loop.

    .venv/bin/python bench/restart_cost.py --runs 3

prints one row per kill: how long the supervisor took to notice the death and clean up,
when it respawned gunicorn, and the total seconds from SIGKILL until ready again.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from tests.support.server import DEMO_MODEL_DIR, TEST_ENV, VENV_BIN, free_port  # noqa: E402

UNIT_FILE = ROOT / "deploy" / "systemd" / "sleepwell.service"
POLL_S = 0.05
READY_TIMEOUT_S = 180.0

# systemd's "clean" signals: a service killed by one of them exited successfully.
CLEAN_SIGNALS = {signal.SIGHUP, signal.SIGINT, signal.SIGTERM, signal.SIGPIPE}


# --- the unit file -----------------------------------------------------------------------
@dataclass(frozen=True)
class UnitPolicy:
    restart: str = "no"
    restart_sec: float = 0.1  # systemd's default RestartSec
    kill_mode: str = "control-group"
    timeout_stop_sec: float = 90.0


_SPAN_UNITS = {
    "us": 1e-6, "usec": 1e-6, "ms": 1e-3, "msec": 1e-3,
    "s": 1.0, "sec": 1.0, "second": 1.0, "seconds": 1.0,
    "m": 60.0, "min": 60.0, "minute": 60.0, "minutes": 60.0,
    "h": 3600.0, "hr": 3600.0, "hour": 3600.0, "hours": 3600.0,
}


def parse_timespan(text: str) -> float:
    """systemd.time(7) spans: '5' (seconds), '500ms', '1min 30s', 'infinity'."""
    text = text.strip()
    if text == "infinity":
        return float("inf")
    if re.fullmatch(r"\d+(\.\d+)?", text):
        return float(text)
    total = 0.0
    consumed = 0
    for match in re.finditer(r"\s*(\d+(?:\.\d+)?)\s*([a-z]+)", text):
        unit = match.group(2)
        if unit not in _SPAN_UNITS:
            raise ValueError(f"unknown time unit {unit!r} in {text!r}")
        total += float(match.group(1)) * _SPAN_UNITS[unit]
        consumed = match.end()
    if consumed != len(text) or not text:
        raise ValueError(f"not a systemd time span: {text!r}")
    return total


def parse_unit(path: Path) -> UnitPolicy:
    """The restart and stop policy from the [Service] section (the last assignment wins)."""
    values: dict[str, str] = {}
    section = ""
    for raw in path.read_text(encoding="utf-8").splitlines():
        line = raw.strip()
        if not line or line[0] in "#;":
            continue
        if line.startswith("[") and line.endswith("]"):
            section = line[1:-1]
            continue
        if section == "Service" and "=" in line:
            key, value = line.split("=", 1)
            values[key.strip()] = value.strip()
    defaults = UnitPolicy()
    return UnitPolicy(
        restart=values.get("Restart", defaults.restart),
        restart_sec=parse_timespan(values["RestartSec"]) if "RestartSec" in values
        else defaults.restart_sec,
        kill_mode=values.get("KillMode", defaults.kill_mode),
        timeout_stop_sec=parse_timespan(values["TimeoutStopSec"])
        if "TimeoutStopSec" in values else defaults.timeout_stop_sec,
    )


def should_restart(restart: str, returncode: int) -> bool:
    """systemd.service(5)'s Restart= table for a main process that exited by itself.

    ``returncode`` is Popen's: negative for death by a signal.
    """
    if restart == "always":
        return True
    if restart == "no" or restart == "on-watchdog":
        return False
    killed_by = signal.Signals(-returncode) if returncode < 0 else None
    clean = returncode == 0 or killed_by in CLEAN_SIGNALS
    if restart == "on-success":
        return clean
    if restart == "on-failure":
        return not clean
    if restart in ("on-abnormal", "on-abort"):
        return killed_by is not None and not clean
    raise ValueError(f"unknown Restart={restart}")


# --- the loop supervisor -----------------------------------------------------------------
def _group_members(pgid: int) -> list[int]:
    """Live (non-zombie) processes in a process group, from /proc."""
    members = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            text = stat.read_text()
        except OSError:
            continue
        fields = text.rsplit(")", 1)[-1].split()
        if len(fields) > 2 and fields[0] != "Z" and int(fields[2]) == pgid:
            members.append(int(stat.parent.name))
    return members


@dataclass
class Spawn:
    pid: int
    started: float


@dataclass
class Death:
    pid: int
    returncode: int
    noticed: float
    cleaned: float
    restarted: bool


class LoopSupervisor:
    """Run a command and restart it the way systemd would with the unit's policy."""

    def __init__(self, policy: UnitPolicy, command: list[str], env: dict[str, str],
                 cwd: Path, log_path: Path, max_restarts: int = 20) -> None:
        self.policy = policy
        self.command = command
        self.env = env
        self.cwd = cwd
        self.log_path = log_path
        self.max_restarts = max_restarts
        self.spawns: list[Spawn] = []
        self.deaths: list[Death] = []
        self._process: subprocess.Popen[bytes] | None = None
        self._stopping = threading.Event()
        self._changed = threading.Condition()
        self._thread = threading.Thread(target=self._run, name="supervisor", daemon=True)

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process else None

    def start(self) -> None:
        self._spawn()
        self._thread.start()

    def _spawn(self) -> None:
        with self.log_path.open("ab") as log:
            # A new session = its own process group, standing in for the unit's cgroup.
            process = subprocess.Popen(
                self.command, cwd=self.cwd, env=self.env, stdout=log,
                stderr=subprocess.STDOUT, start_new_session=True,
            )
        with self._changed:
            self._process = process
            self.spawns.append(Spawn(process.pid, time.monotonic()))
            self._changed.notify_all()

    def _clean_up_group(self, pgid: int) -> None:
        """What systemd does to the rest of the cgroup once the main process has died."""
        if self.policy.kill_mode == "none":
            return
        first = signal.SIGKILL if self.policy.kill_mode == "mixed" else signal.SIGTERM
        if self.policy.kill_mode == "process":
            return  # only the main process is killed; it is already dead
        deadline = time.monotonic() + min(self.policy.timeout_stop_sec, 120.0)
        sent = None
        while _group_members(pgid):
            if sent is None:
                sent = first
                self._signal_group(pgid, first)
            elif time.monotonic() > deadline and sent != signal.SIGKILL:
                sent = signal.SIGKILL
                self._signal_group(pgid, signal.SIGKILL)
            elif time.monotonic() > deadline + 10:
                break
            time.sleep(0.02)

    @staticmethod
    def _signal_group(pgid: int, sig: signal.Signals) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pgid, sig)

    def _run(self) -> None:
        restarts = 0
        while not self._stopping.is_set():
            process = self._process
            assert process is not None
            returncode = process.wait()
            noticed = time.monotonic()
            self._clean_up_group(process.pid)
            cleaned = time.monotonic()
            restart = (not self._stopping.is_set()
                       and should_restart(self.policy.restart, returncode)
                       and restarts < self.max_restarts)
            with self._changed:
                self.deaths.append(Death(process.pid, returncode, noticed, cleaned, restart))
                self._changed.notify_all()
            if not restart:
                return
            if self._stopping.wait(self.policy.restart_sec):
                return
            restarts += 1
            self._spawn()

    def wait_for_spawn(self, count: int, timeout: float) -> Spawn:
        with self._changed:
            if not self._changed.wait_for(lambda: len(self.spawns) >= count, timeout):
                raise TimeoutError(f"no spawn #{count} within {timeout}s")
            return self.spawns[count - 1]

    def stop(self, timeout: float = 40.0) -> None:
        self._stopping.set()
        process = self._process
        if process is not None and process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(10)
        if process is not None:
            self._signal_group(process.pid, signal.SIGKILL)
        self._thread.join(timeout=timeout)


# --- measuring ---------------------------------------------------------------------------
@dataclass
class Row:
    run: int
    supervisor: str
    old_pid: int
    new_pid: int
    restart_sec: float
    noticed_s: float | None  # SIGKILL -> supervisor saw the exit
    cleaned_s: float | None  # SIGKILL -> leftover workers gone
    respawned_s: float | None  # SIGKILL -> new master started (includes RestartSec)
    ready_s: float  # SIGKILL -> /health/ready 200 again
    notes: list[str] = field(default_factory=list)


def wait_ready(url: str, deadline: float, alive: Callable[[], bool] | None = None) -> float:
    """Poll /health/ready until 200; the monotonic time it first answered 200."""
    with httpx.Client(timeout=1.0) as client:
        while time.monotonic() < deadline:
            try:
                if client.get(f"{url}/health/ready").status_code == 200:
                    return time.monotonic()
            except httpx.HTTPError:
                pass
            if alive is not None and not alive():
                raise RuntimeError("the supervisor gave up")
            time.sleep(POLL_S)
    raise TimeoutError(f"{url} not ready in time")


def measure_loop(runs: int, unit: Path, workers: int, log_dir: Path) -> list[Row]:
    from app.serving.demo_model import ensure_demo_model

    ensure_demo_model(DEMO_MODEL_DIR)
    policy = parse_unit(unit)
    port = free_port()
    env = {
        **os.environ,
        **TEST_ENV,
        "SLEEPWELL_PORT": str(port),
        "SLEEPWELL_WORKERS": str(workers),
        "PROMETHEUS_MULTIPROC_DIR": str(log_dir / "metrics"),
    }
    command = [str(VENV_BIN / "gunicorn"), "-c", str(ROOT / "gunicorn.conf.py")]
    supervisor = LoopSupervisor(policy, command, env, ROOT, log_dir / "server.log",
                                max_restarts=runs)
    url = f"http://127.0.0.1:{port}"
    rows = []
    supervisor.start()
    try:
        wait_ready(url, time.monotonic() + READY_TIMEOUT_S)
        for run in range(1, runs + 1):
            old = supervisor.wait_for_spawn(run, 5)
            killed = time.monotonic()
            os.kill(old.pid, signal.SIGKILL)
            new = supervisor.wait_for_spawn(run + 1, policy.timeout_stop_sec + 60)
            ready = wait_ready(url, killed + READY_TIMEOUT_S)
            death = supervisor.deaths[run - 1]
            rows.append(Row(
                run=run, supervisor="loop", old_pid=old.pid, new_pid=new.pid,
                restart_sec=policy.restart_sec,
                noticed_s=death.noticed - killed, cleaned_s=death.cleaned - killed,
                respawned_s=new.started - killed, ready_s=ready - killed,
                notes=[f"exit {death.returncode}"],
            ))
    finally:
        supervisor.stop()
    return rows


def systemd_available(unit_name: str) -> bool:
    if not Path("/run/systemd/system").is_dir():
        return False
    result = subprocess.run(["systemctl", "is-active", unit_name], capture_output=True,
                            text=True, check=False)
    return result.stdout.strip() == "active"


def _main_pid(unit_name: str) -> int:
    result = subprocess.run(["systemctl", "show", "-p", "MainPID", "--value", unit_name],
                            capture_output=True, text=True, check=True)
    return int(result.stdout.strip() or 0)


def measure_systemd(runs: int, unit_name: str, url: str, restart_sec: float) -> list[Row]:
    rows = []
    wait_ready(url, time.monotonic() + READY_TIMEOUT_S)
    for run in range(1, runs + 1):
        old_pid = _main_pid(unit_name)
        killed = time.monotonic()
        os.kill(old_pid, signal.SIGKILL)
        deadline = killed + READY_TIMEOUT_S
        new_pid = 0
        while time.monotonic() < deadline:
            new_pid = _main_pid(unit_name)
            if new_pid not in (0, old_pid):
                break
            time.sleep(POLL_S)
        respawned = time.monotonic()
        ready = wait_ready(url, deadline)
        rows.append(Row(
            run=run, supervisor="systemd", old_pid=old_pid, new_pid=new_pid,
            restart_sec=restart_sec, noticed_s=None, cleaned_s=None,
            respawned_s=respawned - killed, ready_s=ready - killed,
        ))
    return rows


def format_table(rows: list[Row]) -> str:
    def cell(value: float | None) -> str:
        return "-" if value is None else f"{value:.2f}"

    header = ("run", "supervisor", "RestartSec", "noticed_s", "cleaned_s", "respawned_s",
              "boot_s", "ready_s")
    lines = [" | ".join(header), " | ".join("---" for _ in header)]
    for row in rows:
        lines.append(" | ".join((
            str(row.run), row.supervisor, cell(row.restart_sec), cell(row.noticed_s),
            cell(row.cleaned_s), cell(row.respawned_s),
            cell(None if row.respawned_s is None else row.ready_s - row.respawned_s),
            cell(row.ready_s),
        )))
    if rows:
        readies = [row.ready_s for row in rows]
        lines.append("")
        lines.append(
            f"SIGKILL -> ready: min {min(readies):.2f} s, median "
            f"{statistics.median(readies):.2f} s, max {max(readies):.2f} s "
            f"over {len(rows)} kill(s)"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=3, help="kills to time (1-20)")
    parser.add_argument("--mode", choices=("auto", "loop", "systemd"), default="auto")
    parser.add_argument("--unit", type=Path, default=UNIT_FILE,
                        help="unit file whose Restart=/RestartSec= the loop applies")
    parser.add_argument("--workers", type=int, default=1, help="gunicorn workers (loop)")
    parser.add_argument("--unit-name", default="sleepwell.service", help="systemd mode")
    parser.add_argument("--url", default="http://127.0.0.1:8000", help="systemd mode")
    parser.add_argument("--json", action="store_true", help="print JSON rows too")
    args = parser.parse_args(argv)
    if not 1 <= args.runs <= 20:
        parser.error("--runs must be 1..20")

    mode = args.mode
    if mode == "auto":
        mode = "systemd" if systemd_available(args.unit_name) else "loop"
    policy = parse_unit(args.unit)
    print(f"unit {args.unit}: Restart={policy.restart} RestartSec={policy.restart_sec:g}s "
          f"KillMode={policy.kill_mode} TimeoutStopSec={policy.timeout_stop_sec:g}s")
    print(f"supervisor: {mode}")
    if mode == "systemd":
        rows = measure_systemd(args.runs, args.unit_name, args.url, policy.restart_sec)
    else:
        with tempfile.TemporaryDirectory(prefix="sleepwell-restart-") as tmp:
            rows = measure_loop(args.runs, args.unit, args.workers, Path(tmp))
    print(format_table(rows))
    if args.json:
        print(json.dumps([asdict(row) for row in rows]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
