"""Gunicorn settings for Sleepwell: one Uvicorn worker per GPU, each pinned to its own GPU.

Everything is derived from SLEEPWELL_* variables through app.settings.Settings.
"""

from __future__ import annotations

import logging
import os
import shutil
from pathlib import Path
from typing import Any

from app.observability.logging_setup import gunicorn_logconfig
from app.security.protected_mode import enforce_protected_mode
from app.serving.device_check import installed_torch_build, plan_gpus
from app.serving.gunicorn_support import (
    free_slot,
    prepare_metrics_dir,
    prepare_runtime_dir,
    prepare_state_dir,
    register_worker_heartbeat,
    visible_gpu_ids,
    wait_with_heartbeat,
    worker_environment,
)
from app.serving.respawn import EXIT_ALL_LOADS_FAILED, RespawnPolicy
from app.serving.worker_sizing import plan_workers
from app.settings import Settings

_settings = Settings()
# Only GPUs the installed torch can use get a worker: a CPU-only torch on a GPU box serves on
# the CPU and says so once (on_starting); with SLEEPWELL_DEVICE=cuda it refuses to start.
_gpu_plan = plan_gpus(_settings, visible_gpu_ids(_settings), installed_torch_build())
_gpu_ids = _gpu_plan.gpu_ids
_made_dirs: list[Path] = []
_state_dir: list[Path] = []  # set in on_starting
_embedded_postgres: list[Any] = []  # jobs (issue 10): the embedded PostgreSQL we started

wsgi_app = "app.main:create_app()"
worker_class = "uvicorn_worker.UvicornWorker"
bind = [_settings.bind]
# Protected mode: with no API keys, refuse a non-loopback bind right here, at config load,
# long before gunicorn opens a socket (on_starting checks again, after command-line flags).
enforce_protected_mode(_settings, bind)
# One per GPU; on a CPU box two when the cores and memory this process may use allow
# (app/serving/worker_sizing.py); on_starting logs what it was chosen from.
_worker_plan = plan_workers(_settings, _gpu_ids)
workers = _worker_plan.workers
# Workers whose model fails to load exit; their slot is respawned with a backoff, and the
# master exits (status 4) once every slot has failed SLEEPWELL_LOAD_ATTEMPTS times in a row.
_respawn = RespawnPolicy(
    workers=workers, attempts=_settings.load_attempts,
    first_backoff_s=_settings.load_backoff_s, max_backoff_s=60.0,
)
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
# Python warnings in the master (libraries it imports) go through that JSON log too, not
# as plain text on stderr; the workers do the same in app.observability.logging_setup.
logging.captureWarnings(True)
proc_name = "sleepwell"


def on_starting(server: Any) -> None:
    # The final binds (a --bind flag overrides ours); still before any socket is opened.
    enforce_protected_mode(_settings, list(server.cfg.bind), server.log)
    if _gpu_plan.warning:
        server.log.warning(_gpu_plan.warning)
    metrics_dir, state_dir = prepare_metrics_dir(_settings), prepare_state_dir(_settings)
    server.log.info("metrics directory %s; state directory %s; GPUs %s; workers %d",
                    metrics_dir, state_dir, _gpu_ids or "none", workers)
    server.log.info("workers %d: %s", workers, _worker_plan.why,
                    extra=_worker_plan.log_fields())
    # Directories we made ourselves (none configured) go away with the master.
    if _settings.prometheus_multiproc_dir is None:
        _made_dirs.append(metrics_dir)
    if _settings.state_dir is None:
        _made_dirs.append(state_dir)
    _state_dir.append(state_dir)
    # XDG_RUNTIME_DIR, before the embedded PostgreSQL's library reads it (on import): unset,
    # it warns at every start.
    prepare_runtime_dir(_settings)
    # --- jobs (issue 10): a database (embedded without SLEEPWELL_DATABASE_URL), migrated
    # once here, before any worker forks; workers inherit SLEEPWELL_DATABASE_URL.
    from app.jobs.bootstrap import prepare_database

    prepare_database(_settings, _embedded_postgres)
    if _embedded_postgres:  # the workers' startup line names where its data lives
        os.environ["SLEEPWELL_EMBEDDED_POSTGRES_RUNNING"] = "1"
    # --- end jobs


def on_exit(server: Any) -> None:
    for embedded in _embedded_postgres:  # jobs (issue 10): stopped with the master
        embedded.stop()
    for directory in _made_dirs:
        shutil.rmtree(directory, ignore_errors=True)


def pre_fork(server: Any, worker: Any) -> None:
    used = [getattr(other, "sleepwell_slot", None) for other in server.WORKERS.values()]
    worker.sleepwell_slot = free_slot(used, max(workers, len(_gpu_ids)))
    worker.sleepwell_backoff_s = _respawn.backoff_s(worker.sleepwell_slot)
    # Retrying a failed load while a sibling serves: listen only once loaded, so no request
    # or probe meets a worker that may fail again. Alone, it listens and says why it fails.
    worker.sleepwell_join_after_load = (worker.sleepwell_backoff_s > 0
                                        and _respawn.has_serving_sibling(worker.sleepwell_slot))


def post_fork(server: Any, worker: Any) -> None:
    os.environ.update(worker_environment(worker.sleepwell_slot, _gpu_ids, _settings, workers,
                                         _worker_plan.cores))
    if worker.sleepwell_join_after_load:
        os.environ["SLEEPWELL_JOIN_AFTER_LOAD"] = "1"
    register_worker_heartbeat(worker.notify)
    server.log.info("worker %s has slot %s (GPU %s)", worker.pid, worker.sleepwell_slot,
                    os.environ.get("CUDA_VISIBLE_DEVICES", "none"))
    if worker.sleepwell_backoff_s > 0:
        # Not accepting yet, so out of the rotation; heartbeats keep gunicorn from killing us.
        server.log.warning("worker %s waits %.1fs before loading: the last load in slot %s "
                           "failed", worker.pid, worker.sleepwell_backoff_s,
                           worker.sleepwell_slot)
        wait_with_heartbeat(worker.sleepwell_backoff_s, worker.notify)
    if worker.sleepwell_join_after_load:
        server.log.info("worker %s joins the rotation only once its model is loaded; slot %s's "
                        "last load failed and a sibling serves", worker.pid,
                        worker.sleepwell_slot)


def child_exit(server: Any, worker: Any) -> None:
    from gunicorn.errors import HaltServer
    from prometheus_client import multiprocess

    # Drops the dead worker's live gauges; its counters stay, so totals never go backwards.
    multiprocess.mark_process_dead(worker.pid)
    _respawn.worker_exited(_state_dir[0] if _state_dir else None,
                           getattr(worker, "sleepwell_slot", None), worker.pid)
    reason = _respawn.give_up_reason()
    if reason is not None:
        raise HaltServer(reason, EXIT_ALL_LOADS_FAILED)
