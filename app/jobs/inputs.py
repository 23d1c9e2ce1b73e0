"""An edit job's input image and mask: checked at submit, kept in PostgreSQL until it expires.

A job may run minutes later on any worker of any replica, so its inputs live in the shared
database (``sleepwell_job_inputs``), not in the submitting worker's memory. What is kept is
what the checks let through, re-encoded as PNG: the RGB image, and the mask as the "L" image
the pipeline takes (255 = change). So a run decodes exactly what was validated (no second
reading of a client's file), and no metadata, extra frames or alpha of the upload is stored.
Their size together is held to SLEEPWELL_MAX_UPLOAD_BYTES (413, before the job is queued);
they are deleted when the job expires (maintenance.reconcile), and with the job's row.
"""

from __future__ import annotations

import asyncio
import hashlib
import io
from dataclasses import dataclass

from PIL import Image

from app.contract.edits import ImageEditRequest
from app.errors import PayloadTooLarge
from app.settings import Settings
from app.uploads.inputs import EditInputs, check_image_count, load_inputs
from app.uploads.sources import read_reference

# The JSON form's parameter names: the 400s name what the client sent.
IMAGES_PARAM = "images"


@dataclass(frozen=True)
class StoredInputs:
    image_png: bytes
    mask_png: bytes | None = None

    @property
    def size(self) -> int:
        return len(self.image_png) + len(self.mask_png or b"")

    def sha256(self) -> str:
        """Part of the stored request, so an Idempotency-Key reused with other images is a
        conflict, not a replay of the first job."""
        digest = hashlib.sha256(self.image_png)
        digest.update(b"\0mask\0" + (self.mask_png or b""))
        return digest.hexdigest()


async def read_inputs(body: ImageEditRequest, settings: Settings) -> EditInputs:
    """Fetch and check the JSON form's image (and mask): 400/413 naming the parameter."""
    references = body.images or []
    check_image_count(len(references), IMAGES_PARAM)
    images = [await read_reference(reference, IMAGES_PARAM, settings) for reference in references]
    mask = await read_reference(body.mask, "mask", settings) if body.mask is not None else None
    return await load_inputs(images, mask, settings, image_param=IMAGES_PARAM)


def _png(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def encode_inputs(inputs: EditInputs, settings: Settings) -> StoredInputs:
    """The PNGs to keep, within the per-job limit. CPU work: run it off the event loop."""
    stored = StoredInputs(_png(inputs.image),
                          _png(inputs.mask) if inputs.mask is not None else None)
    if stored.size > settings.max_upload_bytes:
        raise PayloadTooLarge(
            f"The job's inputs take {stored.size} bytes as PNG (image and mask together); a "
            f"job may keep at most {settings.max_upload_bytes} (SLEEPWELL_MAX_UPLOAD_BYTES). "
            "Send a smaller image.", param=IMAGES_PARAM,
        )
    return stored


async def store_ready(inputs: EditInputs, settings: Settings) -> StoredInputs:
    return await asyncio.to_thread(encode_inputs, inputs, settings)


def decode_stored(image_png: bytes, mask_png: bytes | None) -> EditInputs:
    """What ``encode_inputs`` kept, as the pipeline takes it (trusted: checked at submit)."""
    image = Image.open(io.BytesIO(image_png))
    image.load()
    if mask_png is None:
        return EditInputs(image.convert("RGB"))
    mask = Image.open(io.BytesIO(mask_png))
    mask.load()
    return EditInputs(image.convert("RGB"), mask.convert("L"))
