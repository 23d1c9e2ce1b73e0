"""Partial images of a job that asked for ``partial_images``: made where it runs, read anywhere.

The worker running the job gets previews from the engine (app/serving/previews.py) through
the generation's ``PreviewFeed``, encodes each at the request's size in the encode pool, and
saves it in ``sleepwell_job_partials`` (one row per preview, all images of ``n`` in it) and
bumps ``sleepwell_jobs.partials``. Event streams on any worker see the counter move and read
the new rows (``job_events``: one ``partial_image`` event per image); a "progress" webhook
carries each preview too. Partials are deleted once the job is final (maintenance).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Any

from psycopg.rows import dict_row
from psycopg.types.json import Jsonb

from app.contract.images import WorkKind
from app.jobs.database import Database
from app.jobs.webhooks import Webhooks
from app.serving.encoding import Encoder
from app.serving.generation import Generation
from app.serving.previews import Preview, render_preview

logger = logging.getLogger("sleepwell.jobs.partials")
PARTIAL_EVENT = "partial_image"  # the job event stream's event name
# OpenAI's event type of a partial image, per kind of work (as the sync streams send them).
PARTIAL_TYPES = {WorkKind.GENERATE: "image_generation.partial_image",
                 WorkKind.EDIT: "image_edit.partial_image",
                 WorkKind.VARIATION: "image_edit.partial_image"}
_SAVE = (
    "WITH saved AS (INSERT INTO sleepwell_job_partials (job_id, attempt, partial_image_index,"
    " partial) VALUES (%(id)s, %(attempt)s, %(index)s, %(partial)s) ON CONFLICT DO NOTHING"
    " RETURNING job_id)"
    " UPDATE sleepwell_jobs SET partials = partials + 1 FROM saved WHERE id = saved.job_id"
)
_READ = ("SELECT partial FROM sleepwell_job_partials WHERE job_id = %(id)s"
         " AND attempt = %(attempt)s AND partial_image_index >= %(from)s"
         " ORDER BY partial_image_index")


@dataclass(eq=False)
class PartialPublisher:
    """One run's previews, published in order, each once (a failed batch retried alone
    repeats its previews: their index tells)."""

    row: dict[str, Any]  # the job as this run started it (id, attempts, kind, webhook)
    generation: Generation
    database: Database
    webhooks: Webhooks
    encoder: Encoder
    next_index: int = 0

    async def publish(self) -> None:
        feed = self.generation.previews
        for preview in feed.take() if feed is not None else []:
            if preview.index < self.next_index:
                continue
            self.next_index = preview.index + 1
            try:
                await self._publish(preview)
            except Exception as exc:  # a preview is a nicety: the job (and its watch) go on
                logger.warning("job %s: partial image %d not saved: %s: %s", self.row["id"],
                               preview.index, type(exc).__name__, exc)

    async def _publish(self, preview: Preview) -> None:
        partial = await self._encoded(preview)
        async with self.database.connection() as conn:
            await conn.execute(_SAVE, {"id": self.row["id"], "attempt": self.row["attempts"],
                                       "index": preview.index, "partial": Jsonb(partial)})
        try:
            await self.webhooks.notify_partial(self.row, preview.step, partial)
        except Exception as exc:
            logger.warning("job %s: partial image webhook not enqueued: %s: %s",
                           self.row["id"], type(exc).__name__, exc)

    async def _encoded(self, preview: Preview) -> dict[str, Any]:
        params = self.generation.params
        images = []
        for index, (pixels, seed) in enumerate(
            zip(preview.images, self.generation.seeds, strict=True)
        ):
            b64 = await self.encoder.run(render_preview, pixels, params.width, params.height,
                                         params.output_format)
            images.append({"b64_json": b64, "index": index, "seed": seed})
        return {"type": PARTIAL_TYPES[params.kind], "partial_image_index": preview.index,
                "step": preview.step, "size": f"{params.width}x{params.height}",
                "output_format": params.output_format.value, "created_at": int(time.time()),
                "background": "opaque", "quality": "auto", "images": images}


async def read_partials(database: Database, job_id: str, attempt: int,
                        from_index: int) -> list[dict[str, Any]]:
    """The saved previews of a run from ``from_index`` on, in order."""
    async with database.read_connection() as conn, conn.cursor(row_factory=dict_row) as cur:
        await cur.execute(_READ, {"id": job_id, "attempt": attempt, "from": from_index})
        return [row["partial"] for row in await cur.fetchall()]


def partial_events(partial: dict[str, Any]) -> list[dict[str, Any]]:
    """One stream event per image, shaped as the sync stream's partial image events."""
    shared = {key: value for key, value in partial.items() if key != "images"}
    return [{**shared, **image} for image in partial["images"]]
