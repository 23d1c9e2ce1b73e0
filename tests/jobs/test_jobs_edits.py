"""Edit jobs end to end: POST /v1/jobs with the JSON edit form, on real gunicorn, a real
PostgreSQL and the real tiny pipeline.

A job with ``images`` is an edit. Its image (and mask) are checked at submit (400/413 naming
the parameter, nothing queued), kept as PNG in ``sleepwell_job_inputs`` within
SLEEPWELL_MAX_UPLOAD_BYTES, run through the same admission and runner as
POST /v1/images/edits (same seed, same bytes), and deleted when the job expires.
"""

from __future__ import annotations

import base64
import io
import json
import random
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from PIL import Image

from tests.jobs.helpers import (
    WEBHOOK_SECRET,
    Receiver,
    Served,
    auth,
    jobs_env,
    wait_final,
    webhook_receiver,
)
from tests.jobs.postgres import TestPostgres, query
from tests.support.access_log import wait_for_access_lines
from tests.support.scrape import value
from tests.support.server import gunicorn_server
from tests.support.waiting import wait_until

KEY = "key-edits"
UPLOAD_LIMIT = 8192  # SLEEPWELL_MAX_UPLOAD_BYTES here: a 64x64 noise PNG (~12 KB) is over it
TTL_S = 3  # SLEEPWELL_JOB_TTL_S: finished jobs expire within the test
MAINTENANCE_WAIT_S = 60  # maintenance runs every 10 s on each worker


@pytest.fixture(scope="module")
def served(postgres: TestPostgres) -> Iterator[Served]:
    url = postgres.new_database()
    env = jobs_env(url, KEY, SLEEPWELL_MAX_UPLOAD_BYTES=str(UPLOAD_LIMIT),
                   SLEEPWELL_JOB_TTL_S=str(TTL_S), SLEEPWELL_JOB_PROGRESS_INTERVAL_S="0.1",
                   SLEEPWELL_WEBHOOK_SECRET=WEBHOOK_SECRET,
                   SLEEPWELL_WEBHOOK_ALLOWED_HOSTS="127.0.0.1")
    with gunicorn_server(env) as server:
        with server.client() as client:  # the jobs component connects in the background
            wait_until(lambda: client.get("/health").json()["checks"].get("jobs"), 60,
                       what="jobs ready")
        yield Served(postgres, url, server)


@pytest.fixture
def client(served: Served) -> Iterator[httpx.Client]:
    with served.server.client() as http:
        yield http


def encoded(image: Image.Image, fmt: str = "PNG", **options: Any) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **options)
    return buffer.getvalue()


def data_url(data: bytes, mime: str = "image/png") -> str:
    return f"data:{mime};base64,{base64.b64encode(data).decode()}"


def gradient() -> Image.Image:
    image = Image.new("RGB", (64, 64))
    image.putdata([(x * 4, y * 4, 160) for y in range(64) for x in range(64)])
    return image


def noise() -> Image.Image:
    rng = random.Random(21)
    return Image.frombytes("RGB", (64, 64), bytes(rng.randrange(256) for _ in range(64 * 64 * 3)))


def edit_body(image: bytes = b"", mime: str = "image/png", **extra: Any) -> dict[str, Any]:
    body = {"prompt": "a lighthouse at dusk", "size": "64x64", "num_inference_steps": 2,
            "seed": 11, "images": [{"image_url": data_url(image or encoded(gradient()), mime)}]}
    return {**body, **extra}


def post_job(client: httpx.Client, body: dict[str, Any], request_id: str = "") -> httpx.Response:
    headers = {**auth(KEY), **({"X-Request-ID": request_id} if request_id else {})}
    return client.post("/v1/jobs", json=body, headers=headers)


def stored_inputs(served: Served, job_id: str) -> list[tuple[Any, ...]]:
    return query(served.url, "SELECT image, mask FROM sleepwell_job_inputs WHERE job_id = %s",
                 (job_id,))


def jobs_count(served: Served) -> int:
    return int(query(served.url, "SELECT count(*) FROM sleepwell_jobs")[0][0])


def test_jobs_edit_succeeds_like_the_sync_edit_and_unlike_a_generation(
    served: Served, client: httpx.Client
) -> None:
    succeeded_before = value(client.get("/metrics").text, "jobs_total", status="succeeded",
                             kind="edit")
    answer = post_job(client, edit_body(), request_id="edit-job-submit")
    assert answer.status_code == 202, answer.text
    job = answer.json()
    assert job["kind"] == "edit" and job["status"] == "queued"
    # Kept durably as PNG until the job expires.
    ((image, mask),) = stored_inputs(served, job["id"])
    assert bytes(image).startswith(b"\x89PNG") and mask is None
    done = wait_final(client, KEY, job["id"])
    assert done["status"] == "succeeded", done
    assert done["kind"] == "edit" and done["progress"]["step"] == done["progress"]["steps"]

    sync = client.post("/v1/images/edits", headers=auth(KEY), json=edit_body())
    assert sync.status_code == 200, sync.text
    assert done["result"] == sync.json()["data"]  # same image, seed and parameters: same bytes
    generation = client.post("/v1/jobs", headers=auth(KEY), json={
        name: field for name, field in edit_body().items() if name != "images"})
    generated = wait_final(client, KEY, generation.json()["id"])
    assert generated["kind"] == "generate" and generated["status"] == "succeeded"
    assert generated["result"][0]["b64_json"] != done["result"][0]["b64_json"]

    line = wait_for_access_lines(served.server, ["edit-job-submit"])["edit-job-submit"]
    assert line["kind"] == "edit" and line["status"] == 202
    assert line["prompt_chars"] == len(edit_body()["prompt"])  # a JSON job body's prompt
    wait_until(lambda: value(client.get("/metrics").text, "jobs_total", status="succeeded",
                             kind="edit") == succeeded_before + 1, 10, what="jobs_total edit")


def test_jobs_edit_with_mask_inpaints_and_keeps_the_mask(
    served: Served, client: httpx.Client
) -> None:
    mask = Image.new("RGBA", (64, 64), (0, 0, 0, 255))
    mask.paste((0, 0, 0, 0), (16, 16, 48, 48))  # transparent square: the area to change
    answer = post_job(client, edit_body(mask={"image_url": data_url(encoded(mask))}))
    assert answer.status_code == 202, answer.text
    ((_, stored_mask),) = stored_inputs(served, answer.json()["id"])
    kept = Image.open(io.BytesIO(bytes(stored_mask)))
    assert kept.mode == "L" and kept.getpixel((32, 32)) == 255 and kept.getpixel((2, 2)) == 0
    done = wait_final(client, KEY, answer.json()["id"])
    assert done["status"] == "succeeded", done


@pytest.mark.parametrize(("body", "status", "param"), [
    (edit_body(b"this is not an image at all"), 400, "images"),
    (edit_body(encoded(gradient())[:60]), 400, "images"),  # truncated PNG
    (edit_body(encoded(gradient(), "GIF"), "image/gif"), 400, "images"),
    (edit_body(images=[{"image_url": "https://example.com/a.png"}]), 400, "images"),
    (edit_body(images=[]), 400, "images"),
    (edit_body(mask={"image_url": data_url(encoded(Image.new("L", (32, 32))))}), 400, "mask"),
    ({"prompt": "a fox", "size": "64x64",
      "mask": {"image_url": data_url(encoded(Image.new("L", (64, 64))))}}, 400, "mask"),
    (edit_body(encoded(noise())), 413, "images"),  # the file is over the upload limit
    # Under the limit as a JPEG, over it as the PNG the job would keep.
    (edit_body(encoded(noise(), "JPEG", quality=20), "image/jpeg"), 413, "images"),
], ids=["not-an-image", "truncated", "gif", "http-url-off", "no-image", "mask-size",
        "mask-without-images", "file-over-limit", "stored-png-over-limit"])
def test_jobs_edit_bad_input_refused_at_submit_nothing_queued(
    served: Served, client: httpx.Client, body: dict[str, Any], status: int, param: str
) -> None:
    before = jobs_count(served)
    answer = post_job(client, body)
    assert answer.status_code == status, answer.text
    error = answer.json()["error"]
    assert error["param"] == param, error
    assert jobs_count(served) == before


def test_jobs_edit_idempotency_key_with_other_image_is_a_conflict(client: httpx.Client) -> None:
    headers = {**auth(KEY), "Idempotency-Key": "edit-key-1"}
    first = client.post("/v1/jobs", json=edit_body(), headers=headers)
    assert first.status_code == 202, first.text
    again = client.post("/v1/jobs", json=edit_body(), headers=headers)
    assert again.status_code == 202 and again.json()["id"] == first.json()["id"]
    other = edit_body(encoded(gradient().rotate(90)))
    conflict = client.post("/v1/jobs", json=other, headers=headers)
    assert conflict.status_code == 409, conflict.text
    wait_final(client, KEY, first.json()["id"])


def test_jobs_edit_stored_input_deleted_when_the_job_expires(
    served: Served, client: httpx.Client
) -> None:
    answer = post_job(client, edit_body())
    assert answer.status_code == 202, answer.text
    job_id = answer.json()["id"]
    assert len(stored_inputs(served, job_id)) == 1
    wait_final(client, KEY, job_id)
    wait_until(lambda: client.get(f"/v1/jobs/{job_id}", headers=auth(KEY)).status_code == 404,
               TTL_S + 10, what="the job expires")
    wait_until(lambda: stored_inputs(served, job_id) == [], MAINTENANCE_WAIT_S, period=0.5,
               what="maintenance deletes the expired job's inputs")
    # The row itself stays as a tombstone ("expired", not "unknown"): only the inputs went.
    assert query(served.url, "SELECT status FROM sleepwell_jobs WHERE id = %s", (job_id,))


def job_events(served: Served, job_id: str) -> list[tuple[str, dict[str, Any]]]:
    """Every event of the job's stream, until it ends (after the final ``job`` event)."""
    events: list[tuple[str, dict[str, Any]]] = []
    name = ""
    with served.server.client(timeout=30) as client, client.stream(
        "GET", f"/v1/jobs/{job_id}/events", headers=auth(KEY)
    ) as response:
        assert response.status_code == 200, response.read()
        for line in response.iter_lines():  # bounded: the stream ends at the final status
            if line.startswith("event:"):
                name = line.split(":", 1)[1].strip()
            elif line.startswith("data:"):
                events.append((name, json.loads(line.split(":", 1)[1])))
    return events


def partial_hooks(receiver: Receiver) -> list[dict[str, Any]]:
    return [body["data"]["partial_image"] for _, body in receiver.delivered()
            if "partial_image" in body["data"]]


# An edit of 6 steps at strength 0.7 runs 4 (img2img skips the first): previews after 1 and
# 3. A generation of 4 steps: after 1 and 3 too.
PARTIAL_JOBS = [
    ("image_edit.partial_image", edit_body(num_inference_steps=6)),
    ("image_generation.partial_image",
     {k: v for k, v in edit_body(num_inference_steps=4).items() if k != "images"}),
]


@pytest.mark.parametrize(("event_type", "body"), PARTIAL_JOBS, ids=["edit", "generate"])
def test_jobs_partial_images_reach_events_and_progress_webhooks(
    served: Served, client: httpx.Client, event_type: str, body: dict[str, Any]
) -> None:
    with webhook_receiver() as receiver:
        answer = post_job(client, {**body, "prompt": "[[slow=0.2]] a lighthouse",
                                   "partial_images": 2, "webhook": receiver.url,
                                   "webhook_events": ["progress"]})
        assert answer.status_code == 202, answer.text
        events = job_events(served, answer.json()["id"])
        wait_until(lambda: len(partial_hooks(receiver)) == 2, 30, what="2 partial webhooks")
        hooked = partial_hooks(receiver)
    names = [name for name, _ in events]
    partials = [data for name, data in events if name == "partial_image"]
    assert [p["partial_image_index"] for p in partials] == [0, 1], names
    assert names[-1] == "job" and events[-1][1]["status"] == "succeeded"
    assert max(i for i, n in enumerate(names) if n == "partial_image") < len(names) - 1
    for partial in partials:
        assert partial["type"] == event_type and partial["size"] == "64x64"
        assert partial["index"] == 0 and partial["seed"] == 11
        preview = Image.open(io.BytesIO(base64.b64decode(partial["b64_json"])))
        assert preview.format == "PNG" and preview.size == (64, 64)
    assert sorted(hook["partial_image_index"] for hook in hooked) == [0, 1]
    assert all(hook["images"][0]["b64_json"] for hook in hooked)


def test_jobs_without_partial_images_send_none(served: Served, client: httpx.Client) -> None:
    answer = post_job(client, edit_body(num_inference_steps=6))
    assert answer.status_code == 202, answer.text
    events = job_events(served, answer.json()["id"])
    assert events[-1][1]["status"] == "succeeded"
    assert not [name for name, _ in events if name == "partial_image"]
