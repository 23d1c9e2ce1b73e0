"""Schemathesis against the live service's own OpenAPI schema: at least 500 generated
requests, valid and invalid, and not one 5xx or schema violation.

The server is configured so that valid generations are cheap (1 step, at most 4096 pixels,
at most 2 images) and an API key is required, so the keyed path is what gets exercised.
Generation is derandomized: CI runs the same cases every time.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode
from schemathesis.checks import (
    content_type_conformance,
    negative_data_rejection,
    not_a_server_error,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)
from schemathesis.core.failures import Failure, FailureGroup

from tests.support.server import RunningServer, gunicorn_server

API_KEY = "sk-schemathesis-1"
HEADERS = {"Authorization": f"Bearer {API_KEY}"}
CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance,
          response_headers_conformance, response_schema_conformance, negative_data_rejection]
# Examples per operation and mode; the generation endpoint is where the input is. An
# operation without input yields one case per mode, however many are asked for.
EXAMPLES = {"POST /v1/images/generations": 250, "GET /v1/models/{model_id}": 40}
DEFAULT_EXAMPLES = 20
MIN_CASES = 500


@pytest.fixture(scope="module")
def server() -> Iterator[RunningServer]:
    env = {
        "SLEEPWELL_API_KEYS": API_KEY,
        "SLEEPWELL_DEFAULT_STEPS": "1",
        "SLEEPWELL_MAX_STEPS": "2",
        "SLEEPWELL_MAX_PIXELS": "4096",
        "SLEEPWELL_MAX_IMAGES": "2",
        "SLEEPWELL_MAX_QUEUE": "64",
    }
    with gunicorn_server(env) as running:
        yield running


@dataclass
class Tally:
    cases: Counter[str] = field(default_factory=Counter)
    statuses: Counter[int] = field(default_factory=Counter)
    generated: Counter[int] = field(default_factory=Counter)  # images endpoint only
    failures: list[str] = field(default_factory=list)


def _exercise(operation: Any, mode: GenerationMode, examples: int, base_url: str,
              tally: Tally) -> None:
    label = f"{operation.method.upper()} {operation.path}"

    @settings(max_examples=examples, deadline=None, database=None, derandomize=True,
              phases=[Phase.explicit, Phase.generate],
              suppress_health_check=list(HealthCheck))
    @given(case=operation.as_strategy(generation_mode=mode))
    def run(case: Any) -> None:
        response = case.call(base_url=base_url, headers=HEADERS, timeout=60)
        tally.cases[f"{label} {mode.value}"] += 1
        tally.statuses[response.status_code] += 1
        if operation.path == "/v1/images/generations":
            tally.generated[response.status_code] += 1
        try:
            case.validate_response(response, checks=CHECKS, headers=HEADERS)
        except (Failure, FailureGroup) as exc:  # keep going, report them all
            tally.failures.append(f"{label} [{mode.value}] {response.status_code}: "
                                  f"{str(exc)[:1500]}")

    try:
        run()
    except Unsatisfiable:  # nothing to make invalid: an operation without any input
        tally.cases[f"{label} {mode.value} (no such cases)"] += 0


def test_schemathesis_generated_requests_get_no_5xx_and_match_the_schema(server) -> None:
    schema = schemathesis.openapi.from_url(f"{server.url}/openapi.json")
    tally = Tally()
    for result in schema.get_all_operations():
        operation = result.ok()
        label = f"{operation.method.upper()} {operation.path}"
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
            _exercise(operation, mode, EXAMPLES.get(label, DEFAULT_EXAMPLES), server.url, tally)
    total = sum(tally.cases.values())
    print(f"\nschemathesis: {total} cases; by status {dict(sorted(tally.statuses.items()))}; "
          f"generations by status {dict(sorted(tally.generated.items()))}")
    for name, count in sorted(tally.cases.items()):
        print(f"  {count:4d}  {name}")
    assert not tally.failures, "\n\n".join(tally.failures[:10])
    assert not [status for status in tally.statuses if status >= 500]
    assert total >= MIN_CASES
    assert tally.generated[200] >= 10, "valid generations must have reached the pipeline"
