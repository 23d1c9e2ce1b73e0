"""Every Prometheus metric, defined once, correct under gunicorn's multiprocess mode.

In multiprocess mode (``PROMETHEUS_MULTIPROC_DIR`` set before import, by gunicorn.conf.py)
each worker writes its own mmap files and a scrape sums them, so a scrape that lands on any
worker sees the whole service. Gauges say how to combine workers via ``multiprocess_mode``;
``Info``, ``Enum`` and ``set_function`` are avoided because that mode cannot aggregate them.
"""

from __future__ import annotations

from pathlib import Path

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)
from prometheus_client import multiprocess as _multiprocess

from app.contract.images import WorkKind

LATENCY_BUCKETS_S = (0.05, 0.1, 0.25, 0.5, 1, 2, 3, 5, 7.5, 10, 15, 20, 30, 45, 60, 90, 120)
QUEUE_WAIT_BUCKETS_S = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)
# Refusals are answered in milliseconds, generations in seconds: one histogram covers both.
ANSWER_BUCKETS_S = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2, 3, 5, 7.5, 10, 15, 20,
                    30, 45, 60, 90, 120)
BATCH_BUCKETS = (1, 2, 3, 4, 6, 8, 12, 16, 32)

REQUEST_STATUSES = ("success", "failed", "rejected", "timeout", "cancelled")
# ``kind``: which work a request is (app.contract.images.WorkKind), a label bounded by that
# enum: 3 kinds x 5 statuses, so dashboards can split edits from generations.
WORK_KINDS = tuple(kind.value for kind in WorkKind)
QUEUE_WAIT_OUTCOMES = ("dispatched", "abandoned")

GENERATIONS = Counter(
    "image_generation",
    "Image requests (generations, edits, variations) by final status and kind.",
    ["status", "kind"],
)
LATENCY = Histogram(
    "image_generation_latency_seconds",
    "Seconds from arrival to answer for successful image requests, by kind.",
    ["kind"],
    buckets=LATENCY_BUCKETS_S,
)
ANSWER_SECONDS = Histogram(
    "image_generation_answer_seconds",
    "Seconds from arrival to the final answer of every image-generation request, by its "
    "status and kind: what clients felt, refusals and timeouts included.",
    ["status", "kind"],
    buckets=ANSWER_BUCKETS_S,
)
QUEUE_WAIT = Histogram(
    "image_generation_queue_wait_seconds",
    "Seconds a request waited in the queue: until its pipeline call began (dispatched) or "
    "until it left the queue unrun (abandoned: deadline passed or client gone), by kind.",
    ["outcome", "kind"],
    buckets=QUEUE_WAIT_BUCKETS_S,
)
BATCH_SIZE = Histogram(
    "image_generation_batch_size",
    "Requests merged into one pipeline call, by kind (a call runs one kind only).",
    ["kind"],
    buckets=BATCH_BUCKETS,
)
QUEUE_DEPTH = Gauge(
    "image_generation_queue_depth",
    "Requests waiting in the queue, summed over live workers.",
    multiprocess_mode="livesum",
)
INFLIGHT = Gauge(
    "image_generation_inflight",
    "Requests inside a running pipeline call, summed over live workers.",
    multiprocess_mode="livesum",
)
IMAGES = Counter("images_generated", "Images returned to clients, by kind.", ["kind"])
MODEL_LOAD_FAILURES = Counter(
    "model_load_failures",
    "Model loads at worker start that failed: the configured model (the worker exits) or a "
    "published one (the worker falls back to the configured model).",
)
STEPS = Counter("inference_steps", "Denoising steps completed, including cancelled runs.")
CUDA_OOM = Counter("cuda_oom", "CUDA out-of-memory errors caught at the pipeline boundary.")
CONNECTIONS_SHED = Counter(
    "http_connections_shed",
    "Responses sent with Connection: close because other requests ran or queued on this worker, so "
    "the client reconnects and a less busy sibling worker may take the connection.",
)
MODEL_READY = Gauge(
    "model_ready",
    "1 when this worker's model is loaded, warmed up and serving; one series per worker.",
    multiprocess_mode="liveall",
)
MODEL_LOAD_SECONDS = Gauge(
    "model_load_seconds",
    "Seconds the last successful model load and warm-up took, per worker.",
    multiprocess_mode="liveall",
)
BUILD_INFO = Gauge(
    "sleepwell_build_info",
    "Always 1; labels carry the version and served model.",
    ["version", "model"],
    multiprocess_mode="livemax",
)
GPU_MEMORY_ALLOCATED = Gauge(
    "gpu_memory_allocated_bytes",
    "Bytes held by tensors on the GPU (torch allocator). GPU deployments only.",
    ["gpu"],
    multiprocess_mode="livemax",
)
GPU_MEMORY_RESERVED = Gauge(
    "gpu_memory_reserved_bytes",
    "Bytes reserved by the torch caching allocator. GPU deployments only.",
    ["gpu"],
    multiprocess_mode="livemax",
)
GPU_MEMORY_TOTAL = Gauge(
    "gpu_memory_total_bytes",
    "Total memory of the GPU. GPU deployments only.",
    ["gpu"],
    multiprocess_mode="livemax",
)
GPU_UTILIZATION = Gauge(
    "gpu_utilization_ratio",
    "GPU busy fraction over the last sample period, from NVML (0-1).",
    ["gpu"],
    multiprocess_mode="livemax",
)
GPU_TEMPERATURE = Gauge(
    "gpu_temperature_celsius",
    "GPU core temperature from NVML.",
    ["gpu"],
    multiprocess_mode="livemax",
)


# --- jobs (issue 10) ----------------------------------------------------------------------
JOB_STATUSES = ("succeeded", "failed", "cancelled")
WEBHOOK_OUTCOMES = ("delivered", "retried", "failed", "refused")
JOBS = Counter(
    "jobs",
    "Jobs by final status and kind (generate, edit), counted once per job by the worker "
    "whose write made it final.",
    ["status", "kind"],
)
# The next three come from the shared database, so every worker of every replica reports
# the same value: "livemax" keeps one per scrape; aggregate replicas with max(), not sum().
JOBS_QUEUED = Gauge(
    "jobs_queued",
    "Jobs waiting for a worker, from the database (all replicas).",
    multiprocess_mode="livemax",
)
JOBS_OLDEST_QUEUED_AGE = Gauge(
    "jobs_oldest_queued_age_seconds",
    "Age of the oldest queued job, from the database; 0 when none waits.",
    multiprocess_mode="livemax",
)
JOBS_DATABASE_UP = Gauge(
    "jobs_database_up",
    "1 when this worker's last job-database check succeeded; one series per worker.",
    multiprocess_mode="liveall",
)
JOB_REDELIVERIES = Counter(
    "job_redeliveries",
    "Job deliveries after the first: a worker died or drained while running the job.",
)
JOB_DUPLICATE_RUNS = Counter(
    "job_duplicate_runs",
    "Job runs that reached the end after another run had already made the job final "
    "(at-least-once delivery: their result was discarded). Counted by the losing worker.",
)
JOBS_CONSUMER_RESTARTS = Counter(
    "jobs_consumer_restarts",
    "Times this worker's job consumer loop failed and was restarted after a backoff.",
)
WEBHOOK_DELIVERIES = Counter(
    "webhook_deliveries",
    "Webhook delivery attempts by outcome: delivered, retried, failed (gave up), refused.",
    ["outcome"],
)
JOB_EVENT_STREAMS = Gauge(
    "job_event_streams",
    "Open GET /v1/jobs/{id}/events streams, summed over live workers.",
    multiprocess_mode="livesum",
)
JOB_EVENT_STREAMS_REFUSED = Counter(
    "job_event_streams_refused",
    "Job event streams refused with 429: the worker already served"
    " SLEEPWELL_JOB_EVENT_STREAMS_MAX of them.",
)


def initialise_job_series() -> None:
    for status in JOB_STATUSES:
        for kind in WORK_KINDS:
            JOBS.labels(status=status, kind=kind)
    for outcome in WEBHOOK_OUTCOMES:
        WEBHOOK_DELIVERIES.labels(outcome=outcome)
    JOB_REDELIVERIES.inc(0)
    JOB_DUPLICATE_RUNS.inc(0)
    JOBS_CONSUMER_RESTARTS.inc(0)
    JOBS_DATABASE_UP.set(0)


def render_latest(multiprocess_dir: Path | None) -> tuple[bytes, str]:
    """The exposition for a scrape: every worker's samples in multiprocess mode."""
    if multiprocess_dir is None:
        return generate_latest(REGISTRY), CONTENT_TYPE_LATEST
    registry = CollectorRegistry()
    _multiprocess.MultiProcessCollector(registry, path=str(multiprocess_dir))
    return generate_latest(registry), CONTENT_TYPE_LATEST


def initialise_request_series() -> None:
    """Publish zeroes for every kind x status so rate() and alert rules see the series at
    once, and a dashboard's by-kind panel shows edits at 0 before the first edit."""
    for kind in WORK_KINDS:
        for status in REQUEST_STATUSES:
            GENERATIONS.labels(status=status, kind=kind)
            ANSWER_SECONDS.labels(status=status, kind=kind)
        for outcome in QUEUE_WAIT_OUTCOMES:
            QUEUE_WAIT.labels(outcome=outcome, kind=kind)
        LATENCY.labels(kind=kind)
        BATCH_SIZE.labels(kind=kind)
        IMAGES.labels(kind=kind)
