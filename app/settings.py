"""The one place that reads configuration: environment variables prefixed ``SLEEPWELL_``."""

from __future__ import annotations

import os
from enum import StrEnum
from pathlib import Path

from pydantic import AliasChoices, Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

PROJECT_ROOT = Path(__file__).resolve().parent.parent


def is_local_path(model: str) -> bool:
    """``/models/x``, ``./x``, ``~/x`` or an existing directory; else a hub id."""
    return model.startswith(("/", "./", "../", "~")) or Path(model).exists()


class DeviceChoice(StrEnum):
    AUTO = "auto"
    CPU = "cpu"
    CUDA = "cuda"


class DtypeChoice(StrEnum):
    AUTO = "auto"
    FLOAT32 = "float32"
    FLOAT16 = "float16"
    BFLOAT16 = "bfloat16"


def _env_file() -> str | None:
    """``.env``, or the file ``SLEEPWELL_ENV_FILE`` names; set empty, none. The test suite
    sets it empty so that a developer's ``.env`` (the monitoring quick start writes one)
    cannot change what the tests see."""
    return os.environ.get("SLEEPWELL_ENV_FILE", ".env") or None


class Settings(BaseSettings):
    """Every knob of the service. Field ``x`` is read from ``SLEEPWELL_X``."""

    # `make run` and a bare gunicorn read ./.env (relative to the working directory, the
    # checkout for `make run`); a variable set in the environment still wins over the file.
    model_config = SettingsConfigDict(
        env_prefix="SLEEPWELL_", extra="ignore", env_file=_env_file(),
        env_file_encoding="utf-8",
    )

    # --- serving -----------------------------------------------------------------------
    host: str = "127.0.0.1"
    port: int = Field(8000, ge=1, le=65535)
    workers: int | None = Field(
        None, ge=1, description="default: visible GPUs; on CPU 2, fewer if cores or memory "
        "this process may use allow fewer (app/serving/worker_sizing.py)"
    )
    gpu_ids: str | None = Field(
        None, description="comma-separated GPU ids, one per worker; default: all visible"
    )
    graceful_timeout_s: float = Field(30.0, gt=0)
    worker_timeout_s: float = Field(120.0, gt=0, description="gunicorn heartbeat timeout")
    max_requests: int = Field(0, ge=0, description="recycle a worker after N requests; 0 = off")
    max_requests_jitter: int = Field(0, ge=0)
    # prometheus_client reads this exact name itself, so it has no SLEEPWELL_ prefix.
    prometheus_multiproc_dir: Path | None = Field(
        None,
        validation_alias=AliasChoices("PROMETHEUS_MULTIPROC_DIR", "SLEEPWELL_METRICS_DIR"),
        description="multiprocess metrics directory; gunicorn.conf.py makes one if unset",
    )
    log_level: str = "info"
    state_dir: Path | None = Field(
        None, description="directory shared by workers (desired model); gunicorn makes one"
    )
    log_file: Path | None = Field(None, description="also append JSON logs to this file")
    # Where the kernel's cgroup files are read (CPU quota, memory limit: worker count and
    # torch threads, app/serving/host_limits.py); tests point it at fake files.
    cgroup_root: Path = Path("/sys/fs/cgroup")
    # An NVIDIA driver is visible when this file exists (issue 20: a CPU-only torch on a GPU
    # box warns, app/serving/device_check.py); tests point it at a file of their own.
    nvidia_driver_file: Path = Path("/proc/driver/nvidia/version")
    # Set per worker by gunicorn.conf.py: which GPU slot this worker owns.
    worker_slot: int | None = None
    # Set by gunicorn.conf.py for a worker retrying its slot's failed load while a sibling
    # serves: it listens only once its model is loaded (app/serving/service.py).
    join_after_load: bool = False
    cuda_visible_devices: str | None = Field(
        None, validation_alias=AliasChoices("CUDA_VISIBLE_DEVICES")
    )
    # Read by the embedded PostgreSQL's library (platformdirs); gunicorn makes one if unset.
    xdg_runtime_dir: Path | None = Field(None, validation_alias=AliasChoices("XDG_RUNTIME_DIR"))

    # --- model -------------------------------------------------------------------------
    model: str | None = Field(None, description="local path or hub id; unset = demo model")
    model_name: str | None = Field(None, description="id shown in the API; default: derived")
    demo_model_dir: Path = PROJECT_ROOT / ".cache" / "demo-model"
    device: DeviceChoice = DeviceChoice.AUTO
    dtype: DtypeChoice = DtypeChoice.AUTO
    warmup: bool = True
    torch_threads: int | None = Field(
        None, ge=1, description="CPU threads for torch; gunicorn: cores / workers"
    )
    # Set by gunicorn.conf.py when torch_threads is unset and there are several workers:
    # each takes cores / busy workers threads per step (app/serving/cpu_share.py).
    adaptive_threads: bool = False

    # --- request limits ----------------------------------------------------------------
    max_queue: int = Field(16, ge=1, description="requests waiting per worker; beyond: 429")
    max_images: int = Field(4, ge=1, description="largest n")
    max_pixels: int = Field(1024 * 1024, ge=64, description="largest width*height")
    max_steps: int = Field(100, ge=1)
    max_request_pixels: int = Field(
        4 * 1024 * 1024, ge=64, description="largest width*height*n of one request"
    )
    vram_budget_gb: float | None = Field(
        None, gt=0, description="GPU memory a request may use; default: free memory after load"
    )
    vram_bytes_per_pixel: int = Field(
        6144, ge=1, description="estimated GPU bytes per output pixel (fp16 SD-class, CFG)"
    )
    default_steps: int = Field(25, ge=1)
    default_guidance_scale: float = 7.5
    max_prompt_chars: int = Field(2000, ge=1)
    max_body_bytes: int = Field(1024 * 1024, ge=1024)
    # --- image inputs (edits, variations: app/uploads/, docs/edits.md) ---------------------
    max_upload_bytes: int = Field(
        20 * 1024 * 1024, ge=1024, description="largest input image or mask file; beyond: 413"
    )
    max_upload_pixels: int = Field(
        4096 * 4096, ge=64, description="largest input width*height, checked before decoding"
    )
    fetch_image_urls: bool = Field(
        False, description="fetch http(s) image_url inputs (through the webhook SSRF guard)"
    )
    # 0.7 redraws texture, detail and colour while a real SD-class model keeps the input's
    # layout (A1111 defaults to 0.75, diffusers to 0.8: both read as "a new picture" more
    # often). The demo model cannot show it: its random VAE turns any input into noise
    # at every strength (docs/edits.md). A variation should stay closer: same subject.
    edit_strength: float = Field(0.7, ge=0, le=1, description="edits' default strength")
    variation_strength: float = Field(
        0.6, ge=0, le=1, description="how far a variation strays from its input"
    )
    request_timeout_s: float = Field(120.0, gt=0)
    load_wait_s: float = Field(
        30.0, ge=0, description="a request arriving while the model loads waits this long"
    )
    load_attempts: int = Field(
        3, ge=1, description="failed loads in a row per worker slot; when every slot has "
        "failed this often, the master exits (status 4)"
    )
    load_backoff_s: float = Field(
        2.0, ge=0, description="wait before reloading a slot whose load failed; doubles"
    )

    # --- batching ----------------------------------------------------------------------
    # Measured with bench/throughput.py on CPU (64x64, 4 steps, 2 threads, 3 runs): the
    # pipeline makes 8.26 images/s at batch 4 vs 5.13 at 1; on a GPU it also fills idle SMs.
    max_batch_size: int = Field(4, ge=1, description="requests merged into one pipeline call")
    encode_threads: int = Field(
        2, ge=1, description="threads per worker turning pixels into PNG/JPEG/WebP"
    )
    preview_decoder: str | None = Field(
        None, description='partial images: "linear" (a latent-to-RGB projection), or a '
        "directory (or hub id) of a diffusers AutoencoderTiny such as TAESD/TAESDXL; default: "
        "the model folder's own preview_decoder/ if it has one (the demo model has), else linear",
    )
    batch_wait_ms: float = Field(
        5.0, ge=0, description="longest wait for batch-mates, only while another request is "
        "being answered; a lone client never pays it",
    )

    # --- health ------------------------------------------------------------------------
    stall_timeout_s: float = Field(60.0, gt=0)
    failure_streak_limit: int = Field(5, ge=1, description="consecutive failures -> unready")
    gpu_probe_interval_s: float = Field(15.0, gt=0)
    health_check_timeout_s: float = Field(0.5, gt=0)
    exit_on_stall: bool = True
    stall_exit_delay_s: float = Field(
        1.0, ge=0, description="keep reporting a stall this long before exiting"
    )
    recycle_on_failure_streak: bool = Field(
        True, description="after the failure streak, drain and exit so gunicorn respawns us"
    )

    # --- testing -----------------------------------------------------------------------
    fault_injection: bool = Field(
        False, description="honour [[fault]] markers in prompts; for tests, never production"
    )
    fault_load_failure_slots: str | None = Field(
        None, description="with fault_injection: comma-separated worker slots whose model "
        "load fails"
    )

    # --- secrets (hardening) ----------------------------------------------------------
    api_keys: SecretStr | None = None
    # --- security (hardening) ---------------------------------------------------------
    api_keys_file: Path | None = Field(
        None, description="file with one API key per line; '#' starts a comment"
    )
    admin_key: SecretStr | None = Field(None, description="unset = admin endpoints are off")
    metrics_token: SecretStr | None = Field(None, description="Bearer token for /metrics")
    allow_unauthenticated: bool = Field(
        False, description="serve a non-loopback address with no API keys (protected mode off)"
    )
    rate_limit: str | None = Field(
        None, description='per API key (per IP when auth is off), e.g. "60/minute;1000/hour"'
    )
    rate_limit_per_ip: str | None = Field(None, description="per client IP, keys or not")
    rate_limit_storage: str = Field(
        "memory://", description="memory:// (per worker) or redis://host:port/db (shared)"
    )
    rate_limit_key_prefix: str = Field("sleepwell", description="namespace in the storage")
    cors_origins: str | None = Field(None, description="comma-separated; unset = CORS off")
    log_prompts: bool = Field(False, description="put prompt text in logs (off: length+hash)")
    body_timeout_s: float = Field(
        30.0, gt=0, description="the whole request body must arrive within this; else 408"
    )
    log_file_max_bytes: int = Field(50 * 1024 * 1024, ge=1024, description="rotate beyond")
    log_file_backups: int = Field(5, ge=1, description="rotated files kept")

    @field_validator("rate_limit", "rate_limit_per_ip")
    @classmethod
    def _parse_rate_limit(cls, value: str | None) -> str | None:
        from limits import parse_many

        if value is None or not value.strip():
            return None
        parse_many(value)  # raises ValueError naming the bad part: fail at startup
        return value.strip()

    # --- trusted proxies (issue 9) ------------------------------------------------------
    # gunicorn.conf.py passes this to gunicorn's forwarded_allow_ips: uvicorn takes the
    # client from X-Forwarded-For only when the peer is in here, so the per-IP rate limit
    # keys on the real client behind a proxy, and nobody else can pick their own "IP".
    forwarded_allow_ips: str = Field(
        "127.0.0.1,::1",
        description="proxy IPs/CIDRs (comma-separated) whose X-Forwarded-For is believed",
    )

    @field_validator("forwarded_allow_ips")
    @classmethod
    def _parse_forwarded_allow_ips(cls, value: str) -> str:
        import ipaddress

        entries = [entry.strip() for entry in value.split(",") if entry.strip()]
        for entry in entries:
            if entry != "*":
                try:
                    ipaddress.ip_network(entry)
                except ValueError as exc:
                    raise ValueError(f"not an IP address or CIDR network: {entry!r}") from exc
        return ",".join(entries)

    # --- end trusted proxies ----------------------------------------------------------

    # --- end security -----------------------------------------------------------------

    # --- playground (ui) ---------------------------------------------------------------
    ui: bool = Field(True, description="serve the playground page at /ui (app/ui/)")
    # --- end playground ----------------------------------------------------------------

    # --- feishu relay (monitoring) -----------------------------------------------------
    # `python -m app.relay`: Alertmanager webhooks in, Feishu interactive cards out.
    relay_host: str = Field("127.0.0.1", description="address the Feishu relay listens on")
    relay_port: int = Field(9095, ge=1, le=65535)
    feishu_webhook_url: SecretStr | None = Field(None, description="custom-bot webhook URL")
    feishu_webhook_url_file: Path | None = Field(None, description="file holding the URL")
    feishu_secret: SecretStr | None = Field(None, description="custom-bot signing secret")
    feishu_secret_file: Path | None = Field(None, description="file holding the secret")
    feishu_timeout_s: float = Field(5.0, gt=0, description="per HTTP attempt")
    feishu_max_attempts: int = Field(4, ge=1, le=10)
    feishu_backoff_s: float = Field(0.5, ge=0, description="first retry delay; doubles")
    feishu_backoff_max_s: float = Field(8.0, ge=0)
    feishu_max_bytes: int = Field(
        19 * 1024, ge=4096, le=20 * 1024, description="request body cap; Feishu's is 20 KB"
    )
    relay_grafana_url: str | None = Field(None, description="dashboard linked from cards")
    relay_alertmanager_url: str | None = Field(
        None, description="Alertmanager linked from cards; default: the webhook's externalURL"
    )
    # --- end feishu relay --------------------------------------------------------------

    # --- jobs (issue 10): durable async jobs on PostgreSQL -------------------------------
    jobs_enabled: bool = Field(True, description="serve /v1/jobs and consume jobs")
    database_url: SecretStr | None = Field(
        None, description="postgresql://...; unset = an embedded PostgreSQL under .cache/"
    )
    embedded_postgres_dir: Path = PROJECT_ROOT / ".cache" / "postgres"
    # Set by gunicorn.conf.py for its workers when it runs the embedded PostgreSQL.
    embedded_postgres_running: bool = False
    database_timeout_s: float = Field(
        2.0, gt=0, description="per connection wait and per statement; then 503"
    )
    database_pool_size: int = Field(8, ge=2, description="connections per worker, at most")
    job_ttl_s: float = Field(
        86400.0, gt=0, description="finished jobs (and results) are kept this long; then 404"
    )
    job_stuck_after_s: int = Field(
        20, ge=2, description="a running job with no heartbeat for this long is redelivered"
    )
    job_heartbeat_interval_s: float = Field(
        2.0, gt=0, description="each running job's heartbeat, this often (< stuck-after / 3)"
    )
    job_timeout_s: float = Field(
        3600.0, gt=0, description="one job run's deadline (sync requests: request_timeout_s)"
    )
    job_event_streams_max: int = Field(
        100, ge=1, description="open GET /v1/jobs/{id}/events streams per worker; then 429"
    )
    job_sweep_interval_s: float = Field(1.0, gt=0, description="how often to look for stuck jobs")
    job_poll_interval_s: float = Field(0.25, gt=0, description="idle worker polls for jobs")
    job_max_attempts: int = Field(5, ge=1, description="deliveries of one job before it fails")
    job_progress_interval_s: float = Field(
        0.5, gt=0, description="progress is written to the database at most this often"
    )
    jobs_probe_interval_s: float = Field(
        2.0, gt=0, description="database check and backlog metrics, this often"
    )
    webhook_secret: SecretStr | None = Field(
        None, description="Standard Webhooks secret (whsec_...); unset = webhooks refused"
    )
    webhook_allowed_hosts: str | None = Field(
        None, description="comma-separated names, addresses, CIDR networks allowed although "
        "loopback/private (app/net/ssrf.py)"
    )
    webhook_timeout_s: float = Field(10.0, gt=0, description="per delivery attempt")
    webhook_max_attempts: int = Field(8, ge=1, le=30)
    webhook_retry_delay_s: float = Field(
        2.0, ge=0, description="first retry's delay; doubles (with jitter) each time"
    )
    webhook_retry_max_s: float = Field(600.0, gt=0, description="longest delay between tries")
    # --- end jobs ----------------------------------------------------------------------

    @field_validator("log_level")
    @classmethod
    def _lower_log_level(cls, value: str) -> str:
        return value.lower()

    @property
    def served_model_name(self) -> str:
        if self.model_name:
            return self.model_name
        if self.model is None:
            return "sleepwell-demo-tiny-sd"
        # A local path is served by its directory name (whether it exists yet or not); a hub
        # id ("org/name") keeps its full name.
        return self.model.rstrip("/").split("/")[-1] if is_local_path(self.model) else self.model

    @property
    def bind(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"
