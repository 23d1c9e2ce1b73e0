"""A regression corpus of nasty inputs against the real service (tests/api/test_images.py has the
basics). Each must get a clean 4xx (or a 200 where the input is odd but valid), never a
5xx, a hang or a dead worker; slow senders are cut off in bounded time.
"""

from __future__ import annotations

import contextlib
import socket
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

from tests.support.server import RunningServer, gunicorn_server

GENERATE = "/v1/images/generations"
BODY_TIMEOUT_S = 2.0
MAX_BODY = 65536


@pytest.fixture(scope="module")
def server() -> Iterator[RunningServer]:
    env = {
        "SLEEPWELL_DEFAULT_STEPS": "1",
        "SLEEPWELL_MAX_PIXELS": "4096",
        "SLEEPWELL_MAX_IMAGES": "2",
        "SLEEPWELL_MAX_BODY_BYTES": str(MAX_BODY),
        "SLEEPWELL_BODY_TIMEOUT_S": str(BODY_TIMEOUT_S),
    }
    with gunicorn_server(env) as running:
        yield running
        assert running.process.poll() is None, "the server died during the corpus"
        errors = [line[:3000] for line in running.log().splitlines() if "unhandled" in line]
        assert not errors, f"some input caused a 500: {errors}"


def post_raw(server: RunningServer, raw: bytes, content_type: str | None = "application/json"
             ) -> httpx.Response:
    headers = {"content-type": content_type} if content_type else {}
    return httpx.post(server.url + GENERATE, content=raw, headers=headers, timeout=60)


def generate(server: RunningServer, **body: object) -> httpx.Response:
    return httpx.post(server.url + GENERATE, json={"size": "64x64", **body}, timeout=60)


@pytest.mark.parametrize(
    "prompt",
    [
        "👩‍👩‍👧‍👦 🏳️‍🌈 a family of flags",
        "مرحبا بالعالم — שלום — e\u0301\u0301\u0301 combining",
        "nul \x00 bell \x07 escape \x1b[31m red \x1b[0m del \x7f",
        "line\u2028separator\u2029paragraph\ufeffbom\u200b",
        "字" * 2000,  # at the character limit, 6000 bytes of UTF-8
        "[[fail]] [[oom]] [[stall]] markers are plain text with fault injection off",
        "\U0010ffff\U000e0001 planes beyond the basic one",
    ],
)
def test_generate_odd_but_valid_prompt_answers_200(server, prompt) -> None:
    response = generate(server, prompt=prompt)
    assert response.status_code == 200, response.text[:500]
    assert response.json()["data"][0]["b64_json"]


def test_generate_lone_surrogate_prompt_is_answered_without_5xx(server) -> None:
    response = post_raw(server, b'{"prompt": "half a pair \\ud800 here", "size": "64x64"}')
    assert response.status_code in (200, 400), response.text


@pytest.mark.parametrize(
    "raw",
    [
        b'{"prompt": "x", "guidance_scale": Infinity}',
        b'{"prompt": "x", "guidance_scale": -Infinity}',
        b'{"prompt": "x", "guidance_scale": 1e400}',
        b'{"prompt": "x", "n": 1e400}',
        b'{"prompt": "x", "n": NaN}',
        b'{"prompt": "x", "n": 100000000000000000000000000000000000000000}',
        b'{"prompt": "x", "n": -1}',
        b'{"prompt": "x", "n": 3}',
        b'{"prompt": "x", "n": true}',
        b'{"prompt": "x", "seed": 18446744073709551616}',
        b'{"prompt": "x", "seed": 1.0}',
        b'{"prompt": "x", "num_inference_steps": -5}',
        b'{"prompt": "x", "num_inference_steps": 1000000000000000000000000000000}',
        b'{"prompt": "x", "size": "-64x-64"}',
        b'{"prompt": "x", "size": "64x0"}',
        b'{"prompt": "x", "size": "1000000x1"}',
        b'{"prompt": "x", "size": "99999999x1"}',
        b'{"prompt": "x", "size": "64x64\\n"}',
        b'{"prompt": "x", "size": " 64x64"}',
        b'{"prompt": "x", "size": "\\uff16\\uff14x\\uff16\\uff14"}',  # full-width digits
        b'{"prompt": "x", "size": "4096x1"}',
        b'{"prompt": {"$gt": ""}}',
        b'{"prompt": ["a", "b"]}',
        b'{"prompt": "x", "negative_prompt": 7}',
        b'{"prompt": "x", "output_format": "../../etc/passwd"}',
        b'"just a string"',
        b"null",
        b"12345",
        b"[" * 30000 + b"]" * 30000,
        b'{"prompt": ' + b"[" * 30000 + b"]" * 30000 + b"}",
        b'{"prompt": "unterminated',
        b'{"prompt": "raw control \x01 char"}',
        b"\xff\xfe\x00{\x00}",
        b'{"prompt": "x"}' + b"\x00" * 100,
    ],
)
def test_generate_nasty_body_answers_400(server, raw) -> None:
    response = post_raw(server, raw)
    assert response.status_code == 400, (raw[:80], response.status_code, response.text[:300])
    assert response.json()["error"]["type"] == "invalid_request_error"


@pytest.mark.parametrize(
    ("raw", "content_type"),
    [
        (b'{"prompt": "x"}', "text/plain"),
        (b"<prompt>x</prompt>", "application/xml"),
        (b'{"prompt": "x"}', "application/octet-stream"),
        (b'--b\r\nContent-Disposition: form-data; name="prompt"\r\n\r\nx\r\n--b--\r\n',
         "multipart/form-data; boundary=b"),
        (b'{"prompt": "caf\xe9"}', "application/json; charset=latin-1"),
        (b'{"prompt": "x"}', "application/json; charset=nonsense"),
        (b'{"prompt": "x"}', ""),
    ],
)
def test_generate_wrong_content_type_never_5xx(server, raw, content_type) -> None:
    response = post_raw(server, raw, content_type or None)
    assert 200 <= response.status_code < 500, response.text[:300]
    if response.status_code != 200:
        assert response.json()["error"]["type"] == "invalid_request_error"


def test_generate_chunked_body_over_limit_answers_413(server) -> None:
    def chunks() -> Iterator[bytes]:
        yield b'{"prompt": "'
        for _ in range(MAX_BODY // 4096 + 2):
            yield b"x" * 4096
        yield b'"}'

    response = httpx.post(server.url + GENERATE, content=chunks(),
                          headers={"content-type": "application/json"}, timeout=30)
    assert response.status_code == 413, response.text
    assert response.json()["error"]["code"] == "request_too_large"


def test_wrong_method_and_huge_path_answer_4xx(server) -> None:
    put = httpx.put(server.url + GENERATE, json={"prompt": "x"})
    assert put.status_code == 405 and put.json()["error"]["type"] == "invalid_request_error"
    long_path = httpx.get(server.url + "/v1/models/" + "a" * 60_000, timeout=10)
    assert 400 <= long_path.status_code < 500
    many_headers = {f"x-junk-{i}": "v" * 50 for i in range(300)}
    assert httpx.get(server.url + "/v1/models", headers=many_headers).status_code < 500


def _open(server: RunningServer, head: bytes) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", server.port), timeout=10)
    sock.sendall(head)
    return sock


def _answer_until_closed(sock: socket.socket, timeout: float) -> bytes:
    """Everything the server sends until it closes the connection (a reset counts as
    closed); AssertionError if it is still open after ``timeout``, a bound on a hang."""
    answer = b""
    sock.settimeout(timeout)
    while True:
        try:
            chunk = sock.recv(4096)
        except ConnectionResetError:
            return answer
        except TimeoutError:
            raise AssertionError(f"still open after {timeout}s: {answer[:200]!r}") from None
        if not chunk:
            return answer
        answer += chunk


def _rest_until_closed(sock: socket.socket, timeout: float) -> bytes:
    """What the server still sends before it closes the connection (bounded in time)."""
    rest = b""
    deadline = time.monotonic() + timeout
    sock.settimeout(0.25)
    while time.monotonic() < deadline:
        try:
            chunk = sock.recv(4096)
        except TimeoutError:
            continue
        except OSError:
            break
        if not chunk:
            break
        rest += chunk
    return rest


def _head(length: int) -> bytes:
    return (f"POST {GENERATE} HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\n"
            f"Content-Length: {length}\r\n\r\n").encode()


def test_generate_truncated_body_is_answered_or_closed_promptly(server) -> None:
    with _open(server, _head(200) + b'{"prompt": "trunc') as sock:
        sock.shutdown(socket.SHUT_WR)  # the client gives up mid-body
        # The server closes the connection (at the latest at its body timeout), answered
        # or not; a server that waited on would leave it open until this bound.
        answer = _answer_until_closed(sock, 30)
    status = answer.split(b"\r\n", 1)[0]
    assert status in (b"", b"HTTP/1.1 400 Bad Request", b"HTTP/1.1 408 Request Timeout")
    assert generate(server, prompt="after a truncated body").status_code == 200


def test_generate_slow_body_is_cut_off_with_408(server) -> None:
    started = time.monotonic()
    answer = b""
    with _open(server, _head(100) + b'{"prompt": ') as sock:
        sock.settimeout(0.25)
        # One byte per 0.25 s, never the whole body: only a limit on the whole body, not
        # an idle timeout, can stop it. Bounded at 120 bytes (30 s) if nothing does.
        for _ in range(120):
            try:
                sock.sendall(b"x")
                answer = sock.recv(4096)
                break  # an answer, or b"" for a closed connection
            except TimeoutError:
                continue
            except OSError:
                break
        elapsed = time.monotonic() - started
        answer += _rest_until_closed(sock, 5.0)  # headers and body may come in two packets
    assert answer.startswith(b"HTTP/1.1 408 Request Timeout"), answer[:200]
    assert b'"code": "request_timeout"' in answer
    assert elapsed > BODY_TIMEOUT_S - 0.1  # not before the limit (later under load is fine)


def test_slowloris_connections_do_not_starve_other_clients(server) -> None:
    """40 connections dribbling headers for 3 s; health and a generation are answered
    meanwhile (each health call within its 5 s client timeout: a hang guard, no budget)."""
    socks = [_open(server, b"POST " + GENERATE.encode() + b" HTTP/1.1\r\nHost: t\r\n")
             for _ in range(40)]
    try:
        with ThreadPoolExecutor(2) as pool:
            generation = pool.submit(generate, server, prompt="while slowloris")
            latencies = []
            deadline = time.monotonic() + 3
            while time.monotonic() < deadline:
                for sock in socks:
                    with contextlib.suppress(OSError):
                        sock.sendall(b"X-Drip: 1\r\n")
                started = time.monotonic()
                assert httpx.get(server.url + "/health/live", timeout=5).status_code == 200
                latencies.append(time.monotonic() - started)
                time.sleep(0.2)
            assert generation.result(60).status_code == 200
    finally:
        for sock in socks:
            sock.close()
    print(f"health during slowloris: max {max(latencies) * 1000:.0f} ms over {len(latencies)}")
