"""The desired model in the jobs database: one hot swap reaches every replica on every box.

Same methods as the per-box file store (``app.serving.desired_model``). One row; each
publish increments its revision in the database, so the ordering does not depend on the
clocks of different machines. A database that is down makes reads fail: the swapper keeps
serving what it has and tries again on its next reconcile.

``failed_revision`` names a published revision that a starting worker could not load; it
holds until the next publish (a new revision), so no replica fails on it at every restart.

A reset (``POST /admin/models/reset``) publishes ``model`` NULL with a new revision: back
to the configured model. A row with revision 0 only ever held a swap error.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from psycopg.rows import dict_row

from app.jobs.database import Database
from app.serving.desired_model import DesiredModel

_UPSERT = """
INSERT INTO sleepwell_desired_model (singleton, model, base, revision, error, published_at)
VALUES (true, %(model)s, %(base)s, 1, NULL, clock_timestamp())
ON CONFLICT (singleton) DO UPDATE
   SET model = EXCLUDED.model, base = EXCLUDED.base, error = NULL,
       revision = sleepwell_desired_model.revision + 1, updated_at = clock_timestamp(),
       published_at = clock_timestamp()
RETURNING model, base, revision, published_at
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
            await cursor.execute("SELECT model, base, revision, failed_revision, published_at"
                                 " FROM sleepwell_desired_model")
            row = await cursor.fetchone()
        if row is None or (row["model"] is None and row["revision"] == 0):
            return None  # nothing published: at most a swap error recorded
        return _desired(row, failed=row["failed_revision"] == row["revision"])

    async def publish(self, model: str | None, base: str | None) -> DesiredModel | None:
        async with self.database.connection() as conn:
            cursor = conn.cursor(row_factory=dict_row)
            await cursor.execute(_UPSERT, {"model": model, "base": base})
            row = await cursor.fetchone()
        assert row is not None  # RETURNING always yields the row
        return _desired(row, failed=False)

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


def _desired(row: dict[str, Any], failed: bool) -> DesiredModel:
    published: datetime | None = row["published_at"]
    return DesiredModel(model=row["model"], revision=int(row["revision"]), base=row["base"],
                        failed=failed,
                        published_at=published.timestamp() if published is not None else None)
