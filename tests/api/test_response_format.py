"""``response_format: "url"`` (OpenAI's other format) is refused with what to use instead.

In-process with the real lifespan and demo model (no warm-up): the answer comes from request
validation, before any generation.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from fastapi.testclient import TestClient
from pydantic import ValidationError

from app.jobs.schemas import JobCreateRequest
from app.main import create_app
from app.settings import Settings
from tests.support.server import DEMO_MODEL_DIR


@pytest.fixture(scope="module")
def client() -> Iterator[TestClient]:
    settings = Settings(device="cpu", jobs_enabled=False, warmup=False,
                        demo_model_dir=DEMO_MODEL_DIR)
    with TestClient(create_app(settings)) as running:
        yield running


@pytest.mark.parametrize("stream", [False, True])
def test_response_format_url_answers_400_saying_use_b64_json(
    client: TestClient, stream: bool
) -> None:
    body = {"prompt": "a cat", "size": "64x64", "response_format": "url", "stream": stream}
    response = client.post("/v1/images/generations", json=body)
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["param"] == "response_format" and error["type"] == "invalid_request_error"
    assert "URLs are not supported yet" in error["message"]
    assert '"b64_json"' in error["message"]


def test_response_format_other_value_keeps_the_plain_validation_message(
    client: TestClient,
) -> None:
    body = {"prompt": "a cat", "size": "64x64", "response_format": "png"}
    error = client.post("/v1/images/generations", json=body).json()["error"]
    assert error["param"] == "response_format" and "URLs" not in error["message"]


def test_response_format_b64_json_still_generates(client: TestClient) -> None:
    body = {"prompt": "a cat", "size": "64x64", "response_format": "b64_json",
            "num_inference_steps": 1}
    response = client.post("/v1/images/generations", json=body)
    assert response.status_code == 200, response.text
    assert response.json()["data"][0]["b64_json"]


def test_response_format_url_in_a_job_request_is_refused_the_same_way() -> None:
    with pytest.raises(ValidationError, match="URLs are not supported yet"):
        JobCreateRequest.model_validate({"prompt": "a cat", "response_format": "url"})
