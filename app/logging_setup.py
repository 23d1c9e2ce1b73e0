"""Structured logs: one JSON object per line on stderr, optionally also a rotating file."""

from __future__ import annotations

import logging
import logging.handlers
import os
from typing import Any

from pythonjsonlogger.json import JsonFormatter

from app.settings import Settings

_FORMAT = "%(asctime)s %(levelname)s %(name)s %(message)s"
_RENAMES = {"asctime": "time", "levelname": "level", "name": "logger"}
_CONFIGURED_LOGGERS = ("sleepwell", "gunicorn.error", "gunicorn.access", "uvicorn.error")


class SleepwellJsonFormatter(JsonFormatter):
    """Adds the worker pid to every line, so interleaved worker logs stay attributable."""

    def add_fields(
        self, log_data: dict[str, Any], record: logging.LogRecord, message_dict: dict[str, Any]
    ) -> None:
        super().add_fields(log_data, record, message_dict)
        log_data["pid"] = os.getpid()


def json_formatter() -> logging.Formatter:
    return SleepwellJsonFormatter(_FORMAT, rename_fields=_RENAMES, timestamp=False)


def handlers_for(settings: Settings) -> list[logging.Handler]:
    handlers: list[logging.Handler] = [logging.StreamHandler()]
    if settings.log_file is not None:
        settings.log_file.parent.mkdir(parents=True, exist_ok=True)
        handlers.append(logging.handlers.WatchedFileHandler(settings.log_file))
    for handler in handlers:
        handler.setFormatter(json_formatter())
    return handlers


def configure_logging(settings: Settings) -> None:
    """Route our loggers (and the servers') through JSON handlers. Idempotent."""
    handlers = handlers_for(settings)
    level = settings.log_level.upper()
    logger = logging.getLogger("sleepwell")
    logger.handlers = handlers
    logger.setLevel(level)
    logger.propagate = False
