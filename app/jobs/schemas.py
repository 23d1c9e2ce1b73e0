"""Wire formats of /v1/jobs: Replicate/Cog-style predictions, results as the sync API's."""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import Any, Literal

from pydantic import BaseModel, Field

from app.contract.edits import ImageEditRequest
from app.contract.images import ImageData, ImageGenerationRequest, WorkKind
from app.errors import InvalidRequest


class JobStatus(StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"


FINAL_STATUSES = (JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.CANCELLED)
WebhookEvent = Literal["started", "progress", "completed"]


def _completed_only() -> list[WebhookEvent]:
    return ["completed"]


_JOB_FIELDS = {"webhook", "webhook_events"}
_EDIT_FIELDS = {"images", "mask", "strength"}


class JobCreateRequest(ImageEditRequest):
    """The body of POST /v1/images/generations, or the JSON body of POST /v1/images/edits
    (a job with ``images`` is an edit), plus where to report."""

    webhook: str | None = Field(None, max_length=2048, description="https URL to notify")
    webhook_events: list[WebhookEvent] = Field(
        default_factory=_completed_only, max_length=3,
        description='which events to send: "started", "progress", "completed"',
    )

    @property
    def kind(self) -> WorkKind:
        return WorkKind.EDIT if self.images is not None else WorkKind.GENERATE

    def generation_body(self) -> ImageGenerationRequest:
        for name in ("mask", "strength"):
            if getattr(self, name) is not None:
                raise InvalidRequest(
                    f"{name} belongs to an edit: send the image to edit in images "
                    '([{"image_url": "data:image/png;base64,..."}]).', param=name)
        return ImageGenerationRequest.model_validate(
            self.model_dump(exclude=_JOB_FIELDS | _EDIT_FIELDS)
        )

    def edit_body(self) -> ImageEditRequest:
        return ImageEditRequest.model_validate(self.model_dump(exclude=_JOB_FIELDS))


class JobProgress(BaseModel):
    step: int
    steps: int


class JobError(BaseModel):
    message: str
    type: str
    code: str | None = None


class JobView(BaseModel):
    id: str
    object: Literal["job"] = "job"
    kind: WorkKind = WorkKind.GENERATE  # "edit": made from a body with images
    status: JobStatus
    progress: JobProgress
    attempts: int
    # Runs that reached the end. At-least-once delivery: 2+ means a duplicate run (its
    # result was discarded; the first final write wins).
    completions: int = 0
    # A cancel was asked for. While "running", the run stops at its next denoising step;
    # a run that finished first keeps its status and result.
    cancel_requested: bool = False
    created_at: datetime
    started_at: datetime | None = None
    finished_at: datetime | None = None
    expires_at: datetime | None = None
    result: list[ImageData] | None = None
    error: JobError | None = None
    webhook: str | None = None
    webhook_events: list[str] = Field(default_factory=list)

    @classmethod
    def from_row(cls, row: dict[str, Any], *, with_result: bool = True) -> JobView:
        return cls(
            id=row["id"],
            kind=WorkKind(row.get("kind") or WorkKind.GENERATE),
            status=JobStatus(row["status"]),
            progress=JobProgress(step=row["progress_step"], steps=row["progress_steps"]),
            attempts=row["attempts"],
            completions=row.get("completions", 0),
            cancel_requested=bool(row.get("cancel_requested", False)),
            created_at=row["created_at"],
            started_at=row["started_at"],
            finished_at=row["finished_at"],
            expires_at=row["expires_at"],
            result=row["result"] if with_result else None,
            error=row["error"],
            webhook=row["webhook_url"],
            webhook_events=list(row["webhook_events"] or []),
        )

    def wire(self) -> dict[str, Any]:
        return self.model_dump(mode="json", exclude_none=True)


class JobList(BaseModel):
    object: Literal["list"] = "list"
    data: list[JobView]
