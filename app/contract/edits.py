"""Wire formats of POST /v1/images/edits and /v1/images/variations.

Two forms arrive at the edits route: the official SDK's multipart (``image`` or ``image[]``
files, ``mask`` file, every other field a string) and the newer JSON form (``images:
[{"image_url": ...}]``, ``mask: {"image_url": ...}``). Both end as one ``ImageEditRequest``;
``from_form`` turns form strings into the types the JSON form carries, so one set of
validators (shared with generations, app/contract/images.py) judges both.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, TypeVar

from pydantic import BaseModel, ConfigDict, Field

from app.contract.images import ImageRequestBase, PromptedImageRequest

RequestT = TypeVar("RequestT", bound=BaseModel)


class ImageReference(BaseModel):
    """One input image in the JSON form. Only ``image_url`` (a data: URL, or http(s) when
    SLEEPWELL_FETCH_IMAGE_URLS=true) is served; a ``file_id`` gets a 400 saying so."""

    model_config = ConfigDict(extra="ignore")

    image_url: str | None = None
    file_id: str | None = None


def _strength(description: str) -> Any:
    return Field(None, strict=True, ge=0.0, le=1.0, allow_inf_nan=False,
                 description=description)


class ImageEditRequest(PromptedImageRequest):
    """POST /v1/images/edits: img2img, or inpainting when a mask is given."""

    strength: float | None = _strength(
        "extension: how much of the input is redrawn, 0 (none) to 1 (all); default: 1 with "
        "a mask, else SLEEPWELL_EDIT_STRENGTH"
    )
    # The JSON form's inputs; the multipart form sends files instead.
    images: list[ImageReference] | None = None
    mask: ImageReference | None = None


class ImageVariationRequest(ImageRequestBase):
    """POST /v1/images/variations: img2img of the image with an empty prompt."""

    strength: float | None = _strength(
        "extension: how far a variation strays from the input, 0 to 1; default "
        "SLEEPWELL_VARIATION_STRENGTH"
    )


def from_form(model: type[RequestT], fields: Mapping[str, str]) -> RequestT:
    """Validate multipart form fields: each string becomes the type its field declares.

    A string that does not parse is passed on unchanged, so the model's own validator
    refuses it and the 400 names that field (``n=two`` -> param ``n``).
    """
    values: dict[str, Any] = {}
    for name, raw in fields.items():
        field = model.model_fields.get(name)
        values[name] = raw if field is None else _coerce(raw, repr(field.annotation))
    return model.model_validate(values)


def _coerce(raw: str, annotation: str) -> object:
    # By the annotation's text (``int | None``, ``Annotated[int, Strict()]``...): the request
    # models' scalar fields are str, int, float and bool only, optional or not.
    if "bool" in annotation:
        return {"true": True, "false": False}.get(raw.strip().lower(), raw)
    if "int" in annotation:
        stripped = raw.strip()
        digits = stripped.removeprefix("-")
        return int(stripped) if digits.isdigit() and len(digits) <= 12 else raw
    if "float" in annotation:
        try:
            return float(raw)
        except ValueError:
            return raw
    return raw
