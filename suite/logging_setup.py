"""One logging configuration for web, workers and harness: every line says role and pid.

Readable text by default; one JSON object per line with ``LOG_FORMAT=json``.
Every message passes through password masking on its way out.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import logging.config
import os
from typing import Any

from forkpool import identity
from forkpool.settings import redact_text

LOG_FORMAT_ENV = "LOG_FORMAT"
LOG_LEVEL_ENV = "LOG_LEVEL"
TEXT_FORMAT = "%(asctime)s %(levelname)s [%(role)s:%(process)d] %(name)s: %(message)s"


class IdentityFilter(logging.Filter):
    """Stamps each record with this process's role and suite id, read at emit time (after fork too)."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.role = identity.process_role()
        record.suite = identity.name()
        return True


class TextFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        return redact_text(super().format(record))


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        body: dict[str, Any] = {
            "ts": dt.datetime.fromtimestamp(record.created, dt.UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "suite": getattr(record, "suite", identity.name()),
            "role": getattr(record, "role", identity.process_role()),
            "pid": record.process,
            "message": redact_text(record.getMessage()),
        }
        if record.exc_info:
            body["exception"] = redact_text(self.formatException(record.exc_info))
        return json.dumps(body, default=str)


def logging_config(extra_loggers: tuple[str, ...] = ()) -> dict[str, Any]:
    """A ``logging.config.dictConfig`` dict (Gunicorn takes it as ``logconfig_dict``)."""
    fmt = (os.environ.get(LOG_FORMAT_ENV) or "text").strip().lower()
    level = (os.environ.get(LOG_LEVEL_ENV) or "INFO").strip().upper()
    formatter = {"()": JsonFormatter} if fmt == "json" else {"()": TextFormatter, "format": TEXT_FORMAT}
    handler = {
        "class": "logging.StreamHandler",
        "formatter": "forkpool",
        "filters": ["identity"],
        "stream": "ext://sys.stderr",
    }
    loggers = {name: {"level": level, "handlers": ["console"], "propagate": False} for name in extra_loggers}
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "filters": {"identity": {"()": IdentityFilter}},
        "formatters": {"forkpool": formatter},
        "handlers": {"console": handler},
        "root": {"level": level, "handlers": ["console"]},
        "loggers": loggers,
    }


def configure_logging(extra_loggers: tuple[str, ...] = ()) -> None:
    logging.config.dictConfig(logging_config(extra_loggers))
