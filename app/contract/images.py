"""Wire formats: OpenAI's image-generation request and response, plus our extensions."""

from __future__ import annotations

import math
import re
from enum import StrEnum
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictInt, field_validator

_SIZE_PATTERN = re.compile(r"^([0-9]{1,6})x([0-9]{1,6})\Z")  # \Z: "64x64\n" is no size
MAX_SEED = 2**32 - 1
MAX_PARTIAL_IMAGES = 3  # OpenAI's limit


class WorkKind(StrEnum):
    """Which kind of work a request is: a bounded label for metrics, logs and batching."""

    GENERATE = "generate"
    EDIT = "edit"  # img2img, or inpainting with a mask
    VARIATION = "variation"


class OutputFormat(StrEnum):
    PNG = "png"
    JPEG = "jpeg"
    WEBP = "webp"


class ImageRequestBase(BaseModel):
    """What every image request shares (generations, edits, variations), with its checks.

    Validated on arrival; limits that depend on settings are checked in serving/admission.
    """

    model_config = ConfigDict(extra="ignore")

    model: str | None = None
    n: StrictInt = 1
    size: str | None = Field(None, description='"WxH"; default: the model\'s native size')
    response_format: Literal["b64_json"] = "b64_json"
    output_format: OutputFormat = OutputFormat.PNG
    seed: StrictInt | None = Field(None, ge=0, le=MAX_SEED)
    user: str | None = None

    @field_validator("size")
    @classmethod
    def _size_shape(cls, value: str | None) -> str | None:
        if value is None or value == "auto":
            return None
        if parse_size(value) is None:
            raise ValueError('size must look like "512x512" (width x height in pixels)')
        return value

    @field_validator("response_format", mode="before")
    @classmethod
    def _no_urls_yet(cls, value: object) -> object:
        # OpenAI's other format: say what to do instead of "Input should be 'b64_json'".
        if value == "url":
            raise ValueError(
                'URLs are not supported yet; use "b64_json" (the default) and decode '
                "data[].b64_json, e.g. base64 -d > image.png"
            )
        return value


class PromptedImageRequest(ImageRequestBase):
    """A request with a prompt: generations and edits."""

    prompt: Annotated[str, Field(min_length=1)]
    negative_prompt: str | None = None
    num_inference_steps: StrictInt | None = None
    guidance_scale: float | None = Field(None, strict=True)  # no true/"7" as numbers
    stream: bool = Field(False, strict=True, description="Server-Sent Events: progress, images")
    partial_images: StrictInt = Field(
        0, ge=0, le=MAX_PARTIAL_IMAGES,
        description="with stream: previews sent while it denoises (OpenAI's partial_images)",
    )
    # Off by default: the official SDKs read any event as one of their typed image events.
    stream_progress: bool = Field(
        False, strict=True,
        description="extension, with stream: also send sleepwell.progress events (steps, queue)",
    )

    @field_validator("guidance_scale")
    @classmethod
    def _finite_guidance(cls, value: float | None) -> float | None:
        if value is not None and not math.isfinite(value):
            raise ValueError("guidance_scale must be a finite number")
        if value is not None and not 0.0 <= value <= 50.0:
            raise ValueError("guidance_scale must be between 0 and 50")
        return value


class ImageGenerationRequest(PromptedImageRequest):
    """POST /v1/images/generations."""


def parse_size(value: str) -> tuple[int, int] | None:
    match = _SIZE_PATTERN.match(value)
    if match is None:
        return None
    return int(match.group(1)), int(match.group(2))


class ImageData(BaseModel):
    b64_json: str
    seed: int
    revised_prompt: str | None = None


class UsageInputTokensDetails(BaseModel):
    text_tokens: int
    image_tokens: int


class Usage(BaseModel):
    """OpenAI's usage object; docs/streaming.md says what each number counts here."""

    input_tokens: int
    input_tokens_details: UsageInputTokensDetails
    output_tokens: int
    total_tokens: int


class ImageGenerationResponse(BaseModel):
    created: int
    data: list[ImageData]
    usage: Usage | None = None


class ModelCard(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str = "sleepwell"


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]
