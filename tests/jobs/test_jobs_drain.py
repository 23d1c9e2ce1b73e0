"""Jobs under a SIGTERM drain: a running job that cannot finish within the grace period is
handed back (never lost) and another instance finishes it. Two real gunicorn instances on
one PostgreSQL, as two replicas."""

from __future__ import annotations

import pytest

from tests.jobs.helpers import jobs_env, submit, wait_final, wait_job
from tests.jobs.postgres import TestPostgres, query
from tests.jobs.test_jobs_api import wait_health_jobs
from tests.support.server import gunicorn_server

pytestmark = pytest.mark.slow
KEY = "key-drain"


def test_jobs_sigterm_hands_a_running_job_back_and_another_instance_finishes_it(
    postgres: TestPostgres,
) -> None:
    url = postgres.new_database()
    env = jobs_env(url, KEY, SLEEPWELL_GRACEFUL_TIMEOUT_S="3")  # far shorter than the job
    # Both replicas boot at once (each start is seconds of model loading), then both ready.
    with gunicorn_server(env, wait=False) as first, gunicorn_server(env, wait=False) as second, \
            first.client(timeout=30) as client_a, second.client(timeout=30) as client_b:
        first.wait_ready()
        second.wait_ready()
        wait_health_jobs(client_a, True)
        wait_health_jobs(client_b, True)
        # 25 steps of 0.3 s: past step 1, over twice the 3 s grace is left to run.
        job = submit(client_a, KEY, prompt="[[slow=0.3]] a long fox", steps=25)
        running = wait_job(client_a, KEY, job["id"], lambda j: j["progress"]["step"] >= 1)
        assert running["attempts"] == 1
        (worker,) = query(url, "SELECT worker FROM sleepwell_jobs WHERE id = %s",
                          (job["id"],))[0]
        pid = int(str(worker).rsplit(":", 1)[1])
        victim, survivor = (first, client_b) if pid in first.worker_pids() else (
            second, client_a)
        assert pid in victim.worker_pids()
        assert victim.stop() == 0  # SIGTERM: drain, then a clean exit
        done = wait_final(survivor, KEY, job["id"], timeout=180)
    assert done["status"] == "succeeded", done
    assert (done["attempts"], done["completions"]) == (2, 1), done
    runs = query(url, "SELECT attempt, worker, outcome FROM sleepwell_job_runs WHERE job_id = %s"
                      " ORDER BY attempt", (job["id"],))
    assert [(attempt, outcome) for attempt, _, outcome in runs] == [
        (1, "handed_back"), (2, "succeeded")]
    assert runs[0][1] == worker and runs[1][1] != worker
