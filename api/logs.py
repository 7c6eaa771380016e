"""Log lines of every taskhub process: text (the default) or one JSON object per line.

``TASKHUB_LOG_FORMAT=json`` (or ``--json`` on a process command, which sets it
for the process and its children) makes every line a process writes to stderr
one JSON object with at least ``ts`` (UTC, ISO 8601, milliseconds), ``level``,
``logger`` and ``msg``, so a log shipper needs no parsing rules:

- taskhub's own loggers (``taskhub.*``) at INFO, via ``configure_logging``;
- every other library's loggers (RQ's worker, job and cron loggers included)
  through a JSON handler on the root logger at WARNING: RQ finds a handler and
  does not install its own coloured stdout ones;
- uvicorn's loggers, through ``uvicorn_log_config`` (passed by ``taskhub web``
  and ``taskhub sandbox``);
- the access log (``api/http.py``), which formats its own line for speed but
  with the same keys plus ``method``, ``path``, ``status``, ``ms``, ``caller``.

Fields passed with ``extra=`` become keys of the object (the job lines of
``workers/jobs.py`` use this). An exception becomes one ``exc`` string, so a
traceback never spans lines.
"""
from __future__ import annotations

import logging
import os
import sys
import time
from typing import Any

import orjson

from engine.connection import ConfigError
from engine.service import iso_ms as engine_iso_ms

FORMATS = ("text", "json")
TEXT_FORMAT = "%(asctime)s %(name)s %(message)s"
# A LogRecord's own attributes; anything else on a record came from ``extra=``.
_STANDARD = frozenset(logging.LogRecord("", 0, "", 0, "", None, None).__dict__) | {"message", "asctime",
                                                                                  "color_message"}


def log_format() -> str:
    """``TASKHUB_LOG_FORMAT``: ``text`` (default) or ``json``; anything else is a ConfigError."""
    value = os.environ.get("TASKHUB_LOG_FORMAT", "text").strip().lower() or "text"
    if value not in FORMATS:
        raise ConfigError(f"TASKHUB_LOG_FORMAT must be 'text' or 'json', not {value!r}")
    return value


def iso_ms(seconds: float) -> str:
    """``2026-01-31T12:00:00.123Z``: ``engine.service.iso_ms`` of these seconds."""
    return engine_iso_ms(int(seconds * 1000))


def json_line(level: str, logger: str, msg: str, **fields: Any) -> str:
    """One JSON log line (no newline), for the few writers that do not go through ``logging``."""
    doc = {"ts": iso_ms(time.time()), "level": level, "logger": logger, "msg": msg, **fields}
    return orjson.dumps(doc, default=str).decode()


class JsonFormatter(logging.Formatter):
    """A record as one JSON object: ts, level, logger, msg, then its ``extra=`` fields, then ``exc``."""

    def format(self, record: logging.LogRecord) -> str:
        doc: dict[str, Any] = {"ts": iso_ms(record.created), "level": record.levelname, "logger": record.name,
                               "msg": record.getMessage()}
        for key, value in record.__dict__.items():
            if key not in _STANDARD and key not in doc:
                doc[key] = value
        if record.exc_info:
            doc["exc"] = self.formatException(record.exc_info)
        elif record.exc_text:
            doc["exc"] = record.exc_text
        if record.stack_info:
            doc["stack"] = self.formatStack(record.stack_info)
        return orjson.dumps(doc, default=str).decode()


def _handler(fmt: str) -> logging.Handler:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else logging.Formatter(TEXT_FORMAT))
    return handler


def configure_logging(fmt: str | None = None) -> None:
    """taskhub's own loggers to stderr at INFO (uvicorn configures only its own); in JSON mode,
    every other logger too, at WARNING. Idempotent: a second call adds no handler."""
    fmt = fmt or log_format()
    logger = logging.getLogger("taskhub")
    if not logger.handlers:
        logger.addHandler(_handler(fmt))
        logger.setLevel(logging.INFO)
        logger.propagate = False
    root = logging.getLogger()
    if fmt == "json" and not any(isinstance(h.formatter, JsonFormatter) for h in root.handlers):
        root.addHandler(_handler(fmt))
        root.setLevel(logging.WARNING)  # RQ's loggers are set to WARNING by the runner; the rest inherit this


def uvicorn_log_config(fmt: str | None = None) -> dict | None:
    """The ``log_config`` for ``uvicorn.run``: None (uvicorn's default) in text mode."""
    if (fmt or log_format()) != "json":
        return None
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {"json": {"()": "api.logs.JsonFormatter"}},
        "handlers": {"stderr": {"class": "logging.StreamHandler", "formatter": "json",
                                "stream": "ext://sys.stderr"}},
        "loggers": {"uvicorn": {"handlers": ["stderr"], "level": "INFO", "propagate": False},
                    "uvicorn.error": {"level": "INFO"},
                    "uvicorn.access": {"handlers": ["stderr"], "level": "INFO", "propagate": False}},
    }
