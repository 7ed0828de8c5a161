"""Events and logging: the `exporter` logger, one `event(...)` call per thing that happened, as text or JSON lines."""

from __future__ import annotations

import logging
import sys
import time
from typing import Any, TextIO

import orjson

LOGGER = logging.getLogger("exporter")


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, event, message and the record's `fields`."""

    def format(self, record: logging.LogRecord) -> str:
        document: dict[str, Any] = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "event": getattr(record, "event", record.name),
            "message": record.getMessage(),
        }
        document.update(getattr(record, "fields", {}))
        return orjson.dumps(document, default=str).decode()


def configure_logging(
    log_format: str, verbose: bool, quiet: bool, stream: TextIO | None = None
) -> None:
    """Route the `exporter` loggers to stderr as text or JSON lines."""
    handler = logging.StreamHandler(stream or sys.stderr)
    if log_format == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(message)s"))
    LOGGER.handlers[:] = [handler]
    LOGGER.propagate = False
    LOGGER.setLevel(logging.DEBUG if verbose else logging.WARNING if quiet else logging.INFO)


def event(name: str, message: str, level: int = logging.INFO, **fields: Any) -> None:
    LOGGER.log(level, message, extra={"event": name, "fields": fields})
