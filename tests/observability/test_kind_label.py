"""The bounded ``kind`` label (generate / edit / variation) on request metrics and access lines.

Against a real gunicorn with the demo pipeline: every kind x status series exists from
startup, a generation moves only the ``generate`` series, and its access line names the
kind. A refusal before the queue is counted under the kind of the refused request.
"""

from __future__ import annotations

import base64
import dataclasses
import io
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
from PIL import Image
from prometheus_client import REGISTRY

from app.contract.images import ImageGenerationRequest, WorkKind
from app.errors import Cancelled, ServiceUnavailable
from app.observability import metrics
from app.serving.admission import build_generation
from app.serving.engine import Engine, InferenceThread
from app.serving.runner import Runner
from app.settings import Settings
from tests.support.access_log import wait_for_access_lines
from tests.support.scrape import matching, samples, value
from tests.support.server import RunningServer, gunicorn_server

KINDS = [kind.value for kind in WorkKind]
# One sample per request-level series a generation moves, with the labels that pick it.
MOVED_BY_A_SUCCESS = {
    "image_generation_total": {"status": "success"},
    "image_generation_answer_seconds_count": {"status": "success"},
    "image_generation_latency_seconds_count": {},
    "image_generation_queue_wait_seconds_count": {"outcome": "dispatched"},
    "image_generation_batch_size_count": {},
    "images_generated_total": {},
}


@pytest.fixture(scope="module")
def server() -> Iterator[RunningServer]:
    with gunicorn_server({}) as running:
        yield running


def _by_kind(text: str) -> dict[str, dict[str, float]]:
    return {name: {kind: value(text, name, kind=kind, **labels) for kind in KINDS}
            for name, labels in MOVED_BY_A_SUCCESS.items()}


def test_metrics_kind_every_kind_and_status_series_exists_at_startup(
    server: RunningServer,
) -> None:
    with server.client() as client:
        text = client.get("/metrics").text
    for kind in KINDS:
        for status in metrics.REQUEST_STATUSES:
            assert matching(text, "image_generation_total", kind=kind, status=status), (
                kind, status)
            assert matching(text, "image_generation_answer_seconds_count", kind=kind,
                            status=status), (kind, status)
        for name in ("image_generation_latency_seconds_count", "images_generated_total",
                     "image_generation_batch_size_count"):
            assert matching(text, name, kind=kind), (name, kind)
    # Bounded: the label takes the enum's values and no other.
    kinds_seen = {dict(labels)["kind"] for (_, labels) in samples(text) if dict(labels).get("kind")}
    assert kinds_seen == set(KINDS)


def _png_data_url() -> str:
    buffer = io.BytesIO()
    Image.new("RGB", (64, 64), (200, 90, 40)).save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()


# (kind, path, JSON body): one successful request of each kind the JSON API takes.
REQUESTS = [
    ("generate", "/v1/images/generations", {"prompt": "a fox", "size": "64x64"}),
    ("edit", "/v1/images/edits",
     {"prompt": "a fox", "images": [{"image_url": _png_data_url()}]}),
]


@pytest.mark.parametrize(("kind", "path", "body"), REQUESTS, ids=[r[0] for r in REQUESTS])
def test_metrics_kind_request_moves_only_its_kinds_series(
    server: RunningServer, kind: str, path: str, body: dict[str, Any]
) -> None:
    request_id = f"kind-label-{kind}"
    with server.client() as client:
        before = _by_kind(client.get("/metrics").text)
        answer = client.post(path, json=body, headers={"X-Request-ID": request_id})
        assert answer.status_code == 200, answer.text
        after = _by_kind(client.get("/metrics").text)
    for name in MOVED_BY_A_SUCCESS:
        for other in KINDS:
            assert after[name][other] == before[name][other] + (other == kind), (name, other)
    line = wait_for_access_lines(server, [request_id])[request_id]
    assert line["kind"] == kind and line["prompt_chars"] == len(body["prompt"])


def test_access_log_kind_absent_for_requests_that_are_no_work(server: RunningServer) -> None:
    with server.client() as client:
        assert client.get("/v1/models", headers={"X-Request-ID": "kind-label-models"}
                          ).status_code == 200
    line = wait_for_access_lines(server, ["kind-label-models"])["kind-label-models"]
    assert "kind" not in line


# --- a refusal before the queue, in process on the real demo pipeline ------------------
@pytest.fixture
async def runner(demo_model_dir: Path) -> AsyncIterator[Runner]:
    settings = Settings(demo_model_dir=demo_model_dir, device="cpu", warmup=False,
                        default_steps=2)
    metrics.initialise_request_series()  # as the service does at startup
    engine = Engine(settings)
    thread = InferenceThread()
    await thread.run(engine.load)
    started = Runner(engine, thread, max_queue=4, max_batch=2, batch_wait_s=0.0)
    started.start()
    yield started
    await started.stop(Cancelled("test over"))
    thread.stop(timeout=10)


def _rejected(kind: str) -> float:
    found = REGISTRY.get_sample_value("image_generation_total",
                                      {"status": "rejected", "kind": kind})
    assert found is not None, f"no rejected series for kind {kind}"
    return found


async def test_runner_refused_edit_counted_under_edit_kind(runner: Runner) -> None:
    model = runner.engine.model
    assert model is not None
    body = ImageGenerationRequest.model_validate({"prompt": "a fox", "size": "64x64"})
    generation = build_generation(body, runner.engine.settings, model, "kind-refused")
    generation.params = dataclasses.replace(generation.params, kind=WorkKind.EDIT)
    runner.accepting = False  # draining: refused before the queue
    before = {kind: _rejected(kind) for kind in KINDS}
    with pytest.raises(ServiceUnavailable):
        runner.submit(generation)
    assert _rejected("edit") == before["edit"] + 1
    assert _rejected("generate") == before["generate"]
