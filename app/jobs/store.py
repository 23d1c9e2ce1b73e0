"""The ``sleepwell_jobs`` table: what clients see of a job, written idempotently by job id.

SAQ's rows say who holds a job right now; this table says what the client asked for and
what came of it. Every final write is "first writer wins" (``finish``): a job that ran
twice (at-least-once delivery) keeps the first result, and ``completions`` counts runs.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from psycopg.rows import dict_row
from psycopg.types.json import Jsonb

from app.errors import Conflict
from app.jobs.database import Database
from app.jobs.schemas import FINAL_STATUSES, JobStatus

IDEMPOTENCY_WINDOW = "24 hours"
_FINAL = [status.value for status in FINAL_STATUSES]
_LIST_COLUMNS = (
    "id, owner, status, request, seed, webhook_url, webhook_events, progress_step, progress_steps,"
    " attempts, completions, cancel_requested, NULL::jsonb AS result, error, worker,"
    " created_at, started_at, finished_at, expires_at"
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


class JobStore:
    def __init__(self, database: Database, ttl_s: float) -> None:
        self.database = database
        self.ttl_s = ttl_s

    async def _one(self, sql: Any, params: dict[str, Any]) -> dict[str, Any] | None:
        async with self.database.connection() as conn, conn.cursor(row_factory=dict_row) as cur:
            await cur.execute(sql, params)
            return await cur.fetchone()

    async def create(self, job: NewJob) -> tuple[dict[str, Any], bool]:
        """Insert, or return the job this owner made with the same Idempotency-Key in 24 h."""
        params = {**job.__dict__, "request": Jsonb(job.request), "status": JobStatus.QUEUED.value,
                  "window": IDEMPOTENCY_WINDOW}
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
                " seed, progress_steps, webhook_url, webhook_events) VALUES (%(id)s,"
                " %(owner)s, %(idempotency_key)s, %(status)s, %(request)s, %(seed)s,"
                " %(steps)s, %(webhook_url)s, %(webhook_events)s) RETURNING *", params)
            created = await cur.fetchone()
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

    async def get(self, job_id: str) -> dict[str, Any] | None:
        return await self._one("SELECT *, expires_at <= now() AS expired FROM sleepwell_jobs"
                               " WHERE id = %(id)s", {"id": job_id})

    async def list(self, owner: str | None, status: str | None, limit: int) -> list[dict[str, Any]]:
        async with self.database.connection() as conn, conn.cursor(row_factory=dict_row) as cur:
            await cur.execute(
                f"SELECT {_LIST_COLUMNS} FROM sleepwell_jobs WHERE"
                " (%(owner)s::text IS NULL OR owner = %(owner)s) AND"
                " (%(status)s::text IS NULL OR status = %(status)s) AND"
                " (expires_at IS NULL OR expires_at > now())"
                " ORDER BY created_at DESC LIMIT %(limit)s",
                {"owner": owner, "status": status, "limit": limit})
            return await cur.fetchall()

    async def start(self, job_id: str, worker: str) -> dict[str, Any] | None:
        """Mark running (attempts + 1); None if the job is already final or unknown."""
        return await self._one(
            "UPDATE sleepwell_jobs SET status = 'running', attempts = attempts + 1,"
            " started_at = clock_timestamp(), worker = %(worker)s, progress_step = 0"
            " WHERE id = %(id)s AND status <> ALL(%(final)s::text[]) RETURNING *",
            {"id": job_id, "worker": worker, "final": _FINAL})

    async def progress(self, job_id: str, step: int) -> bool:
        """Write the step; True if the client asked to cancel."""
        row = await self._one(
            "UPDATE sleepwell_jobs SET progress_step = %(step)s WHERE id = %(id)s"
            " RETURNING cancel_requested OR status = ANY(%(final)s::text[]) AS stop",
            {"id": job_id, "step": step, "final": _FINAL})
        return bool(row and row["stop"])

    async def finish(self, job_id: str, status: JobStatus, *, result: Any = None,
                     error: dict[str, Any] | None = None) -> dict[str, Any] | None:
        """First final write wins. Returns the row if this call won, None if another had."""
        row = await self._one(
            "WITH previous AS (SELECT status = ANY(%(final)s::text[]) AS was_final"
            "   FROM sleepwell_jobs WHERE id = %(id)s FOR UPDATE)"
            " UPDATE sleepwell_jobs j SET completions = completions + 1,"
            " status = CASE WHEN was_final THEN j.status ELSE %(status)s END,"
            " result = CASE WHEN was_final THEN j.result ELSE %(result)s END,"
            " error = CASE WHEN was_final THEN j.error ELSE %(error)s END,"
            " progress_step = CASE WHEN NOT was_final AND %(status)s = 'succeeded'"
            "   THEN j.progress_steps ELSE j.progress_step END,"
            " cancel_requested = j.cancel_requested"
            "   OR (NOT was_final AND %(status)s = 'cancelled'),"
            " finished_at = COALESCE(j.finished_at, clock_timestamp()),"
            " expires_at = COALESCE(j.expires_at, clock_timestamp() + %(ttl)s * interval '1 s')"
            " FROM previous WHERE j.id = %(id)s RETURNING j.*, NOT was_final AS won",
            {"id": job_id, "status": status.value, "final": _FINAL, "ttl": self.ttl_s,
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
            "   THEN clock_timestamp() + %(ttl)s * interval '1 s' ELSE expires_at END"
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
