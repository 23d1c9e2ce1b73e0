"""The ``sleepwell_jobs`` table: what clients see of a job, written idempotently by job id.

SAQ's rows say who holds a job right now; this table says what the client asked for and
what came of it. Every final write is "first writer wins" (``finish``): a job that ran
twice (at-least-once delivery) keeps the first result, and ``completions`` counts runs.
``sleepwell_job_runs`` keeps one row per delivery (attempt, worker, start, end, outcome);
``completed_notified`` says whether the final state's webhook was enqueued.
"""

from __future__ import annotations

import builtins
from dataclasses import dataclass
from typing import Any

from psycopg.rows import dict_row
from psycopg.types.json import Jsonb

from app.errors import Conflict
from app.jobs.database import Database
from app.jobs.inputs import StoredInputs
from app.jobs.schemas import FINAL_STATUSES, JobStatus

IDEMPOTENCY_WINDOW = "24 hours"
_FINAL = [status.value for status in FINAL_STATUSES]
_LIST_COLUMNS = (
    "id, owner, kind, status, request, seed, webhook_url, webhook_events, progress_step,"
    " progress_steps, attempts, completions, cancel_requested, NULL::jsonb AS result, error,"
    " worker, created_at, started_at, finished_at, expires_at"
)
# A final row whose client asked for no "completed" webhook has nothing left to notify.
_NOTHING_TO_NOTIFY = "(webhook_url IS NULL OR NOT ('completed' = ANY(webhook_events)))"


class RunOutcome:
    """How one delivery of a job ended, in ``sleepwell_job_runs.outcome`` (NULL: the run
    never reported back: its worker died or lost the database)."""

    SUCCEEDED, FAILED, CANCELLED = "succeeded", "failed", "cancelled"
    DUPLICATE = "duplicate"  # ran to the end, but another run had already made it final
    HANDED_BACK = "handed_back"  # drained or otherwise unable: queued again for another
    STALLED = "stalled"  # its worker stopped making progress; queued again or failed


# The final write (see JobStore.finish). ``recorded``: the outcome this run already wrote,
# when this is a retry of a write that committed; then nothing changes.
_FINISH = (
    "WITH previous AS (SELECT j.status = ANY(%(final)s::text[]) AS was_final,"
    "   (SELECT r.outcome FROM sleepwell_job_runs r WHERE r.job_id = j.id"
    "     AND r.attempt = %(attempt)s::int) AS recorded"
    "   FROM sleepwell_jobs j WHERE j.id = %(id)s FOR UPDATE),"
    " decided AS (SELECT was_final, recorded, CASE WHEN recorded IS NOT NULL"
    "   THEN recorded = ANY(%(final)s::text[]) ELSE NOT was_final END AS won,"
    "   (recorded IS NULL AND NOT was_final) AS writes FROM previous),"
    " updated AS (UPDATE sleepwell_jobs j SET"
    " completions = completions + CASE WHEN recorded IS NULL THEN 1 ELSE 0 END,"
    " status = CASE WHEN writes THEN %(status)s ELSE j.status END,"
    " result = CASE WHEN writes THEN %(result)s ELSE j.result END,"
    " error = CASE WHEN writes THEN %(error)s ELSE j.error END,"
    " progress_step = CASE WHEN writes AND %(status)s = 'succeeded'"
    "   THEN j.progress_steps ELSE j.progress_step END,"
    " cancel_requested = j.cancel_requested OR (writes AND %(status)s = 'cancelled'),"
    " finished_at = COALESCE(j.finished_at, clock_timestamp()),"
    " expires_at = COALESCE(j.expires_at, clock_timestamp() + %(ttl)s * interval '1 s'),"
    f" completed_notified = j.completed_notified OR {_NOTHING_TO_NOTIFY}"
    " FROM decided WHERE j.id = %(id)s RETURNING j.*, decided.won, decided.recorded),"
    " run AS (UPDATE sleepwell_job_runs r SET finished_at = clock_timestamp(),"
    " outcome = CASE WHEN updated.won THEN %(status)s ELSE %(duplicate)s END FROM updated"
    " WHERE r.job_id = updated.id AND r.attempt = %(attempt)s::int AND updated.recorded IS NULL)"
    " SELECT * FROM updated"
)


@dataclass(frozen=True)
class NewJob:
    id: str
    owner: str
    idempotency_key: str | None
    request: dict[str, Any]
    seed: int
    steps: int
    webhook_url: str | None
    webhook_events: list[str]
    request_id: str | None = None  # of the POST that made it, for the job's log lines
    kind: str = "generate"  # app.contract.images.WorkKind
    inputs: StoredInputs | None = None  # an edit's image and mask (sleepwell_job_inputs)


class JobStore:
    def __init__(self, database: Database, ttl_s: float) -> None:
        self.database = database
        self.ttl_s = ttl_s

    async def _one(self, sql: Any, params: dict[str, Any]) -> dict[str, Any] | None:
        async with self.database.connection() as conn, conn.cursor(row_factory=dict_row) as cur:
            await cur.execute(sql, params)
            return await cur.fetchone()

    async def _all(self, sql: Any, params: dict[str, Any]) -> list[dict[str, Any]]:
        async with self.database.connection() as conn, conn.cursor(row_factory=dict_row) as cur:
            await cur.execute(sql, params)
            return await cur.fetchall()

    async def create(self, job: NewJob) -> tuple[dict[str, Any], bool]:
        """Insert, or return the job this owner made with the same Idempotency-Key in 24 h."""
        params = {**job.__dict__, "request": Jsonb(job.request), "status": JobStatus.QUEUED.value,
                  "window": IDEMPOTENCY_WINDOW, "inputs": None}
        async with self.database.connection() as conn, conn.transaction(), conn.cursor(
            row_factory=dict_row
        ) as cur:
            if job.idempotency_key is not None:
                existing = await self._idempotent(cur, params)
                if existing is not None:
                    _same_request_or_conflict(existing, job)
                    return existing, False
            await cur.execute(
                "INSERT INTO sleepwell_jobs (id, owner, idempotency_key, status, request,"
                " seed, progress_steps, webhook_url, webhook_events, request_id, kind) VALUES"
                " (%(id)s, %(owner)s, %(idempotency_key)s, %(status)s, %(request)s, %(seed)s,"
                " %(steps)s, %(webhook_url)s, %(webhook_events)s, %(request_id)s, %(kind)s)"
                " RETURNING *", params)
            created = await cur.fetchone()
            if job.inputs is not None:  # in the same transaction: no job without its inputs
                await cur.execute(
                    "INSERT INTO sleepwell_job_inputs (job_id, image, mask) VALUES (%s, %s, %s)",
                    (job.id, job.inputs.image_png, job.inputs.mask_png))
        assert created is not None
        return created, True

    async def _idempotent(self, cur: Any, params: dict[str, Any]) -> dict[str, Any] | None:
        # Serialise same-key requests of one owner, then forget keys older than the window.
        await cur.execute(
            "SELECT pg_advisory_xact_lock(hashtext(%(owner)s || %(idempotency_key)s))", params)
        await cur.execute(
            "UPDATE sleepwell_jobs SET idempotency_key = NULL WHERE owner = %(owner)s AND"
            " idempotency_key = %(idempotency_key)s AND created_at <= now() - %(window)s::interval",
            params)
        await cur.execute("SELECT * FROM sleepwell_jobs WHERE owner = %(owner)s AND"
                          " idempotency_key = %(idempotency_key)s", params)
        row: dict[str, Any] | None = await cur.fetchone()
        return row

    async def inputs(self, job_id: str) -> StoredInputs | None:
        """An edit job's stored image and mask; None once the job has expired."""
        row = await self._one("SELECT image, mask FROM sleepwell_job_inputs"
                              " WHERE job_id = %(id)s", {"id": job_id})
        if row is None:
            return None
        mask = row["mask"]
        return StoredInputs(bytes(row["image"]), None if mask is None else bytes(mask))

    async def get(self, job_id: str) -> dict[str, Any] | None:
        return await self._one("SELECT *, expires_at <= now() AS expired FROM sleepwell_jobs"
                               " WHERE id = %(id)s", {"id": job_id})

    async def list(self, owner: str | None, status: str | None, limit: int) -> list[dict[str, Any]]:
        return await self._all(
            f"SELECT {_LIST_COLUMNS} FROM sleepwell_jobs WHERE"
            " (%(owner)s::text IS NULL OR owner = %(owner)s) AND"
            " (%(status)s::text IS NULL OR status = %(status)s) AND"
            " (expires_at IS NULL OR expires_at > now())"
            " ORDER BY created_at DESC LIMIT %(limit)s",
            {"owner": owner, "status": status, "limit": limit})

    async def start(self, job_id: str, worker: str) -> dict[str, Any] | None:
        """Mark running (attempts + 1) and record the run; None if the job is already
        final or unknown. ``attempts`` of the row returned numbers this run."""
        return await self._one(
            "WITH started AS (UPDATE sleepwell_jobs SET status = 'running',"
            " attempts = attempts + 1, started_at = clock_timestamp(), worker = %(worker)s,"
            " progress_step = 0 WHERE id = %(id)s AND status <> ALL(%(final)s::text[])"
            " RETURNING *), run AS (INSERT INTO sleepwell_job_runs (job_id, attempt, worker,"
            " started_at) SELECT id, attempts, worker, started_at FROM started)"
            " SELECT * FROM started",
            {"id": job_id, "worker": worker, "final": _FINAL})

    async def end_run(self, job_id: str, attempt: int, outcome: str) -> None:
        await self._one(
            "UPDATE sleepwell_job_runs SET finished_at = clock_timestamp(), outcome = %(outcome)s"
            " WHERE job_id = %(id)s AND attempt = %(attempt)s RETURNING 1",
            {"id": job_id, "attempt": attempt, "outcome": outcome})

    async def stalled_runs(self, job_id: str) -> int:
        row = await self._one(
            "SELECT count(*) AS stalls FROM sleepwell_job_runs WHERE job_id = %(id)s"
            " AND outcome = %(outcome)s", {"id": job_id, "outcome": RunOutcome.STALLED})
        return int(row["stalls"]) if row else 0

    async def mark_notified(self, job_id: str) -> None:
        await self._one("UPDATE sleepwell_jobs SET completed_notified = true WHERE id = %(id)s"
                        " RETURNING 1", {"id": job_id})

    async def unnotified(self, grace_s: float, limit: int = 100) -> builtins.list[dict[str, Any]]:
        """Final rows whose "completed" webhook was never enqueued (the worker that made
        them final failed to, or died first), older than ``grace_s``."""
        return await self._all(
            "SELECT * FROM sleepwell_jobs WHERE NOT completed_notified"
            " AND status = ANY(%(final)s::text[])"
            " AND finished_at < clock_timestamp() - %(grace)s * interval '1 s'"
            " ORDER BY finished_at LIMIT %(limit)s",
            {"final": _FINAL, "grace": grace_s, "limit": limit})

    async def progress(self, job_id: str, step: int) -> bool:
        """Write the step; True if the client asked to cancel."""
        row = await self._one(
            # A final row keeps its step: this write may race the one that finished it.
            "UPDATE sleepwell_jobs SET progress_step = CASE WHEN status = ANY(%(final)s::text[])"
            " THEN progress_step ELSE %(step)s END WHERE id = %(id)s"
            " RETURNING cancel_requested OR status = ANY(%(final)s::text[]) AS stop",
            {"id": job_id, "step": step, "final": _FINAL})
        return bool(row and row["stop"])

    async def finish(self, job_id: str, status: JobStatus, *, result: Any = None,
                     error: dict[str, Any] | None = None,
                     attempt: int | None = None) -> dict[str, Any] | None:
        """First final write wins. Returns the row if this call won, None if another had.

        With ``attempt`` (the run's number) the run's outcome is written in the same
        statement, and the call is idempotent per run: a retry after a write that committed
        but whose answer was lost (the database froze, the connection was aborted) returns
        what the first call decided, without counting another completion."""
        row = await self._one(_FINISH, {
            "id": job_id, "status": status.value, "final": _FINAL, "ttl": self.ttl_s,
            "attempt": attempt, "duplicate": RunOutcome.DUPLICATE,
            "result": None if result is None else Jsonb(result),
            "error": None if error is None else Jsonb(error)})
        return row if row is not None and row["won"] else None

    async def request_cancel(self, job_id: str) -> dict[str, Any] | None:
        """Queued: cancelled at once. Running: flagged; the worker stops at the next step."""
        return await self._one(
            "UPDATE sleepwell_jobs SET cancel_requested = true,"
            " status = CASE WHEN status = 'queued' THEN 'cancelled' ELSE status END,"
            " finished_at = CASE WHEN status = 'queued' THEN clock_timestamp()"
            "   ELSE finished_at END,"
            " expires_at = CASE WHEN status = 'queued'"
            "   THEN clock_timestamp() + %(ttl)s * interval '1 s' ELSE expires_at END,"
            f" completed_notified = completed_notified OR {_NOTHING_TO_NOTIFY}"
            " WHERE id = %(id)s AND status <> ALL(%(final)s::text[]) RETURNING *",
            {"id": job_id, "final": _FINAL, "ttl": self.ttl_s})

    async def requeue(self, job_id: str) -> None:
        """A draining worker hands a job back: queued again, for any worker."""
        await self._one("UPDATE sleepwell_jobs SET status = 'queued', progress_step = 0"
                        " WHERE id = %(id)s AND status = 'running' RETURNING id", {"id": job_id})


def _same_request_or_conflict(existing: dict[str, Any], job: NewJob) -> None:
    same = (existing["request"] == job.request and existing["webhook_url"] == job.webhook_url
            and list(existing["webhook_events"]) == job.webhook_events)
    if not same:
        raise Conflict(
            "This Idempotency-Key was already used in the last 24 hours with a different "
            f"request (job {existing['id']}); use a new key for a new job.",
            param="Idempotency-Key", code="idempotency_key_reused",
        )
