"""Structured logs: one JSON object per line on stdout, optionally also a rotating file.

The same formatter serves our loggers, uvicorn's, and gunicorn's own (through
``gunicorn_logconfig``, which gunicorn.conf.py hands to gunicorn as ``logconfig_dict``).

Why ``SharedRotatingFileHandler`` and not ``RotatingFileHandler``: gunicorn's master and
every worker append to the same file. ``RotatingFileHandler`` in several processes breaks:
each process renames the file on its own count, so files get rotated twice and lines land
in renamed files nobody expected. Per-process files avoid that but scatter one service's
log over files named after pids that change with every respawn. Instead every process
appends to one file (O_APPEND: a line is never split by another process's write); the
first process to see it past the size limit rotates it under an exclusive ``flock`` on
``<file>.lock``, re-checking under the lock that nobody rotated it first; every process
notices the new inode on its next line (the ``WatchedFileHandler`` check) and reopens. So
it works with no external tool, and an external logrotate (move, no copytruncate) is
still safe.
"""

from __future__ import annotations

import fcntl
import importlib
import logging
import logging.handlers
import os
import sys
from pathlib import Path
from typing import Any

from pythonjsonlogger.json import JsonFormatter

from app.settings import Settings

_FORMAT = "%(asctime)s %(levelname)s %(name)s %(message)s"
_RENAMES = {"asctime": "time", "levelname": "level", "name": "logger"}
# Libraries that print through handlers of their own; they keep their own levels.
_LIBRARY_LOGGERS = ("transformers", "diffusers", "py.warnings")
# transformers 5 warns once per image-processor class diffusers imports (IP-adapter loaders,
# a safety checker's feature extractor) that without torchvision it takes the PIL
# implementation, transformers 4's. That is the setup we want: torchvision is no dependency
# of ours, and an image processor only prepares a checker's input. So that one message is
# dropped where it is made, and every other transformers warning still shows.
_TORCHVISION_FALLBACK_LOGGER = "transformers.utils.import_utils"
_TORCHVISION_FALLBACK = "requires torchvision (not installed); falling back to"
# gunicorn's arbiter, reaping a worker that a signal ended.
_WORKER_SIGNALLED = "Worker (pid:%s) was sent %s!"


class TorchvisionFallbackFilter(logging.Filter):
    """Drops transformers' "requires torchvision ... falling back to ...Pil" warnings."""

    def filter(self, record: logging.LogRecord) -> bool:
        return _TORCHVISION_FALLBACK not in record.getMessage()


class SleepwellJsonFormatter(JsonFormatter):
    """Adds the pid to every line, so interleaved worker logs stay attributable."""

    def add_fields(
        self, log_data: dict[str, Any], record: logging.LogRecord, message_dict: dict[str, Any]
    ) -> None:
        super().add_fields(log_data, record, message_dict)
        log_data.pop("color_message", None)  # uvicorn's ANSI-coloured copy of the message
        log_data["pid"] = os.getpid()


class WorkerStopSignalFilter(logging.Filter):
    """gunicorn logs a worker that died of SIGTERM at INFO (a stop, as it says) and of any
    other signal at WARNING. SIGINT and SIGQUIT are stops too: Ctrl-C on `make run` sends
    SIGINT to every process of the terminal, and the master's quick shutdown sends SIGQUIT.
    So those two are logged at INFO as well; a SIGKILL or a crash still warns."""

    def filter(self, record: logging.LogRecord) -> bool:
        args = record.args if isinstance(record.args, tuple) else ()
        if (record.levelno == logging.WARNING and record.msg == _WORKER_SIGNALLED
                and len(args) == 2 and args[1] in ("SIGINT", "SIGQUIT")):
            record.levelno, record.levelname = logging.INFO, "INFO"
        return True


def json_formatter() -> logging.Formatter:
    return SleepwellJsonFormatter(_FORMAT, rename_fields=_RENAMES, timestamp=False)


class SharedRotatingFileHandler(logging.handlers.WatchedFileHandler):
    """A size-rotated log file that several processes write at once (see the module doc)."""

    def __init__(self, filename: str | Path, max_bytes: int, backups: int) -> None:
        Path(filename).parent.mkdir(parents=True, exist_ok=True)
        super().__init__(filename, encoding="utf-8")
        self.max_bytes = max_bytes
        self.backups = backups

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self.reopenIfNeeded()  # another process may have rotated the file
            if self.stream is not None and os.fstat(self.stream.fileno()).st_size >= (
                self.max_bytes
            ):
                self._rotate()
        except OSError:
            self.handleError(record)
        logging.FileHandler.emit(self, record)  # skip the parent's second stat

    def _rotate(self) -> None:
        with open(f"{self.baseFilename}.lock", "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                current = os.stat(self.baseFilename)
                ours = (current.st_dev, current.st_ino) == (self.dev, self.ino)
                if ours and current.st_size >= self.max_bytes:
                    self._shift_backups()
            except FileNotFoundError:
                pass  # rotated by someone else a moment ago
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)
        self.reopenIfNeeded()

    def _shift_backups(self) -> None:
        base = self.baseFilename
        for index in range(self.backups - 1, 0, -1):
            if os.path.exists(f"{base}.{index}"):
                os.replace(f"{base}.{index}", f"{base}.{index + 1}")
        os.replace(base, f"{base}.1")


def file_handler(settings: Settings) -> SharedRotatingFileHandler | None:
    if settings.log_file is None:
        return None
    return SharedRotatingFileHandler(
        settings.log_file, settings.log_file_max_bytes, settings.log_file_backups
    )


def handlers_for(settings: Settings) -> list[logging.Handler]:
    handlers: list[logging.Handler] = [logging.StreamHandler(sys.stdout)]
    extra = file_handler(settings)
    if extra is not None:
        handlers.append(extra)
    for handler in handlers:
        handler.setFormatter(json_formatter())
        handler._sleepwell = True  # type: ignore[attr-defined]
    return handlers


def configure_logging(settings: Settings) -> None:
    """Route our loggers, uvicorn's and the ML libraries' through JSON handlers. Idempotent.

    Uvicorn's access log is silenced: app.observability.access_log writes the one line per request.
    transformers and diffusers install plain-text handlers of their own; they get ours, so
    no line of the service's output is anything but JSON. Python warnings go the same way.
    """
    handlers = handlers_for(settings)
    logging.captureWarnings(True)
    _drop_torchvision_fallback_warnings()
    _disable_library_default_handlers()
    for name in ("sleepwell", "uvicorn.error", *_LIBRARY_LOGGERS):
        logger = logging.getLogger(name)
        for old in logger.handlers:
            if getattr(old, "_sleepwell", False):  # ours from an earlier call; not gunicorn's
                old.close()
        logger.handlers = list(handlers)
        logger.propagate = False
        if name not in _LIBRARY_LOGGERS:
            logger.setLevel(settings.log_level.upper())
    access = logging.getLogger("uvicorn.access")
    access.handlers = []
    access.setLevel(logging.WARNING)
    access.propagate = False


def _drop_torchvision_fallback_warnings() -> None:
    logger = logging.getLogger(_TORCHVISION_FALLBACK_LOGGER)
    if not any(isinstance(known, TorchvisionFallbackFilter) for known in logger.filters):
        logger.addFilter(TorchvisionFallbackFilter())


def _disable_library_default_handlers() -> None:
    """transformers and diffusers add a plain stderr handler on first use (and draw tqdm
    bars); make them do it now and drop it, so ours (set next) stay the only ones. This
    imports both libraries here, about 3 s on a CPU, which the model load then saves:
    readiness is not delayed.
    """
    for name in ("transformers.utils.logging", "diffusers.utils.logging"):
        try:
            module = importlib.import_module(name)
            module.disable_default_handler()
            module.disable_progress_bar()  # tqdm bars are for terminals, not JSON logs
        except ImportError:  # pragma: no cover - both are dependencies
            continue


def gunicorn_logconfig(settings: Settings) -> dict[str, Any]:
    """gunicorn's ``logconfig_dict``: its error log in our JSON format, its access log off."""
    handlers: dict[str, dict[str, Any]] = {
        "console": {"class": "logging.StreamHandler", "formatter": "json",
                    "stream": "ext://sys.stdout"},
    }
    if settings.log_file is not None:
        handlers["file"] = {
            "()": "app.observability.logging_setup.SharedRotatingFileHandler",
            "formatter": "json",
            "filename": str(settings.log_file),
            "max_bytes": settings.log_file_max_bytes,
            "backups": settings.log_file_backups,
        }
    names = list(handlers)
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {"json": {"()": "app.observability.logging_setup.json_formatter"}},
        "filters": {"stops": {"()": "app.observability.logging_setup.WorkerStopSignalFilter"}},
        "handlers": handlers,
        "root": {"level": "WARNING", "handlers": names},
        "loggers": {
            "gunicorn.error": {"level": settings.log_level.upper(), "handlers": names,
                               "filters": ["stops"], "propagate": False},
            # One access line per request, with the request id: app.observability.access_log.
            "gunicorn.access": {"level": "WARNING", "handlers": [], "propagate": False},
            # The master's own lines (embedded PostgreSQL, migrations, worker plan); the root
            # logger's WARNING would drop their INFO. Workers configure their own logging.
            "sleepwell": {"level": settings.log_level.upper(), "handlers": names,
                          "propagate": False},
        },
    }
