"""API keys, admin key, metrics token, CORS and what the logs keep, on the real service."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.support.access_log import wait_for_access_lines
from tests.support.server import RunningServer, gunicorn_server
from tests.support.waiting import wait_until

ENV_KEYS = ("sk-env-one-4471", "sk-env-two-9902")
FILE_KEY = "sk-file-one-3318"
ADMIN_KEY = "adm-secret-5521"
METRICS_TOKEN = "metrics-secret-6637"
ORIGIN = "https://app.example"
SECRETS = (*ENV_KEYS, FILE_KEY, ADMIN_KEY, METRICS_TOKEN)
PROMPT = "zebra lighthouse 7731 at dawn"
GENERATE = "/v1/images/generations"


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    work = tmp_path_factory.mktemp("auth")
    keys_file = work / "keys"
    keys_file.write_text(f"# keys for the auth tests\n{FILE_KEY}  # team A\n\n")
    env = {
        "SLEEPWELL_API_KEYS": ",".join(ENV_KEYS),
        "SLEEPWELL_API_KEYS_FILE": str(keys_file),
        "SLEEPWELL_ADMIN_KEY": ADMIN_KEY,
        "SLEEPWELL_METRICS_TOKEN": METRICS_TOKEN,
        "SLEEPWELL_CORS_ORIGINS": ORIGIN,
        "SLEEPWELL_LOG_FILE": str(work / "logs" / "sleepwell.log"),
        "SLEEPWELL_FAULT_INJECTION": "true",
        "SLEEPWELL_DEFAULT_STEPS": "1",
    }
    with gunicorn_server(env) as running:
        yield running


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def json_lines(text: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in text.splitlines() if line.strip()]


@pytest.mark.parametrize(
    ("method", "path"),
    [("GET", "/v1/models"), ("POST", GENERATE), ("GET", "/v1/models/x"), ("GET", "/v1/nope")],
)
def test_v1_without_key_answers_401_in_openai_shape(server, method, path) -> None:
    response = httpx.request(method, server.url + path, json={"prompt": "x"})
    assert response.status_code == 401, response.text
    assert response.headers["www-authenticate"] == "Bearer"
    error = response.json()["error"]
    assert error["type"] == "authentication_error" and error["code"] == "invalid_api_key"
    assert set(error) == {"message", "type", "param", "code"}
    assert response.headers["x-request-id"]


@pytest.mark.parametrize(
    "authorization",
    [b"Bearer sk-wrong", b"Bearer " + ENV_KEYS[0].encode() + b"x", b"Basic " + FILE_KEY.encode(),
     b"Bearer \xff\xfe\xfd", ENV_KEYS[0].encode()],
)
def test_v1_wrong_key_answers_401(server, authorization) -> None:
    response = httpx.get(server.url + "/v1/models", headers={"Authorization": authorization})
    assert response.status_code == 401, response.text
    assert response.json()["error"]["type"] == "authentication_error"


@pytest.mark.parametrize("key", [*ENV_KEYS, FILE_KEY])
def test_v1_configured_key_from_env_or_file_is_accepted(server, key) -> None:
    response = httpx.get(server.url + "/v1/models", headers=bearer(key))
    assert response.status_code == 200, response.text


@pytest.mark.parametrize("path", ["/health", "/health/live", "/health/ready"])
def test_health_endpoints_stay_open_without_any_key(server, path) -> None:
    assert httpx.get(server.url + path).status_code == 200


def test_metrics_token_is_required_and_api_keys_do_not_open_it(server) -> None:
    for headers in ({}, bearer(ENV_KEYS[0]), bearer(ADMIN_KEY)):
        response = httpx.get(server.url + "/metrics", headers=headers)
        assert response.status_code == 401
        assert response.json()["error"]["code"] == "invalid_metrics_token"
    assert httpx.get(server.url + "/metrics", headers=bearer(METRICS_TOKEN)).status_code == 200


def test_admin_needs_admin_key_not_api_key(server) -> None:
    for headers in ({}, bearer(ENV_KEYS[0]), bearer("adm-wrong")):
        response = httpx.post(server.url + "/admin/models/load", json={}, headers=headers)
        assert response.status_code == 401
        assert response.json()["error"]["code"] == "invalid_admin_key"
    passed = httpx.post(server.url + "/admin/models/load", json={}, headers=bearer(ADMIN_KEY))
    assert passed.status_code != 401  # past the guard; what the route answers is its business


def test_openai_sdk_with_key_works_and_wrong_key_raises(server) -> None:
    import openai

    client = openai.OpenAI(base_url=server.url + "/v1", api_key=FILE_KEY, max_retries=0)
    assert client.models.list().data[0].id
    wrong = openai.OpenAI(base_url=server.url + "/v1", api_key="sk-nope", max_retries=0)
    with pytest.raises(openai.AuthenticationError):
        wrong.models.list()


def test_cors_preflight_from_allowed_origin_needs_no_key(server) -> None:
    headers = {"Origin": ORIGIN, "Access-Control-Request-Method": "POST",
               "Access-Control-Request-Headers": "authorization,content-type"}
    response = httpx.options(server.url + GENERATE, headers=headers)
    assert response.status_code == 200
    assert response.headers["access-control-allow-origin"] == ORIGIN
    assert "authorization" in response.headers["access-control-allow-headers"].lower()
    evil = httpx.options(server.url + GENERATE, headers={**headers, "Origin": "https://evil.example"})
    assert evil.status_code == 400 and "access-control-allow-origin" not in evil.headers


def test_cors_simple_request_exposes_request_id_and_limits(server) -> None:
    response = httpx.get(server.url + "/v1/models", headers={"Origin": ORIGIN, **bearer(FILE_KEY)})
    assert response.headers["access-control-allow-origin"] == ORIGIN
    assert "x-request-id" in response.headers["access-control-expose-headers"].lower()
    refused = httpx.get(server.url + "/v1/models", headers={"Origin": ORIGIN})
    assert refused.status_code == 401  # a browser can read why
    assert refused.headers["access-control-allow-origin"] == ORIGIN


def test_logs_keep_prompt_hash_and_timings_but_no_key_prompt_or_image(server) -> None:
    response = httpx.post(server.url + GENERATE, headers=bearer(ENV_KEYS[1]), timeout=60,
                          json={"prompt": PROMPT, "size": "64x64", "n": 2, "seed": 3})
    assert response.status_code == 200, response.text
    request_id = response.headers["x-request-id"]
    image_chunk = response.json()["data"][0]["b64_json"][100:160]
    httpx.get(server.url + "/metrics", headers=bearer(METRICS_TOKEN))
    line = wait_for_access_lines(server, [request_id])[request_id]
    log = server.log()
    assert line["message"] == "request"
    assert line["status"] == 200 and line["method"] == "POST" and line["path"] == GENERATE
    assert line["pid"] in server.worker_pids() and line["model"]
    assert line["prompt_chars"] == len(PROMPT)
    assert line["prompt_sha256"] == hashlib.sha256(PROMPT.encode()).hexdigest()[:12]
    assert line["n"] == 2 and line["key_id"] and line["duration_ms"] > 0
    assert {"queue_ms", "inference_ms", "encode_ms"} <= set(line)
    for secret in (*SECRETS, PROMPT, image_chunk):
        assert secret not in log


def test_logs_every_line_is_json_in_stdout_and_the_rotating_file(server) -> None:
    probe_id = httpx.get(server.url + "/health/live").headers["x-request-id"]
    wait_for_access_lines(server, [probe_id])
    entries = json_lines(server.log())  # raises on any plain line
    loggers = {entry["logger"] for entry in entries}
    assert {"gunicorn.error", "uvicorn.error", "sleepwell.access"} <= loggers
    assert all("pid" in entry and "time" in entry and "level" in entry for entry in entries)
    log_file = Path(server.env["SLEEPWELL_LOG_FILE"])
    wait_until(lambda: probe_id in log_file.read_text(), 15, what="the access line in the file")
    in_file = json_lines(log_file.read_text())
    assert {"gunicorn.error", "sleepwell.access"} <= {entry["logger"] for entry in in_file}
    assert not any(secret in log_file.read_text() for secret in SECRETS)


def test_logs_traceback_carries_request_id_but_not_the_prompt(server) -> None:
    prompt = "[[fail]] quiet heron 5150"
    response = httpx.post(server.url + GENERATE, headers=bearer(FILE_KEY), timeout=60,
                          json={"prompt": prompt, "size": "64x64"})
    assert response.status_code == 500
    request_id = response.headers["x-request-id"]
    errors = [entry for entry in json_lines(server.log())
              if entry["level"] == "ERROR" and request_id in json.dumps(entry)]
    assert any("Traceback" in entry.get("exc_info", "") for entry in errors), errors
    assert "quiet heron" not in server.log()
