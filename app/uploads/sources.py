"""Where input bytes come from: a multipart file, a data: URL, or (when allowed) http(s).

Each is read with the size limit applied as it arrives, never after buffering the lot.
"""

from __future__ import annotations

import base64
import binascii
from urllib.parse import unquote_to_bytes

import httpx
from starlette.datastructures import UploadFile

from app.contract.edits import ImageReference
from app.errors import InvalidRequest
from app.net.ssrf import WebhookRefused, WebhookUnresolved, allowed_hosts, resolve
from app.settings import Settings
from app.uploads.decode import check_byte_size

_CHUNK = 64 * 1024


async def read_upload(upload: UploadFile, param: str, settings: Settings) -> bytes:
    """A multipart file's bytes (already spooled by the parser: chunked, to stop early)."""
    chunks: list[bytes] = []
    received = 0
    while chunk := await upload.read(_CHUNK):
        received += len(chunk)
        check_byte_size(received, param, settings)
        chunks.append(chunk)
    return b"".join(chunks)


async def read_image_url(url: str, param: str, settings: Settings) -> bytes:
    if url.startswith("data:"):
        return _read_data_url(url, param, settings)
    if url.startswith(("http://", "https://")):
        if not settings.fetch_image_urls:
            raise InvalidRequest(
                f"{param} is an http(s) URL and this server does not fetch URLs "
                "(SLEEPWELL_FETCH_IMAGE_URLS=false); send the image as a data: URL "
                "(data:image/png;base64,...) or as a multipart file.",
                param=param, code="image_url_not_allowed",
            )
        return await _fetch(url, param, settings)
    raise InvalidRequest(f"{param} must be a data: URL or an http(s) URL.", param=param)


def _read_data_url(url: str, param: str, settings: Settings) -> bytes:
    header, comma, payload = url.partition(",")
    if not comma:
        raise InvalidRequest(f"{param} is a data: URL without data.", param=param)
    if not header.endswith(";base64"):
        # Percent-encoded binary is legal but nobody sends images so; still bounded.
        check_byte_size(len(payload) // 3, param, settings)
        return unquote_to_bytes(payload)
    # Base64 is 4 characters per 3 bytes: refuse by length before decoding anything.
    check_byte_size(len(payload) * 3 // 4 - 2, param, settings)
    try:
        return base64.b64decode(payload, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise InvalidRequest(f"{param} is a data: URL whose base64 is invalid.",
                             param=param) from exc


async def _fetch(url: str, param: str, settings: Settings) -> bytes:
    """GET through the webhook SSRF guard: the checked address, no redirects, bounded."""
    try:
        target = await resolve(url, allowed_hosts(settings), timeout_s=settings.webhook_timeout_s)
    except (WebhookRefused, WebhookUnresolved) as exc:
        raise InvalidRequest(f"{param} URL refused: {exc}", param=param,
                             code="image_url_refused") from exc
    chunks: list[bytes] = []
    received = 0
    try:
        async with httpx.AsyncClient(timeout=settings.webhook_timeout_s) as client, \
                client.stream("GET", target.url, headers={"host": target.host_header},
                              extensions={"sni_hostname": target.host}) as response:
            if response.status_code != 200:
                raise InvalidRequest(f"{param} URL answered HTTP {response.status_code}.",
                                     param=param, code="image_url_failed")
            async for chunk in response.aiter_bytes(_CHUNK):
                received += len(chunk)
                check_byte_size(received, param, settings)
                chunks.append(chunk)
    except httpx.HTTPError as exc:
        raise InvalidRequest(f"{param} URL could not be fetched: {type(exc).__name__}.",
                             param=param, code="image_url_failed") from exc
    return b"".join(chunks)


async def read_reference(reference: ImageReference, param: str, settings: Settings) -> bytes:
    """The bytes of a JSON-form image (``{"image_url": ...}``); file ids are not kept here."""
    if reference.image_url is None:
        detail = "file ids are not supported here" if reference.file_id else "it is missing"
        raise InvalidRequest(f"{param} needs an image_url ({detail}); send a data: URL "
                             "(data:image/png;base64,...).", param=param)
    return await read_image_url(reference.image_url, param, settings)
