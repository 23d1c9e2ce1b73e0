"""The desired model in the jobs database: one hot swap reaches every replica on every box.

Same methods as the per-box file store (``app.serving.desired_model``). One row; each
publish increments its revision in the database, so the ordering does not depend on the
clocks of different machines. A database that is down makes reads fail: the swapper keeps
serving what it has and tries again on its next reconcile.

``failed_revision`` names a published revision that a starting worker could not load; it
holds until the next publish (a new revision), so no replica fails on it at every restart.
"""

from __future__ import annotations

from psycopg.rows import dict_row

from app.jobs.database import Database
from app.serving.desired_model import DesiredModel

_UPSERT = """
INSERT INTO sleepwell_desired_model (singleton, model, base, revision, error)
VALUES (true, %(model)s, %(base)s, 1, NULL)
ON CONFLICT (singleton) DO UPDATE
   SET model = EXCLUDED.model, base = EXCLUDED.base, error = NULL,
       revision = sleepwell_desired_model.revision + 1, updated_at = clock_timestamp()
RETURNING model, base, revision
"""

_RECORD_ERROR = """
INSERT INTO sleepwell_desired_model (singleton, model, base, revision, error)
VALUES (true, NULL, NULL, 0, %s)
ON CONFLICT (singleton) DO UPDATE SET error = EXCLUDED.error, updated_at = clock_timestamp()
"""

# Only the revision that failed: a swap published meanwhile deserves its own try.
_MARK_FAILED = """
UPDATE sleepwell_desired_model
   SET failed_revision = revision, error = %(message)s, updated_at = clock_timestamp()
 WHERE revision = %(revision)s AND model IS NOT NULL
"""


class DatabaseDesiredModelStore:
    def __init__(self, database: Database) -> None:
        self.database = database

    @property
    def shared(self) -> bool:
        return True

    async def read(self) -> DesiredModel | None:
        async with self.database.connection() as conn:
            cursor = conn.cursor(row_factory=dict_row)
            await cursor.execute(
                "SELECT model, base, revision, failed_revision FROM sleepwell_desired_model")
            row = await cursor.fetchone()
        if row is None or row["model"] is None:
            return None
        return DesiredModel(model=row["model"], revision=int(row["revision"]), base=row["base"],
                            failed=row["failed_revision"] == row["revision"])

    async def publish(self, model: str, base: str | None) -> DesiredModel | None:
        async with self.database.connection() as conn:
            cursor = conn.cursor(row_factory=dict_row)
            await cursor.execute(_UPSERT, {"model": model, "base": base})
            row = await cursor.fetchone()
        assert row is not None  # RETURNING always yields the row
        return DesiredModel(model=row["model"], revision=int(row["revision"]), base=row["base"])

    async def record_error(self, message: str | None) -> None:
        async with self.database.connection() as conn:
            await conn.execute(_RECORD_ERROR, (message,))

    async def read_error(self) -> str | None:
        async with self.database.connection() as conn:
            cursor = await conn.execute("SELECT error FROM sleepwell_desired_model")
            row = await cursor.fetchone()
        return None if row is None or row[0] is None else str(row[0])

    async def mark_failed(self, revision: int, message: str) -> None:
        async with self.database.connection() as conn:
            await conn.execute(_MARK_FAILED, {"message": message, "revision": revision})
