"""JSON log lines (one object per line) for the webhook process.

Only fields listed in `FIELDS` leave the process: a log call cannot leak a pod body or a
secret by passing it as `extra`, and the request log carries identifiers, not content.
"""

from __future__ import annotations

import logging
import logging.config
import time
from typing import Any

import orjson

FIELDS = (
    "uid", "kind", "namespace", "operation", "outcome", "status", "latency_ms", "method",
    "path", "remote", "reason", "serial", "not_after", "bind", "workers", "threads",
)


class JsonFormatter(logging.Formatter):
    """`{"ts", "level", "logger", "msg", ...allowed extras}` on one line."""

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
            "pid": record.process,
        }
        for name in FIELDS:
            value = record.__dict__.get(name)
            if value is not None:
                out[name] = value
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        return orjson.dumps(out, default=str).decode()


def logconfig_dict(level: str = "info") -> dict[str, Any]:
    """gunicorn's `logconfig_dict`: its own and our loggers, all JSON on stderr."""
    lvl = level.upper()
    handler = {"class": "logging.StreamHandler", "formatter": "json", "stream": "ext://sys.stderr"}
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {"json": {"()": f"{__name__}.JsonFormatter"}},
        "handlers": {"stderr": handler},
        "root": {"level": lvl, "handlers": ["stderr"]},
        "loggers": {
            "gunicorn.error": {"level": lvl, "handlers": ["stderr"], "propagate": False},
            "gunicorn.access": {"level": "WARNING", "handlers": [], "propagate": False},
        },
    }


def configure(level: str = "info") -> None:
    """Outside gunicorn (tests, tools): the same JSON lines."""
    logging.config.dictConfig(logconfig_dict(level))
    skip_unused_record_fields()


def skip_unused_record_fields() -> None:
    """Our lines carry no caller, thread or process name: stop `logging` from looking them up
    for every record (the logging HOWTO's "Optimization" settings). Set before gunicorn forks,
    so every worker inherits it; it is worth ~3 % of the webhook's throughput."""
    logging._srcfile = None  # type: ignore[attr-defined]  # documented in the HOWTO
    logging.logThreads = False
    logging.logMultiprocessing = False
