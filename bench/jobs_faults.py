"""100 jobs on two service instances sharing one PostgreSQL, while things die.

Two "machines": two gunicorn masters on different ports, 2 workers each, one database.
During the run: a worker that is running jobs is SIGKILLed three times, one whole master
(with its workers) is SIGKILLed and started again, and PostgreSQL is restarted once. A
thread keeps calling the sync API throughout. At the end every job must be ``succeeded``
exactly once, none lost.

    .venv/bin/python bench/jobs_faults.py            # 100 jobs
    .venv/bin/python bench/jobs_faults.py --jobs 40  # quicker
"""

from __future__ import annotations

import argparse
import os
import signal
import statistics
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.jobs.helpers import auth  # noqa: E402
from tests.jobs.postgres import TestPostgres, query  # noqa: E402
from tests.support.server import RunningServer, free_port, gunicorn_server  # noqa: E402

KEY = "bench-key"
PROMPT = "[[slow=0.15]] a lighthouse at night"  # ~0.6 s a job: kills land mid-job


def env(url: str) -> dict[str, str]:
    return {"SLEEPWELL_JOBS_ENABLED": "true", "SLEEPWELL_DATABASE_URL": url,
            "SLEEPWELL_FAULT_INJECTION": "true", "SLEEPWELL_API_KEYS": KEY,
            "SLEEPWELL_LOG_LEVEL": "warning"}


class SyncProbe(threading.Thread):
    """Calls the sync API on both instances until stopped; counts answers by status."""

    def __init__(self, ports: list[int]) -> None:
        super().__init__(daemon=True)
        self.ports, self.codes, self.stopped = ports, {}, threading.Event()

    def run(self) -> None:
        body = {"prompt": "sync", "size": "64x64", "num_inference_steps": 2}
        while not self.stopped.is_set():
            for port in self.ports:
                try:
                    code = httpx.post(f"http://127.0.0.1:{port}/v1/images/generations",
                                      json=body, headers=auth(KEY), timeout=30).status_code
                except httpx.HTTPError:
                    code = 0  # the instance we just killed
                self.codes[code] = self.codes.get(code, 0) + 1
            time.sleep(0.5)


@contextmanager
def instance(url: str, port: int) -> Iterator[RunningServer]:
    with gunicorn_server(env(url), workers=2, port=port, ready_timeout=180) as server:
        yield server


def counts(url: str) -> dict[str, int]:
    rows = query(url, "SELECT status, count(*) FROM sleepwell_jobs GROUP BY status")
    return {status: int(n) for status, n in rows}


def wait_succeeded(url: str, at_least: int, timeout: float = 600) -> None:
    deadline = time.monotonic() + timeout
    while counts(url).get("succeeded", 0) < at_least:
        if time.monotonic() > deadline:
            raise TimeoutError(f"fewer than {at_least} succeeded: {counts(url)}")
        time.sleep(0.2)


def running_on(url: str, pids: list[int]) -> tuple[int, list[str]] | None:
    rows = query(url, "SELECT id, worker FROM sleepwell_jobs WHERE status = 'running'")
    for pid in pids:
        ids = [job_id for job_id, worker in rows if str(worker).endswith(f":{pid}")]
        if ids:
            return pid, ids
    return None


def kill_busy_worker(url: str, server: RunningServer) -> tuple[float, list[str]]:
    deadline = time.monotonic() + 60
    while (found := running_on(url, server.worker_pids())) is None:
        if time.monotonic() > deadline:
            raise TimeoutError("no worker was running a job")
        time.sleep(0.05)
    pid, ids = found
    os.kill(pid, signal.SIGKILL)
    return time.time(), ids


def kill_master(server: RunningServer) -> tuple[float, list[int]]:
    workers = server.kill()
    return time.time(), workers


def redelivery_delays(url: str, kills: list[tuple[float, list[str]]]) -> list[float]:
    """Per job that was running on a killed process: kill -> its next start (any worker)."""
    delays = []
    for number, (killed_at, ids) in enumerate(kills):
        print(f"kill {number + 1}: {len(ids)} job(s) were running on it", file=sys.stderr)
        for job_id in ids:
            rows = query(url, "SELECT EXTRACT(EPOCH FROM started_at) FROM sleepwell_jobs"
                         " WHERE id = %s", (job_id,))
            started = float(rows[0][0])
            if started > killed_at:
                delays.append(started - killed_at)
                print(f"  {job_id} restarted after {started - killed_at:.2f}s", file=sys.stderr)
    return delays


def submit_all(ports: list[int], total: int) -> list[str]:
    ids = []
    for number in range(total):
        port = ports[number % len(ports)]
        response = httpx.post(f"http://127.0.0.1:{port}/v1/jobs", headers=auth(KEY), timeout=30,
                              json={"prompt": PROMPT, "size": "64x64", "num_inference_steps": 4})
        response.raise_for_status()
        ids.append(response.json()["id"])
    return ids


def run(total: int) -> dict[str, object]:
    postgres = TestPostgres()
    postgres.start()
    url = postgres.new_database()
    ports = [free_port(), free_port()]
    kills: list[tuple[float, list[str]]] = []
    with ExitStack() as stack:
        stack.callback(postgres.close)
        first = stack.enter_context(instance(url, ports[0]))
        second = stack.enter_context(instance(url, ports[1]))
        probe = SyncProbe(ports)
        probe.start()
        started = time.monotonic()
        submit_all(ports, total)
        for fraction in (0.1, 0.25, 0.4):  # three worker kills, on alternating machines
            wait_succeeded(url, int(total * fraction))
            kills.append(kill_busy_worker(url, first if len(kills) % 2 == 0 else second))
        wait_succeeded(url, int(total * 0.55))
        running = query(url, "SELECT id, worker FROM sleepwell_jobs WHERE status = 'running'")
        killed_at, pids = kill_master(second)
        kills.append((killed_at, [i for i, w in running if int(str(w).rsplit(":")[1]) in pids]))
        stack.enter_context(instance(url, ports[1]))  # "the box comes back"
        wait_succeeded(url, int(total * 0.7))
        postgres.stop()
        time.sleep(2.0)  # an outage, not a blip (the only sleep: it *is* the fault)
        postgres.restart_stopped()
        deadline = time.monotonic() + 600
        while sum(counts(url).get(s, 0) for s in ("succeeded", "failed", "cancelled")) < total:
            if time.monotonic() > deadline:
                raise TimeoutError(f"not all jobs ended: {counts(url)}")
            time.sleep(0.2)
        elapsed = time.monotonic() - started
        probe.stopped.set()
        probe.join(60)
        rows = query(url, "SELECT status, attempts, completions FROM sleepwell_jobs")
        delays = redelivery_delays(url, kills)
    final = [status for status, _, _ in rows]
    return {
        "jobs": total, "succeeded": final.count("succeeded"), "lost": total - len(final)
        + sum(1 for s in final if s not in ("succeeded", "failed", "cancelled")),
        "failed": final.count("failed"),
        "redelivered": sum(1 for _, attempts, _ in rows if attempts > 1),
        "duplicates executed": sum(max(0, completions - 1) for _, _, completions in rows),
        "redelivery p50 s": statistics.median(delays) if delays else float("nan"),
        "redelivery max s": max(delays) if delays else float("nan"),
        "total s": elapsed, "sync answers": dict(sorted(probe.codes.items())),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=100)
    args = parser.parse_args()
    result = run(args.jobs)
    print("2 instances x 2 workers, one PostgreSQL; 3 worker SIGKILLs, 1 master SIGKILL +"
          " restart, 1 PostgreSQL restart")
    for name, value in result.items():
        shown = f"{value:.2f}" if isinstance(value, float) else str(value)
        print(f"{name:<22}{shown}")
    if result["succeeded"] != args.jobs or result["lost"]:
        sys.exit(1)


if __name__ == "__main__":
    main()
