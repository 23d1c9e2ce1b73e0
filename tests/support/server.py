"""Run the real service (gunicorn + uvicorn workers) on loopback for end-to-end tests."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[2]
VENV_BIN = Path(sys.executable).parent
DEMO_MODEL_DIR = ROOT / ".cache" / "demo-model"

# Small, fast defaults for tests: 64x64, few steps.
TEST_ENV = {
    "SLEEPWELL_HOST": "127.0.0.1",
    "SLEEPWELL_WORKERS": "1",
    "SLEEPWELL_DEVICE": "cpu",
    "SLEEPWELL_DEFAULT_STEPS": "2",
    "SLEEPWELL_DEMO_MODEL_DIR": str(DEMO_MODEL_DIR),
    "SLEEPWELL_GRACEFUL_TIMEOUT_S": "20",
    "SLEEPWELL_LOG_LEVEL": "info",
    # Jobs need a database; tests that use jobs turn them on with their own (tests/jobs).
    "SLEEPWELL_JOBS_ENABLED": "false",
}


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class RunningServer:
    process: subprocess.Popen[bytes]
    port: int
    log_path: Path
    metrics_dir: Path
    env: dict[str, str] = field(default_factory=dict)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def client(self, timeout: float = 60.0) -> httpx.Client:
        return httpx.Client(base_url=self.url, timeout=timeout)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def worker_pids(self) -> list[int]:
        """Children of the gunicorn master, from /proc (no psutil needed)."""
        pids = []
        for status in Path("/proc").glob("[0-9]*/status"):
            try:
                text = status.read_text()
            except OSError:
                continue
            if f"PPid:\t{self.process.pid}\n" in text:
                pids.append(int(status.parent.name))
        return sorted(pids)

    def wait_ready(self, timeout: float = 120.0, workers: int | None = None) -> None:
        """Until /health/ready answers 200 (on ``workers`` distinct pids when given)."""
        deadline = time.monotonic() + timeout
        seen: set[int] = set()
        wanted = workers or 1
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"server exited early:\n{self.log()[-4000:]}")
            try:
                response = httpx.get(f"{self.url}/health/ready", timeout=2)
                enough = wanted == 1 or len(self.ready_worker_pids()) >= wanted
                if response.status_code == 200 and enough:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        raise TimeoutError(f"not ready in {timeout}s (seen {seen}):\n{self.log()[-4000:]}")

    def ready_worker_pids(self) -> set[int]:
        """Workers whose model_ready gauge is 1, read from the metrics exposition."""
        token = self.env.get("SLEEPWELL_METRICS_TOKEN")
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        text = httpx.get(f"{self.url}/metrics", headers=headers, timeout=5).text
        ready = set()
        for line in text.splitlines():
            if line.startswith("model_ready{") and line.rstrip().endswith(" 1.0"):
                pid = line.split('pid="', 1)[1].split('"', 1)[0]
                ready.add(int(pid))
        return ready

    def kill(self) -> list[int]:
        """SIGKILL the master and its workers at once: a crash, not a stop. The workers."""
        workers = self.worker_pids()
        os.kill(self.process.pid, signal.SIGKILL)
        for pid in workers:
            with suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        self.process.wait(10)
        return workers

    def stop(self, timeout: float = 30.0) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)
        return int(self.process.returncode)


@contextmanager
def gunicorn_server(
    extra_env: dict[str, str] | None = None, *, wait: bool = True, workers: int = 1,
    port: int | None = None, ready_timeout: float = 120.0,
) -> Iterator[RunningServer]:
    """Start ``gunicorn -c gunicorn.conf.py`` exactly as ``make run`` does, on a free port."""
    port = port or free_port()
    work = Path(tempfile.mkdtemp(prefix="sleepwell-test-"))
    metrics_dir = work / "metrics"
    env = {
        **os.environ,
        **TEST_ENV,
        "SLEEPWELL_PORT": str(port),
        "SLEEPWELL_WORKERS": str(workers),
        "PROMETHEUS_MULTIPROC_DIR": str(metrics_dir),
        **(extra_env or {}),
    }
    log_path = work / "server.log"
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            [str(VENV_BIN / "gunicorn"), "-c", str(ROOT / "gunicorn.conf.py")],
            cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT,
        )
    server = RunningServer(process, port, log_path, metrics_dir, env)
    try:
        if wait:
            server.wait_ready(timeout=ready_timeout, workers=workers)
        yield server
    finally:
        server.stop()
        shutil.rmtree(work, ignore_errors=True)
