"""Gunicorn settings for Sleepwell: one Uvicorn worker per GPU, each pinned to its own GPU.

Everything is derived from SLEEPWELL_* variables through app.settings.Settings.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

from app.observability.logging_setup import gunicorn_logconfig
from app.security.protected_mode import enforce_protected_mode
from app.serving.gunicorn_support import (
    free_slot,
    prepare_metrics_dir,
    prepare_state_dir,
    visible_gpu_ids,
    worker_count,
    worker_environment,
)
from app.settings import Settings

_settings = Settings()
_gpu_ids = visible_gpu_ids(_settings)
_made_dirs: list[Path] = []

wsgi_app = "app.main:create_app()"
worker_class = "uvicorn_worker.UvicornWorker"
bind = [_settings.bind]
# Protected mode: with no API keys, refuse a non-loopback bind right here, at config load,
# long before gunicorn opens a socket (on_starting checks again, after command-line flags).
enforce_protected_mode(_settings, bind)
workers = worker_count(_settings, _gpu_ids)
# CUDA must not be initialised before fork: each worker loads its own model copy.
preload_app = False
# The model loads in the background after startup, so the heartbeat timeout only has to
# cover a blocked event loop, never a slow load.
timeout = int(_settings.worker_timeout_s)
graceful_timeout = int(_settings.graceful_timeout_s)
keepalive = 5
max_requests = _settings.max_requests
max_requests_jitter = _settings.max_requests_jitter
control_socket_disable = True
# Trusted proxies (issue 9): uvicorn rewrites the client address from X-Forwarded-For only
# for peers listed here; everyone else is keyed on the address that connected.
forwarded_allow_ips = _settings.forwarded_allow_ips
loglevel = _settings.log_level
# Off: app/observability/access_log.py writes one JSON line per request, with the request id.
accesslog = None
errorlog = "-"
# gunicorn's own lines (master and workers) in the app's JSON format.
logconfig_dict = gunicorn_logconfig(_settings)
proc_name = "sleepwell"


def on_starting(server: Any) -> None:
    # The final binds (a --bind flag overrides ours); still before any socket is opened.
    enforce_protected_mode(_settings, list(server.cfg.bind), server.log)
    metrics_dir, state_dir = prepare_metrics_dir(_settings), prepare_state_dir(_settings)
    server.log.info("metrics directory %s; state directory %s; GPUs %s; workers %d",
                    metrics_dir, state_dir, _gpu_ids or "none", workers)
    # Directories we made ourselves (none configured) go away with the master.
    if _settings.prometheus_multiproc_dir is None:
        _made_dirs.append(metrics_dir)
    if _settings.state_dir is None:
        _made_dirs.append(state_dir)


def on_exit(server: Any) -> None:
    for directory in _made_dirs:
        shutil.rmtree(directory, ignore_errors=True)


def pre_fork(server: Any, worker: Any) -> None:
    used = [getattr(other, "sleepwell_slot", None) for other in server.WORKERS.values()]
    worker.sleepwell_slot = free_slot(used, max(workers, len(_gpu_ids)))


def post_fork(server: Any, worker: Any) -> None:
    os.environ.update(worker_environment(worker.sleepwell_slot, _gpu_ids, _settings, workers))
    server.log.info("worker %s has slot %s (GPU %s)", worker.pid, worker.sleepwell_slot,
                    os.environ.get("CUDA_VISIBLE_DEVICES", "none"))


def child_exit(server: Any, worker: Any) -> None:
    from prometheus_client import multiprocess

    # Drops the dead worker's live gauges; its counters stay, so totals never go backwards.
    multiprocess.mark_process_dead(worker.pid)
