"""Where input bytes come from: data: URLs, and http(s) URLs only when allowed, through the
webhook SSRF guard (app/net/ssrf.py), against a real local HTTP server."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from app.errors import InvalidRequest, PayloadTooLarge
from app.settings import Settings
from app.uploads.sources import read_image_url
from tests.support.edit_inputs import data_url, png

LIMIT = 16 * 1024


class _Images(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        body = {"/small.png": png(), "/big.png": bytes(4 * LIMIT)}.get(self.path)
        self.send_response(200 if body is not None else 404)
        self.send_header("content-length", str(len(body or b"")))
        self.end_headers()
        self.wfile.write(body or b"")

    def log_message(self, *_args: object) -> None:
        return


@pytest.fixture(scope="module")
def image_host() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Images)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    thread.join(10)


def settings(**fields: object) -> Settings:
    return Settings(max_upload_bytes=LIMIT, **fields)  # type: ignore[arg-type]


async def test_sources_data_url_gives_its_bytes() -> None:
    assert await read_image_url(data_url(png()), "images", settings()) == png()


async def test_sources_invalid_base64_is_refused_naming_the_param() -> None:
    with pytest.raises(InvalidRequest) as refused:
        await read_image_url("data:image/png;base64,@@@@", "mask", settings())
    assert refused.value.param == "mask" and "base64" in refused.value.message


async def test_sources_long_data_url_is_413_before_decoding() -> None:
    # Not valid base64 at all: refused by its length, so it was never decoded.
    with pytest.raises(PayloadTooLarge) as refused:
        await read_image_url("data:image/png;base64," + "@" * (2 * LIMIT), "images",
                             settings())
    assert refused.value.param == "images"


async def test_sources_http_url_when_fetching_is_off_is_a_clear_400(image_host) -> None:
    with pytest.raises(InvalidRequest) as refused:
        await read_image_url(image_host + "/small.png", "images", settings())
    assert refused.value.param == "images"
    assert "SLEEPWELL_FETCH_IMAGE_URLS" in refused.value.message


async def test_sources_http_url_to_loopback_is_refused_by_the_ssrf_guard(image_host) -> None:
    with pytest.raises(InvalidRequest) as refused:
        await read_image_url(image_host + "/small.png", "images",
                             settings(fetch_image_urls=True))
    assert refused.value.code == "image_url_refused" and "127.0.0.1" in refused.value.message


async def test_sources_http_url_opened_by_the_allow_list_is_fetched(image_host) -> None:
    opened = settings(fetch_image_urls=True, webhook_allowed_hosts="127.0.0.1")
    assert await read_image_url(image_host + "/small.png", "images", opened) == png()
    with pytest.raises(PayloadTooLarge):
        await read_image_url(image_host + "/big.png", "images", opened)
    with pytest.raises(InvalidRequest) as missing:
        await read_image_url(image_host + "/missing.png", "images", opened)
    assert "HTTP 404" in missing.value.message
