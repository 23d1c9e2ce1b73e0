"""Schemathesis on the multipart routes (edits, variations), from the live OpenAPI schema:
generated requests, valid and invalid, get no 5xx and match the schema.

Fuzzed bytes are never a decodable image, so in half the valid cases the image part is
swapped for a real PNG: the other generated fields then reach admission and the pipeline.
(tests/api/test_schemathesis.py covers these routes too, lightly, with every other route.)
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from schemathesis import GenerationMode
from schemathesis.core.failures import Failure, FailureGroup

from tests.api.test_schemathesis import CHECKS
from tests.support.edit_inputs import png
from tests.support.server import RunningServer, gunicorn_server

ROUTES = ("/v1/images/edits", "/v1/images/variations")
EXAMPLES = 60


@pytest.fixture(scope="module")
def server() -> Iterator[RunningServer]:
    env = {"SLEEPWELL_DEFAULT_STEPS": "1", "SLEEPWELL_MAX_STEPS": "2",
           "SLEEPWELL_MAX_PIXELS": "4096", "SLEEPWELL_MAX_IMAGES": "2",
           "SLEEPWELL_MAX_QUEUE": "64", "SLEEPWELL_MAX_UPLOAD_BYTES": "65536"}
    with gunicorn_server(env) as running:
        yield running


def _run(operation: Any, mode: GenerationMode, base_url: str, statuses: Counter[int],
         failures: list[str]) -> None:
    label = f"{operation.method.upper()} {operation.path} {mode.value}"
    swapped = Counter[str]()

    @settings(max_examples=EXAMPLES, deadline=None, database=None, derandomize=True,
              phases=[Phase.explicit, Phase.generate], suppress_health_check=list(HealthCheck))
    @given(case=operation.as_strategy(generation_mode=mode))
    def run(case: Any) -> None:
        body = case.body
        if (mode is GenerationMode.POSITIVE and isinstance(body, dict) and "image" in body
                and swapped["n"] % 2 == 0):
            body["image"] = png()
        swapped["n"] += 1
        response = case.call(base_url=base_url, timeout=60)
        statuses[response.status_code] += 1
        try:
            case.validate_response(response, checks=CHECKS)
        except (Failure, FailureGroup) as exc:
            failures.append(f"{label} {response.status_code}: {str(exc)[:1500]}")

    run()


def test_schemathesis_uploads_multipart_routes_get_no_5xx_and_match_the_schema(server) -> None:
    schema = schemathesis.openapi.from_url(f"{server.url}/openapi.json")
    statuses: Counter[int] = Counter()
    failures: list[str] = []
    operations = [result.ok() for result in schema.get_all_operations()]
    chosen = [operation for operation in operations if operation.path in ROUTES]
    assert len(chosen) == 2
    for operation in chosen:
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
            _run(operation, mode, server.url, statuses, failures)
    print(f"\nschemathesis uploads: by status {dict(sorted(statuses.items()))}")
    assert not failures, "\n\n".join(failures[:10])
    assert not [status for status in statuses if status >= 500]
    assert statuses[200] >= 5, "valid requests must have reached the pipeline"
