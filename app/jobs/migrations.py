"""Every table the service owns, in numbered migrations applied in order, exactly once.

Applied by the gunicorn master at start (gunicorn.conf.py) and, idempotently, by each
worker on its first connection (the database may have been down at master start). A
transaction-scoped advisory lock makes concurrent runs wait for each other. To add a table
(for example the shared desired model), append a ``Migration``; never edit an applied one.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import psycopg

_LOCK_KEY = 7_352_190_411  # arbitrary, fixed: "sleepwell migrations"


@dataclass(frozen=True)
class Migration:
    version: int
    name: str
    sql: str


MIGRATIONS: tuple[Migration, ...] = (
    Migration(1, "jobs", """
CREATE TABLE sleepwell_jobs (
    id text PRIMARY KEY,
    owner text NOT NULL,
    idempotency_key text,
    status text NOT NULL,
    request jsonb NOT NULL,
    seed bigint NOT NULL,
    webhook_url text,
    webhook_events text[] NOT NULL DEFAULT '{}',
    progress_step int NOT NULL DEFAULT 0,
    progress_steps int NOT NULL,
    attempts int NOT NULL DEFAULT 0,
    completions int NOT NULL DEFAULT 0,
    cancel_requested boolean NOT NULL DEFAULT false,
    result jsonb,
    error jsonb,
    worker text,
    created_at timestamptz NOT NULL DEFAULT clock_timestamp(),
    started_at timestamptz,
    finished_at timestamptz,
    expires_at timestamptz
);
CREATE UNIQUE INDEX sleepwell_jobs_idempotency
    ON sleepwell_jobs (owner, idempotency_key) WHERE idempotency_key IS NOT NULL;
CREATE INDEX sleepwell_jobs_status_created ON sleepwell_jobs (status, created_at);
CREATE INDEX sleepwell_jobs_owner_created ON sleepwell_jobs (owner, created_at);
CREATE INDEX sleepwell_jobs_expires ON sleepwell_jobs (expires_at) WHERE expires_at IS NOT NULL;
"""),
    # The model every replica should serve after a hot swap (app/jobs/shared_model.py).
    Migration(2, "desired_model", """
CREATE TABLE sleepwell_desired_model (
    singleton boolean PRIMARY KEY DEFAULT true CHECK (singleton),
    model text,  -- NULL: nothing published yet (the row may only hold a swap error)
    base text,
    revision bigint NOT NULL,
    error text,
    updated_at timestamptz NOT NULL DEFAULT clock_timestamp()
);
"""),
    # Every delivery of a job (duplicates and redeliveries made visible: the jobs table keeps
    # only the latest start), and whether the final state's "completed" webhook was enqueued
    # (maintenance enqueues it again when not). Rows that were final before this migration
    # count as notified: their webhook, if any, went out under the old code.
    Migration(3, "job_runs", """
CREATE TABLE sleepwell_job_runs (
    job_id text NOT NULL REFERENCES sleepwell_jobs (id) ON DELETE CASCADE,
    attempt int NOT NULL,
    worker text NOT NULL,
    started_at timestamptz NOT NULL DEFAULT clock_timestamp(),
    finished_at timestamptz,
    outcome text,
    PRIMARY KEY (job_id, attempt)
);
ALTER TABLE sleepwell_jobs ADD COLUMN completed_notified boolean NOT NULL DEFAULT true;
ALTER TABLE sleepwell_jobs ALTER COLUMN completed_notified SET DEFAULT false;
UPDATE sleepwell_jobs SET completed_notified = false WHERE status IN ('queued', 'running');
CREATE INDEX sleepwell_jobs_unnotified ON sleepwell_jobs (finished_at) WHERE NOT completed_notified;
"""),
    # A published model that a starting worker could not load (app/jobs/shared_model.py):
    # workers that start later load their configured model instead of failing on it again.
    Migration(4, "desired_model_failed", """
ALTER TABLE sleepwell_desired_model ADD COLUMN failed_revision bigint;
"""),
    # When an operator published the desired model (issue 20: a start logs why it serves
    # what it serves); updated_at also moves with swap errors. NULL: published before this.
    Migration(5, "desired_model_published_at", """
ALTER TABLE sleepwell_desired_model ADD COLUMN published_at timestamptz;
"""),
    # The X-Request-ID of the POST that made the job: its start, finish and cancel log
    # lines carry it (issue 20). NULL for jobs made before this.
    Migration(6, "job_request_id", """
ALTER TABLE sleepwell_jobs ADD COLUMN request_id text;
"""),
    # Edit jobs (issue 21): which kind of work a job is, and an edit's checked input image
    # and mask as PNG (app/jobs/inputs.py), deleted when the job expires or its row goes.
    # Partial images of a running job (app/jobs/partials.py): kept until the job is final;
    # ``partials`` counts those saved, so event streams know when to read them.
    Migration(7, "job_inputs_and_partials", """
ALTER TABLE sleepwell_jobs ADD COLUMN kind text NOT NULL DEFAULT 'generate';
ALTER TABLE sleepwell_jobs ADD COLUMN partials int NOT NULL DEFAULT 0;
CREATE TABLE sleepwell_job_inputs (
    job_id text PRIMARY KEY REFERENCES sleepwell_jobs (id) ON DELETE CASCADE,
    image bytea NOT NULL,
    mask bytea
);
CREATE TABLE sleepwell_job_partials (
    job_id text NOT NULL REFERENCES sleepwell_jobs (id) ON DELETE CASCADE,
    attempt int NOT NULL,
    partial_image_index int NOT NULL,
    partial jsonb NOT NULL,
    PRIMARY KEY (job_id, attempt, partial_image_index)
);
"""),
)


async def migrate(conn: psycopg.AsyncConnection[Any]) -> list[int]:
    """Apply what is missing; returns the versions applied now (empty: already current)."""
    applied_now: list[int] = []
    async with conn.transaction():
        await conn.execute("SELECT pg_advisory_xact_lock(%s)", (_LOCK_KEY,))
        await conn.execute(
            "CREATE TABLE IF NOT EXISTS sleepwell_schema_migrations ("
            " version int PRIMARY KEY, name text NOT NULL,"
            " applied_at timestamptz NOT NULL DEFAULT now())"
        )
        cursor = await conn.execute("SELECT version FROM sleepwell_schema_migrations")
        done = {row[0] for row in await cursor.fetchall()}
        for migration in MIGRATIONS:
            if migration.version in done:
                continue
            await conn.execute(migration.sql.encode())
            await conn.execute(
                "INSERT INTO sleepwell_schema_migrations (version, name) VALUES (%s, %s)",
                (migration.version, migration.name),
            )
            applied_now.append(migration.version)
    return applied_now
