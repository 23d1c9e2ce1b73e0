"""POST /v1/images/variations: img2img of one image with an empty prompt (docs/edits.md).

Multipart only, as OpenAI's: ``image`` and text fields ``n``, ``size``, ``seed``,
``response_format``, ``output_format``, ``strength``.
"""

from __future__ import annotations

import time

from fastapi import APIRouter, Request
from fastapi.responses import Response
from pydantic import ValidationError

from app.api.answers import answer_images
from app.api.deps import RequestIdDep, ServiceDep
from app.api.forms import as_request_error, is_multipart, read_multipart
from app.api.upload_docs import multipart_schema, request_body
from app.contract.edits import ImageVariationRequest, from_form
from app.contract.images import ImageGenerationResponse, WorkKind
from app.errors import InvalidRequest
from app.serving.admission import build_variation
from app.uploads.inputs import load_inputs

router = APIRouter(tags=["images"])

_FILES = {"image": "the image to vary (PNG, JPEG or WebP)"}
_BODY_DOC = request_body({
    "multipart/form-data": multipart_schema(ImageVariationRequest, _FILES, ["image"],
                                            json_only=set()),
})


@router.post("/v1/images/variations", response_model=ImageGenerationResponse,
             openapi_extra=_BODY_DOC)
async def vary_image(request: Request, service: ServiceDep, request_id: RequestIdDep
                     ) -> Response:
    arrived_at = time.monotonic()
    request.state.kind = WorkKind.VARIATION.value  # for the access line
    settings = service.settings
    if not is_multipart(request):
        raise InvalidRequest("Send the image as multipart/form-data (field image), as the "
                             "OpenAI SDK's images.create_variation does.", param="image")
    form = await read_multipart(request, settings, set(_FILES))
    try:
        body = from_form(ImageVariationRequest, form.fields)
    except ValidationError as exc:
        raise as_request_error(exc) from None
    model = await service.serving_model(arrived_at, requested=body.model,
                                        kind=WorkKind.VARIATION)
    inputs = await load_inputs(form.files["image"], None, settings)
    generation = build_variation(body, inputs, settings, model, request_id, arrived_at)
    return await answer_images(service, generation, request, stream=False)
