"""Jobs on two service instances sharing one PostgreSQL, while things die or freeze.

Two "machines": two gunicorn masters on different ports, 2 workers each, one database. A
thread keeps calling the sync API throughout. Each repetition starts fresh (database and
instances) and runs three scenarios one after the other, each on its own batch of jobs:

(b) PostgreSQL is stopped mid-run and started again 2 s later;
(c) PostgreSQL is frozen (SIGSTOP on every process, like ``docker compose pause``) for
    10 s, then resumed;
(a) a worker that is running jobs is SIGKILLed three times, then one whole master (with
    its workers) is SIGKILLed and started again.

Every run of every job is read from ``sleepwell_job_runs`` (one row per delivery: worker,
start, end, outcome). An *extra run* is any run after a job's first. It is *explained*
when the run before it was on a process the bench killed (or was handed back); anything
else is *unexplained*: a live job run twice. Redelivery is timed twice: kill -> the sweep
queues the job again (its queue row polled ten times a second), and kill -> the next run's
start (which also waits for a worker with room). Goals: 0 lost, 0 unexplained extra runs,
kill -> requeued <= stuck-after + 2 s.

    .venv/bin/python bench/jobs_faults.py                    # 100 jobs, 3 repetitions
    .ci/with-cpu-hog .venv/bin/python bench/jobs_faults.py   # the same beside a CPU hog
    .venv/bin/python bench/jobs_faults.py --jobs 40 --repeat 1 --scenarios a
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
from contextlib import ExitStack, contextmanager, suppress
from dataclasses import dataclass, field
from itertools import pairwise
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from app.settings import Settings  # noqa: E402
from tests.jobs.helpers import auth  # noqa: E402
from tests.jobs.postgres import TestPostgres, paused, query  # noqa: E402
from tests.support.server import RunningServer, free_port, gunicorn_server  # noqa: E402
from tests.support.waiting import wait_until  # noqa: E402

KEY = "bench-key"
PROMPT = "[[slow=0.15]] a lighthouse at night"  # ~0.6 s a job: kills land mid-job
FINAL = ("succeeded", "failed", "cancelled")
STUCK_AFTER_S = Settings().job_stuck_after_s


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
            self.stopped.wait(0.5)


class QueueWatch(threading.Thread):
    """When each job's queue row turned ``queued`` again (the sweep's requeue): polled ten
    times a second, since the next dequeue overwrites what the row said."""

    def __init__(self, url: str, ids: list[str]) -> None:
        super().__init__(daemon=True)
        self.url, self.ids, self.stopped = url, ids, threading.Event()
        self.requeued: dict[str, list[float]] = {}

    def run(self) -> None:
        last: dict[str, str] = {}
        while not self.stopped.wait(0.1):
            with suppress(Exception):  # the database may be restarting
                rows = query(self.url, "SELECT key, status FROM saq_jobs WHERE key = ANY(%s)",
                             (self.ids,))
                now = time.time()
                for key, status in rows:
                    if status == "queued" and last.get(key) == "active":
                        self.requeued.setdefault(key, []).append(now)
                    last[key] = status


@dataclass
class Batch:
    """One scenario's jobs and what the bench did to the processes running them."""

    url: str
    ids: list[str]
    kills: dict[int, float] = field(default_factory=dict)  # pid -> when it was killed
    watch: QueueWatch | None = None

    def counts(self) -> dict[str, int]:
        rows = query(self.url, "SELECT status, count(*) FROM sleepwell_jobs WHERE id = ANY(%s)"
                     " GROUP BY status", (self.ids,))
        return {status: int(n) for status, n in rows}

    def ended(self) -> int:
        return sum(self.counts().get(status, 0) for status in FINAL)

    def wait_ended(self, at_least: int, timeout: float = 900) -> None:
        wait_until(lambda: self.ended() >= at_least, timeout, period=0.2,
                   what=f"{at_least} jobs ended")

    def open_runs(self) -> list[tuple[str, int]]:
        rows = query(self.url, "SELECT job_id, worker FROM sleepwell_job_runs WHERE"
                     " finished_at IS NULL AND job_id = ANY(%s)", (self.ids,))
        return [(job_id, int(str(worker).rsplit(":", 1)[1])) for job_id, worker in rows]


@contextmanager
def instance(url: str, port: int) -> Iterator[RunningServer]:
    with gunicorn_server(env(url), workers=2, port=port, ready_timeout=300) as server:
        yield server


def submit(ports: list[int], url: str, total: int) -> Batch:
    ids = []
    for number in range(total):
        port = ports[number % len(ports)]
        response = httpx.post(f"http://127.0.0.1:{port}/v1/jobs", headers=auth(KEY), timeout=30,
                              json={"prompt": PROMPT, "size": "64x64", "num_inference_steps": 4})
        response.raise_for_status()
        ids.append(response.json()["id"])
    return Batch(url, ids)


def kill_busy_worker(batch: Batch, server: RunningServer) -> None:
    busy = wait_until(lambda: {pid for _, pid in batch.open_runs()} & set(server.worker_pids()),
                      120, period=0.05, what="a worker running a job")
    pid = min(busy)
    os.kill(pid, signal.SIGKILL)
    batch.kills[pid] = time.time()


def scenario_a(ports: list[int], url: str, total: int, servers: list[RunningServer],
               stack: ExitStack) -> Batch:
    """Three worker kills on alternating instances, then a master kill and restart."""
    batch = submit(ports, url, total)
    batch.watch = QueueWatch(url, batch.ids)
    batch.watch.start()
    for number, fraction in enumerate((0.1, 0.25, 0.4)):
        batch.wait_ended(int(total * fraction))
        kill_busy_worker(batch, servers[number % 2])
    batch.wait_ended(int(total * 0.55))
    killed_at = time.time()
    for pid in servers[1].kill():
        batch.kills[pid] = killed_at
    servers[1] = stack.enter_context(instance(url, ports[1]))  # "the box comes back"
    batch.wait_ended(total)
    batch.watch.stopped.set()
    batch.watch.join(10)
    return batch


def scenario_b(ports: list[int], url: str, total: int, postgres: TestPostgres) -> Batch:
    """PostgreSQL stopped mid-run, started again after a 2 s outage."""
    batch = submit(ports, url, total)
    batch.wait_ended(int(total * 0.3))
    postgres.stop()
    time.sleep(2.0)  # an outage, not a blip (this sleep *is* the fault)
    postgres.restart_stopped()
    batch.wait_ended(total)
    return batch


def scenario_c(ports: list[int], url: str, total: int, postgres: TestPostgres) -> Batch:
    """PostgreSQL frozen for 10 s mid-run, then resumed."""
    batch = submit(ports, url, total)
    batch.wait_ended(int(total * 0.3))
    with paused(postgres):
        time.sleep(10.0)  # the freeze (this sleep *is* the fault)
    batch.wait_ended(total)
    return batch


def report(batch: Batch, elapsed: float) -> dict[str, object]:
    runs = query(batch.url, "SELECT job_id, attempt, worker, EXTRACT(EPOCH FROM started_at),"
                 " outcome FROM sleepwell_job_runs WHERE job_id = ANY(%s)"
                 " ORDER BY job_id, attempt, started_at", (batch.ids,))
    by_job: dict[str, list[tuple[int, float, str | None]]] = {}
    for job_id, _, worker, started, outcome in runs:
        by_job.setdefault(job_id, []).append(
            (int(str(worker).rsplit(":", 1)[1]), float(started), outcome))
    explained = unexplained = 0
    delays, requeues = [], []
    for job_id, job_runs in by_job.items():
        for before, after in pairwise(job_runs):
            pid, _, outcome = before
            if pid in batch.kills:
                explained += 1
                delays.append(after[1] - batch.kills[pid])
                requeued = [at for at in (batch.watch.requeued.get(job_id, [])
                                          if batch.watch else []) if at > batch.kills[pid]]
                if requeued:
                    requeues.append(requeued[0] - batch.kills[pid])
            elif outcome in ("handed_back", "stalled"):
                explained += 1
            else:
                unexplained += 1
    counts = batch.counts()
    return {
        "jobs": len(batch.ids), "succeeded": counts.get("succeeded", 0),
        "lost": len(batch.ids) - sum(counts.get(status, 0) for status in FINAL),
        "failed": counts.get("failed", 0),
        "extra runs, explained": explained, "extra runs, unexplained": unexplained,
        "kill to requeued p50 s": statistics.median(requeues) if requeues else float("nan"),
        "kill to requeued max s": max(requeues) if requeues else float("nan"),
        "kill to next start p50 s": statistics.median(delays) if delays else float("nan"),
        "kill to next start max s": max(delays) if delays else float("nan"),
        "wall s": elapsed,
    }


def repetition(total: int, scenarios: str) -> dict[str, dict[str, object]]:
    postgres = TestPostgres()
    postgres.start()
    url = postgres.new_database()
    ports = [free_port(), free_port()]
    results: dict[str, dict[str, object]] = {}
    with ExitStack() as stack:
        stack.callback(postgres.close)
        servers = [stack.enter_context(instance(url, port)) for port in ports]
        probe = SyncProbe(ports)
        probe.start()
        stack.callback(probe.stopped.set)
        for name in scenarios:  # a last: it kills processes
            started = time.monotonic()
            if name == "a":
                batch = scenario_a(ports, url, total, servers, stack)
            elif name == "b":
                batch = scenario_b(ports, url, total, postgres)
            else:
                batch = scenario_c(ports, url, total, postgres)
            results[name] = report(batch, time.monotonic() - started)
            print(f"  ({name}) {results[name]}", file=sys.stderr, flush=True)
        results["sync answers"] = dict(sorted(probe.codes.items()))
    return results


def print_summary(all_runs: list[dict[str, dict[str, object]]], scenarios: str) -> None:
    print(f"2 instances x 2 workers, one PostgreSQL; stuck-after {STUCK_AFTER_S} s;"
          f" {len(all_runs)} repetition(s); per repetition, in order:")
    columns = list(all_runs[0][scenarios[0]].keys())
    print("| scenario | " + " | ".join(columns) + " |")
    print("|---" * (len(columns) + 1) + "|")
    for name in scenarios:
        for results in all_runs:
            row = results[name]
            cells = [f"{row[c]:.1f}" if isinstance(row[c], float) else str(row[c])
                     for c in columns]
            print(f"| ({name}) | " + " | ".join(cells) + " |")
    for number, results in enumerate(all_runs, 1):
        print(f"sync answers, repetition {number}: {results['sync answers']}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=100)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--scenarios", default="bca", help="any of b, c, a; a runs last")
    args = parser.parse_args()
    scenarios = "".join(sorted(set(args.scenarios), key="bca".index))
    all_runs = []
    for number in range(args.repeat):
        print(f"repetition {number + 1}/{args.repeat}", file=sys.stderr, flush=True)
        all_runs.append(repetition(args.jobs, scenarios))
    print_summary(all_runs, scenarios)
    bad = [(name, results[name]) for results in all_runs for name in scenarios
           if results[name]["lost"] or results[name]["extra runs, unexplained"]]
    if bad:
        sys.exit(1)


if __name__ == "__main__":
    main()
