"""Hot model swap across two real workers: under load, to a model that really differs, and
with a swap that cannot be applied yet (mismatch reported, retried until it converges)."""

from __future__ import annotations

import asyncio
import shutil
import threading
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from app.serving.demo_model import ensure_demo_model
from app.serving.desired_model import DesiredModelStore
from tests.support.server import RunningServer, gunicorn_server
from tests.support.waiting import wait_until

ADMIN = {"Authorization": "Bearer admin-secret"}
PROBE = {"prompt": "the same request", "size": "64x64", "seed": 11}


def fresh(url: str, path: str) -> httpx.Response:
    # A new connection per call, so either worker may answer.
    return httpx.get(url + path, headers={"connection": "close"}, timeout=10)


def served_models(url: str, polls: int = 12) -> set[str]:
    return {fresh(url, "/v1/models").json()["data"][0]["id"] for _ in range(polls)}


def image_bytes(url: str) -> set[str]:
    """The probe image from several fresh connections (so from both workers)."""
    answers = [httpx.post(url + "/v1/images/generations", json=PROBE, timeout=60,
                          headers={"connection": "close"}) for _ in range(6)]
    assert all(answer.status_code == 200 for answer in answers), [a.text for a in answers]
    return {answer.json()["data"][0]["b64_json"] for answer in answers}


@pytest.fixture(scope="module")
def other_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The demo architecture built from another seed: same shape, other weights."""
    return ensure_demo_model(tmp_path_factory.mktemp("models") / "demo-model-b", seed=1)


# One pair for the two admin-swap tests: the failed swap changes nothing it serves, so it
# runs first; the swap under load moves the pair to another model for good, so it runs
# last on it (pytest runs a module's tests in file order).
SWAP_PAIR_ENV = {"SLEEPWELL_ADMIN_KEY": "admin-secret", "SLEEPWELL_MAX_QUEUE": "64"}


@pytest.fixture(scope="module")
def swap_pair(demo_model_dir: Path) -> Iterator[RunningServer]:
    with gunicorn_server(SWAP_PAIR_ENV, workers=2) as server:
        yield server


def test_admin_swap_bad_model_keeps_old_and_reports_everywhere(
    swap_pair: RunningServer,
) -> None:
    server = swap_pair
    # The shared pair is still on the demo model: the swap test below runs later.
    answer = httpx.post(server.url + "/admin/models/load", headers=ADMIN,
                        json={"model": "/nonexistent/model"}, timeout=60)
    assert answer.status_code == 400
    assert answer.json()["error"]["code"] == "model_load_failed"
    assert answer.json()["error"]["param"] == "model"
    assert served_models(server.url) == {"sleepwell-demo-tiny-sd"}
    reports: dict[int, str] = {}

    def reported_by_both() -> bool:
        body = fresh(server.url, "/health").json()
        if body["last_swap_error"]:
            reports[body["worker"]["pid"]] = body["last_swap_error"]
        return len(reports) == 2

    wait_until(reported_by_both, 10, period=0.1, what="both workers reporting the error")
    assert all("/nonexistent/model" in error for error in reports.values())
    ok = httpx.post(server.url + "/v1/images/generations",
                    json={"prompt": "still here", "size": "64x64"}, timeout=60)
    assert ok.status_code == 200


def test_admin_swap_under_load_changes_every_worker_and_the_images(
    swap_pair: RunningServer, other_model: Path
) -> None:
    statuses: Counter[int] = Counter()
    readiness: Counter[int] = Counter()
    stop = threading.Event()

    def load(url: str) -> None:
        body = {"prompt": "steady", "size": "64x64"}
        for _ in range(2000):  # bounded; stopped by the event long before
            if stop.is_set():
                return
            statuses[httpx.post(url + "/v1/images/generations", json=body, timeout=60)
                     .status_code] += 1
            readiness[fresh(url, "/health/ready").status_code] += 1

    server = swap_pair
    # The last test on the shared pair: it leaves the pair on another model.
    before, images_before = served_models(server.url), image_bytes(server.url)
    threads = [threading.Thread(target=load, args=(server.url,)) for _ in range(3)]
    for thread in threads:
        thread.start()
    wait_until(lambda: statuses.total() >= 3, 60, what="load running")
    started = time.monotonic()
    answer = httpx.post(server.url + "/admin/models/load", headers=ADMIN,
                        json={"model": str(other_model)}, timeout=120)
    # Right after the 200, before every worker has switched: never a 404 for the new name.
    naming_new = [_outcome(httpx.post(
        server.url + "/v1/images/generations", timeout=60, headers={"connection": "close"},
        json={"prompt": "new", "size": "64x64", "model": "demo-model-b"})) for _ in range(6)]
    wait_until(lambda: served_models(server.url) == {"demo-model-b"}, 30, period=0.2,
               what="every worker on the new model")
    print(f"swap visible on every worker after {time.monotonic() - started:.2f}s")
    after_swap = statuses.total()
    wait_until(lambda: statuses.total() >= after_swap + 6, 60, what="load after the swap")
    stop.set()
    for thread in threads:
        thread.join(60)
    after, images_after = served_models(server.url), image_bytes(server.url)
    assert answer.status_code == 200, answer.text
    assert answer.json()["model"] == "demo-model-b"
    assert answer.json()["previous"] == "sleepwell-demo-tiny-sd"
    assert before == {"sleepwell-demo-tiny-sd"} and after == {"demo-model-b"}
    assert len(images_before) == 1 and len(images_after) == 1  # one answer per model
    assert images_before != images_after  # the new weights really serve
    assert set(statuses) == {200}, statuses
    assert set(readiness) == {200}, readiness  # never a moment where a worker was unready
    assert set(naming_new) <= {"200", "503 model_switching"}, naming_new


def _outcome(response: httpx.Response) -> str:
    if response.status_code == 200:
        return "200"
    return f"{response.status_code} {response.json()['error']['code']}"


def test_swap_that_cannot_apply_yet_is_unready_mismatch_then_converges(
    demo_model_dir: Path, other_model: Path, tmp_path: Path
) -> None:
    state_dir, pending = tmp_path / "state", tmp_path / "arriving-model"
    env = {"SLEEPWELL_STATE_DIR": str(state_dir)}
    with gunicorn_server(env, workers=2) as server:
        # As if another worker had published a model whose files have not arrived here.
        asyncio.run(DesiredModelStore(state_dir).publish(str(pending), None))
        mismatched: set[int] = set()

        def both_unready_with_mismatch() -> bool:
            health = fresh(server.url, "/health")
            body = health.json()
            if health.status_code == 503 and any(
                    "model mismatch" in reason for reason in body["reasons"]):
                mismatched.add(body["worker"]["pid"])
            return len(mismatched) == 2

        wait_until(both_unready_with_mismatch, 30, period=0.1, what="mismatch on both workers")
        naming_it = httpx.post(server.url + "/v1/images/generations", timeout=60,
                               json={"prompt": "x", "size": "64x64", "model": pending.name})
        not_naming = httpx.post(server.url + "/v1/images/generations", timeout=60,
                                json={"prompt": "x", "size": "64x64"})
        shutil.copytree(other_model, pending)  # the files arrive: the retries now succeed
        wait_until(lambda: served_models(server.url) == {pending.name}, 90, period=0.3,
                   what="every worker converged")
        ready_after = [fresh(server.url, "/health/ready").status_code for _ in range(8)]
    assert naming_it.status_code == 503, naming_it.text
    assert naming_it.json()["error"]["code"] == "model_switching"
    assert int(naming_it.headers["retry-after"]) >= 1
    assert not_naming.status_code == 200  # the old model keeps serving meanwhile
    assert ready_after == [200] * 8

# Without an admin key the route is off (404): checked in-process, no gunicorn needed, in
# tests/security/test_security_units.py (test_admin_model_load_of_the_real_app_...).
