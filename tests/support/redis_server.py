"""A ``redis-server`` owned by the test session: loopback, a free port, no persistence.

Tests never rely on a Redis the machine happens to run: a fresh machine has none, and a
shared one may hold other people's keys. ``.ci/run`` installs the ``redis-server``
package when it is missing.
"""

from __future__ import annotations

import ctypes
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path

import redis

from tests.support.processes import stop_process
from tests.support.server import free_port

_PR_SET_PDEATHSIG = 1
START_TIMEOUT_S = 20.0


def _die_with_parent() -> None:
    # If the test session is SIGKILLed, the kernel stops the server too (Linux only).
    with suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


def _wait_for_ping(url: str, process: subprocess.Popen[bytes], log: Path) -> bool:
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        if process.poll() is not None:
            return False
        try:
            with redis.Redis.from_url(url, socket_timeout=1, socket_connect_timeout=1) as client:
                if client.ping():
                    return True
        except redis.RedisError:
            time.sleep(0.05)
    raise TimeoutError(f"redis-server did not answer PING in {START_TIMEOUT_S}s:\n"
                       f"{log.read_text(errors='replace')[-2000:]}")


@contextmanager
def redis_server(attempts: int = 3) -> Iterator[str]:
    """Start ``redis-server`` on 127.0.0.1:<free port>; yield its URL; kill it at the end."""
    binary = shutil.which("redis-server")
    if binary is None:
        raise FileNotFoundError("redis-server is not installed (.ci/run apt-installs it)")
    workdir = Path(tempfile.mkdtemp(prefix="sleepwell-redis-"))
    try:
        for _ in range(attempts):  # the free port may be taken before redis binds it
            port = free_port()
            log = workdir / f"redis-{port}.log"
            with log.open("wb") as out:
                process = subprocess.Popen(
                    [binary, "--bind", "127.0.0.1", "--port", str(port), "--save", "",
                     "--appendonly", "no", "--dir", str(workdir), "--daemonize", "no",
                     "--protected-mode", "yes"],
                    stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                    preexec_fn=_die_with_parent,
                )
            url = f"redis://127.0.0.1:{port}/0"
            try:
                if _wait_for_ping(url, process, log):
                    yield url
                    return
            finally:
                stop_process(process)
        raise RuntimeError(f"redis-server did not start in {attempts} attempts:\n"
                           f"{log.read_text(errors='replace')[-2000:]}")
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
