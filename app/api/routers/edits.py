"""POST /v1/images/edits: img2img, or inpainting with a mask (docs/edits.md).

One path, two forms: the official SDK's multipart (``image`` or ``image[]`` files, ``mask``
file, other fields as text) and the JSON form (``images: [{"image_url": ...}]``, ``mask:
{"image_url": ...}``). Both become one ``ImageEditRequest`` and the same inputs, then take
the generations' path: admission, the runner, and one answer builder (app/api/answers.py).
"""

from __future__ import annotations

import time

from fastapi import APIRouter, Request
from fastapi.responses import Response
from pydantic import ValidationError

from app.api.answers import answer_images
from app.api.deps import RequestIdDep, ServiceDep
from app.api.forms import as_request_error, is_multipart, read_json, read_multipart, validated
from app.api.streaming import STREAM_RESPONSE_DOC
from app.api.upload_docs import json_schema, multipart_schema, request_body
from app.contract.edits import ImageEditRequest, from_form
from app.contract.images import ImageGenerationResponse, WorkKind
from app.errors import InvalidRequest
from app.serving.admission import build_edit
from app.settings import Settings
from app.uploads.inputs import check_image_count, load_inputs
from app.uploads.sources import read_reference

router = APIRouter(tags=["images"])

_FILES = {"image": "the image to edit (PNG, JPEG or WebP); the SDK's list form sends "
          "image[]; this server takes one image",
          "mask": "optional: transparent (or, without alpha, white) = change"}
_BODY_DOC = request_body({
    "multipart/form-data": multipart_schema(ImageEditRequest, _FILES, ["image"],
                                            json_only={"images", "mask"}),
    "application/json": json_schema(ImageEditRequest, ["images"], {"images": 1}),
})


@router.post("/v1/images/edits", response_model=ImageGenerationResponse,
             responses=STREAM_RESPONSE_DOC, openapi_extra=_BODY_DOC)
async def edit_images(request: Request, service: ServiceDep, request_id: RequestIdDep
                      ) -> Response:
    arrived_at = time.monotonic()
    request.state.kind = WorkKind.EDIT.value  # for the access line
    settings = service.settings
    if is_multipart(request):
        body, images, mask = await _multipart_edit(request, settings)
        image_param = "image"
    else:
        body, images, mask = await _json_edit(request, settings)
        image_param = "images"
    model = await service.serving_model(arrived_at, requested=body.model, kind=WorkKind.EDIT)
    inputs = await load_inputs(images, mask, settings, image_param)
    generation = build_edit(body, inputs, settings, model, request_id, arrived_at)
    return await answer_images(service, generation, request, stream=body.stream,
                               progress=body.stream_progress)


async def _multipart_edit(request: Request, settings: Settings
                          ) -> tuple[ImageEditRequest, list[bytes], bytes | None]:
    form = await read_multipart(request, settings, set(_FILES))
    try:
        body = from_form(ImageEditRequest, form.fields)
    except ValidationError as exc:
        raise as_request_error(exc) from None
    check_image_count(len(form.files["image"]), "image")
    masks = form.files["mask"]
    if len(masks) > 1:
        raise InvalidRequest("Send at most one mask.", param="mask")
    return body, form.files["image"], masks[0] if masks else None


async def _json_edit(request: Request, settings: Settings
                     ) -> tuple[ImageEditRequest, list[bytes], bytes | None]:
    body: ImageEditRequest = validated(ImageEditRequest, await read_json(request))
    references = body.images or []
    check_image_count(len(references), "images")
    images = [await read_reference(reference, "images", settings) for reference in references]
    mask = await read_reference(body.mask, "mask", settings) if body.mask is not None else None
    return body, images, mask
