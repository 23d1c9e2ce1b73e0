"""Bodies of the routes that take images: multipart (the official SDK) or JSON.

Multipart is parsed with every file held to SLEEPWELL_MAX_UPLOAD_BYTES as its bytes arrive:
an oversized file is refused (413) mid-stream, not after it has been spooled whole. The
whole body is bounded too (BodySizeLimitMiddleware, ``upload_body_limit``).
"""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import AsyncGenerator
from dataclasses import dataclass, field
from typing import Any

from fastapi import Request
from fastapi.exceptions import RequestValidationError
from pydantic import BaseModel, ValidationError
from starlette.datastructures import Headers
from starlette.formparsers import MultiPartException, MultiPartParser

from app.errors import InvalidRequest, PayloadTooLarge, validation_error
from app.settings import Settings

MAX_FORM_FILES = 4  # image, a second image (refused by name, not by the parser), mask
MAX_FORM_FIELDS = 40
MAX_FIELD_BYTES = 64 * 1024  # a text field: a prompt is at most SLEEPWELL_MAX_PROMPT_CHARS
_JSON_OVERHEAD = 1024 * 1024


def upload_body_limit(settings: Settings) -> int:
    """Largest body of an image route: three base64 files (JSON's data: URLs) and fields."""
    return 3 * (settings.max_upload_bytes * 4 // 3 + 4) + _JSON_OVERHEAD


@dataclass
class UploadForm:
    """A parsed body: text fields, and the files by field name (``image[]`` is ``image``)."""

    fields: dict[str, str] = field(default_factory=dict)
    files: dict[str, list[bytes]] = field(default_factory=lambda: defaultdict(list))


class _BoundedMultiPartParser(MultiPartParser):
    """Starlette's parser, refusing a file part once it passes ``max_file_bytes``."""

    def __init__(self, headers: Headers, stream: AsyncGenerator[bytes, None], *,
                 max_file_bytes: int) -> None:
        super().__init__(headers, stream, max_files=MAX_FORM_FILES,
                         max_fields=MAX_FORM_FIELDS, max_part_size=MAX_FIELD_BYTES)
        self.max_file_bytes = max_file_bytes
        self.file_bytes = 0

    def on_part_begin(self) -> None:
        super().on_part_begin()
        self.file_bytes = 0

    def on_part_data(self, data: bytes, start: int, end: int) -> None:
        if self._current_part.file is not None:
            self.file_bytes += end - start
            if self.file_bytes > self.max_file_bytes:
                name = self._current_part.field_name.removesuffix("[]")
                raise PayloadTooLarge(
                    f"{name} is larger than {self.max_file_bytes} bytes "
                    "(SLEEPWELL_MAX_UPLOAD_BYTES).", param=name,
                )
        super().on_part_data(data, start, end)


def is_multipart(request: Request) -> bool:
    return request.headers.get("content-type", "").lower().startswith("multipart/form-data")


async def read_multipart(request: Request, settings: Settings, file_fields: set[str]) -> UploadForm:
    """Text fields and files; a file where text belongs (or text for a file) is a 400."""
    parser = _BoundedMultiPartParser(request.headers, request.stream(),
                                     max_file_bytes=settings.max_upload_bytes)
    try:
        form = await parser.parse()
    except MultiPartException as exc:
        raise InvalidRequest(f"The multipart body could not be read: {exc.message}",
                             code="invalid_multipart") from exc
    result = UploadForm()
    try:
        for raw_name, value in form.multi_items():
            name = raw_name.removesuffix("[]")
            if isinstance(value, str):
                if name in file_fields:
                    raise InvalidRequest(f"{name} must be a file (multipart file part).",
                                         param=name)
                result.fields[name] = value
            elif name not in file_fields:
                raise InvalidRequest(f"{name} must be a text field, not a file.", param=name)
            else:
                result.files[name].append(await value.read())
    finally:
        await form.close()
    return result


async def read_json(request: Request) -> dict[str, Any]:
    try:
        body = json.loads(await request.body())
    except (ValueError, UnicodeDecodeError) as exc:
        raise InvalidRequest("We could not parse the JSON body of your request.",
                             code="invalid_json") from exc
    if not isinstance(body, dict):
        raise InvalidRequest("The JSON body must be an object.", code="invalid_json")
    return body


def as_request_error(exc: ValidationError) -> InvalidRequest:
    """A model's validation error, worded as FastAPI's own body errors are (param named)."""
    errors = [{**error, "loc": ("body", *error["loc"])} for error in exc.errors()]
    return validation_error(RequestValidationError(errors))


def validated(model: type[BaseModel], values: dict[str, Any]) -> Any:
    try:
        return model.model_validate(values)
    except ValidationError as exc:
        raise as_request_error(exc) from None
