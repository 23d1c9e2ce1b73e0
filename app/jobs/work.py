"""What a job runs: a generation or an edit, checked at submit and rebuilt where it runs.

At submit (POST /v1/jobs) the body is checked exactly as the synchronous route would check
it, against this worker's model, so a bad request is a 400 naming the parameter before
anything is queued. An edit's image and mask are read and decoded then, and kept as PNG
with the job (app/jobs/inputs.py). Where the job runs, the same admission functions build
the Generation from the stored request, seed and inputs, for the same runner.
"""

from __future__ import annotations

import asyncio
import secrets
from dataclasses import dataclass
from typing import Any

from app.contract.edits import ImageEditRequest
from app.contract.images import MAX_SEED, ImageGenerationRequest, ImageRequestBase, WorkKind
from app.errors import InvalidRequest
from app.jobs.inputs import StoredInputs, decode_stored, read_inputs, store_ready
from app.jobs.schemas import JobCreateRequest
from app.jobs.store import JobStore
from app.serving.admission import build_edit, build_generation
from app.serving.generation import Generation
from app.serving.model import LoadedModel
from app.serving.previews import PreviewFeed
from app.settings import Settings

# Kept with the request: the images themselves are in sleepwell_job_inputs.
_NOT_STORED = {"images", "mask"}


@dataclass(frozen=True)
class AdmittedJob:
    kind: WorkKind
    request: dict[str, Any]  # what the run rebuilds the request from (sleepwell_jobs.request)
    seed: int
    steps: int
    inputs: StoredInputs | None = None


async def admit_job(body: JobCreateRequest, settings: Settings, model: LoadedModel,
                    request_id: str) -> AdmittedJob:
    """Check a job's request against the limits and the model; 4xx naming the parameter."""
    if body.kind is WorkKind.GENERATE:
        generation_body = body.generation_body()
        params = build_generation(generation_body, settings, model, request_id).params
        steps = params.denoising_steps  # what the progress counts: the steps that run
        return AdmittedJob(WorkKind.GENERATE, generation_body.model_dump(mode="json"),
                           _seed(generation_body), steps)
    edit_body = body.edit_body()
    inputs = await read_inputs(edit_body, settings)
    steps = build_edit(edit_body, inputs, settings, model, request_id).params.denoising_steps
    stored = await store_ready(inputs, settings)
    request = edit_body.model_dump(mode="json", exclude=_NOT_STORED)
    request["inputs_sha256"] = stored.sha256()
    return AdmittedJob(WorkKind.EDIT, request, _seed(edit_body), steps, stored)


def _seed(body: ImageRequestBase) -> int:
    """Fixed at submit, so a redelivered job makes the same image."""
    return body.seed if body.seed is not None else secrets.randbelow(MAX_SEED + 1)


async def job_generation(row: dict[str, Any], store: JobStore, settings: Settings,
                         model: LoadedModel, request_id: str) -> Generation:
    """The job's Generation, built as its synchronous twin would be, with its own deadline
    (SLEEPWELL_JOB_TIMEOUT_S: nobody holds a connection open for it)."""
    timeout_s = settings.job_timeout_s
    if WorkKind(row.get("kind") or WorkKind.GENERATE) is WorkKind.GENERATE:
        body = ImageGenerationRequest.model_validate(row["request"])
        body = body.model_copy(update={"seed": row["seed"]})
        return _with_previews(build_generation(body, settings, model, request_id,
                                               timeout_s=timeout_s))
    edit = ImageEditRequest.model_validate(row["request"]).model_copy(update={"seed": row["seed"]})
    stored = await store.inputs(row["id"])
    if stored is None:  # expired and swept: cannot happen to a job that is not final
        raise InvalidRequest("The job's input image is no longer stored.", param="images",
                             code="job_inputs_missing")
    inputs = await asyncio.to_thread(decode_stored, stored.image_png, stored.mask_png)
    return _with_previews(build_edit(edit, inputs, settings, model, request_id,
                                     timeout_s=timeout_s))


def _with_previews(generation: Generation) -> Generation:
    """A job shows its partial images through its events and webhooks (app/jobs/partials.py),
    never through a stream of its own: it asks the engine for them by ``partial_images``."""
    if generation.params.partial_images > 0:
        generation.previews = PreviewFeed()
    return generation
