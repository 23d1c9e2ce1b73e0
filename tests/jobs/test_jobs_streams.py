"""GET /v1/jobs/{id}/events is bounded (issue 19, 7): a per-worker limit answered with 429,
an end when the job is deleted or expires, and one database query per interval for all the
streams of a worker, however many are open.

Most streams here watch "parked" jobs: rows inserted as running with no queue entry, so no
worker runs them (no CPU spent) and maintenance leaves them alone.
"""

from __future__ import annotations

import json
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
from psycopg.conninfo import conninfo_to_dict

from tests.jobs.helpers import auth, jobs_env, submit, wait_final
from tests.jobs.postgres import query, running_postgres
from tests.jobs.test_jobs_api import wait_health_jobs
from tests.support.scrape import value
from tests.support.server import RunningServer, gunicorn_server
from tests.support.waiting import wait_until

KEY = "key-streams"
INTERVAL_S = 0.25  # SLEEPWELL_JOB_PROGRESS_INTERVAL_S: the poller's period
STREAMS_MAX = 32  # per worker; one worker here
SLOW = "[[slow=0.2]] a fox"


@dataclass
class Jobs:
    url: str
    log: Path  # PostgreSQL's log: every statement of this database (log_statement = all)
    server: RunningServer
    owner: str  # the API key's owner id, as the server stores it


@pytest.fixture(scope="module")
def jobs() -> Iterator[Jobs]:
    """This module's own PostgreSQL (its log counts our statements) and one worker."""
    with running_postgres() as postgres:
        url = postgres.new_database()
        database = conninfo_to_dict(url)["dbname"]
        postgres.server.psql(f"ALTER DATABASE {database} SET log_statement = 'all';")
        env = jobs_env(url, KEY, SLEEPWELL_JOB_PROGRESS_INTERVAL_S=str(INTERVAL_S),
                       SLEEPWELL_JOB_EVENT_STREAMS_MAX=str(STREAMS_MAX))
        with gunicorn_server(env) as server:
            with server.client(timeout=30) as client:
                wait_health_jobs(client, True)
                job = submit(client, KEY, steps=1)
                wait_final(client, KEY, job["id"])
            (owner,) = query(url, "SELECT owner FROM sleepwell_jobs WHERE id = %s", (job["id"],))[0]
            yield Jobs(url, postgres.server.log, server, str(owner))


@pytest.fixture
def client(jobs: Jobs) -> Iterator[httpx.Client]:
    with jobs.server.client(timeout=30) as http:
        yield http


@dataclass
class Stream:
    """One SSE client on its own thread: (event, data) pairs as they arrive."""

    job_id: str
    base_url: str
    events: list[tuple[str, dict[str, Any]]] = field(default_factory=list)
    ended: threading.Event = field(default_factory=threading.Event)
    failure: BaseException | None = None

    def start(self) -> Stream:
        threading.Thread(target=self._read, daemon=True).start()
        return self

    def _read(self) -> None:
        # The read timeout bounds each wait; the server pings every 15 s, so a stream that
        # never ends fails the waits below instead of hanging the test.
        timeout = httpx.Timeout(30.0)
        try:
            with httpx.Client(base_url=self.base_url, timeout=timeout) as client, client.stream(
                "GET", f"/v1/jobs/{self.job_id}/events", headers=auth(KEY)
            ) as response:
                assert response.status_code == 200, response.read()
                name = ""
                for line in response.iter_lines():
                    if line.startswith("event:"):
                        name = line.split(":", 1)[1].strip()
                    elif line.startswith("data:"):
                        self.events.append((name, json.loads(line.split(":", 1)[1])))
        except BaseException as exc:  # reported by the test through .failure
            self.failure = exc
        finally:
            self.ended.set()


def _park(jobs: Jobs, count: int) -> list[str]:
    ids = [f"job_parked_{uuid.uuid4().hex}" for _ in range(count)]
    for job_id in ids:
        query(jobs.url, "INSERT INTO sleepwell_jobs (id, owner, status, request, seed,"
                        " progress_steps, attempts, started_at) VALUES (%s, %s, 'running',"
                        " '{\"prompt\": \"parked\"}', 1, 4, 1, now())", (job_id, jobs.owner))
    return ids


def _statements_on_jobs(log: Path, start: int) -> int:
    """Statements logged since byte ``start`` that touch sleepwell_jobs."""
    with log.open("rb") as handle:
        handle.seek(start)
        lines = handle.read().decode(errors="replace").splitlines()
    return sum(1 for line in lines if ("execute" in line or "statement:" in line)
               and "sleepwell_jobs" in line)


def test_job_streams_over_the_limit_answer_429_until_one_closes(
    jobs: Jobs, client: httpx.Client,
) -> None:
    parked = _park(jobs, STREAMS_MAX + 1)
    with ExitStack() as streams:
        opened = [streams.enter_context(client.stream(
            "GET", f"/v1/jobs/{job_id}/events", headers=auth(KEY)))
            for job_id in parked[:STREAMS_MAX]]
        assert [response.status_code for response in opened] == [200] * STREAMS_MAX
        with client.stream("GET", f"/v1/jobs/{parked[-1]}/events",
                           headers=auth(KEY)) as refused:  # a 200 here would never end
            assert refused.status_code == 429
            refused.read()
        assert int(refused.headers["retry-after"]) >= 1
        assert refused.json()["error"]["code"] == "too_many_streams"
        metrics = client.get("/metrics").text
        assert value(metrics, "job_event_streams") == STREAMS_MAX
        assert value(metrics, "job_event_streams_refused_total") >= 1
    # Closed by the client: the server sees the disconnects and frees the slots.

    def accepted() -> bool:
        with client.stream("GET", f"/v1/jobs/{parked[-1]}/events", headers=auth(KEY)) as again:
            return again.status_code == 200

    wait_until(accepted, timeout=30, period=0.2, what="a stream accepted again")
    wait_until(lambda: value(client.get("/metrics").text, "job_event_streams") == 0,
               timeout=30, what="every slot given back")


def test_job_stream_ends_when_its_job_is_deleted_or_expires(jobs: Jobs) -> None:
    deleted, expired = _park(jobs, 2)
    streams = [Stream(job_id, jobs.server.url).start() for job_id in (deleted, expired)]
    wait_until(lambda: all(s.events or s.ended.is_set() for s in streams), timeout=30,
               what="every stream's first event")
    query(jobs.url, "DELETE FROM sleepwell_jobs WHERE id = %s", (deleted,))
    query(jobs.url, "UPDATE sleepwell_jobs SET expires_at = now() - interval '1 s'"
                    " WHERE id = %s", (expired,))
    wait_until(lambda: all(s.ended.is_set() for s in streams), timeout=30,
               what="both streams ended")
    codes = []
    for stream in streams:
        assert stream.failure is None, stream.failure
        name, data = stream.events[-1]
        assert name == "error", stream.events
        codes.append(data["error"]["code"])
    assert codes == ["job_not_found", "job_expired"]


@pytest.mark.slow
def test_job_streams_many_open_cost_one_query_per_interval_and_see_the_end(
    jobs: Jobs, client: httpx.Client,
) -> None:
    many = STREAMS_MAX - 2  # room for the real job's stream
    parked = _park(jobs, many)
    streams = [Stream(job_id, jobs.server.url).start() for job_id in parked]
    wait_until(lambda: all(s.events for s in streams), timeout=60, period=0.1,
               what="every stream's first event")
    start, started = jobs.log.stat().st_size, time.monotonic()
    wait_until(lambda: time.monotonic() - started >= 20 * INTERVAL_S, timeout=60,
               what="a window of 20 intervals")
    statements = _statements_on_jobs(jobs.log, start)
    intervals = (time.monotonic() - started) / INTERVAL_S
    # Polling per stream costs `many` per interval; the shared poller 1, plus the worker's
    # own upkeep (backlog probe, maintenance). Zero would mean the log is not read.
    assert 0 < statements / intervals < many / 4, (statements, intervals)
    # A real job's stream still sees its end, with the result, while the rest stay open.
    job = submit(client, KEY, prompt=SLOW, steps=6)
    watched = Stream(job["id"], jobs.server.url).start()
    assert wait_final(client, KEY, job["id"])["status"] == "succeeded"
    wait_until(watched.ended.is_set, timeout=30, what="the job's stream ended")
    name, last = watched.events[-1]
    assert name == "job" and last["status"] == "succeeded" and last["result"], last
    assert not any(s.ended.is_set() for s in streams)
    query(jobs.url, "DELETE FROM sleepwell_jobs WHERE id = ANY(%s)", (parked,))
    wait_until(lambda: all(s.ended.is_set() for s in streams), timeout=30,
               what="every parked stream ended")
    assert all(s.events[-1][0] == "error" for s in streams)
