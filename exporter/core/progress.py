"""What a run tells its operator: a live display on a terminal, periodic lines or JSON events elsewhere.

Three audiences, one source of truth (`Snapshot`, read from the run's counters twice a second):
- a person at a terminal: a live block, one line per resource (records, pages, records/s, and an
  estimate when the API gave a total), plus the request budget (requests left in the API's
  window, time spent waiting on the limit);
- a scheduler's log (not a terminal): one summary line every `interval` seconds;
- a machine (`--log-format json`): one JSON object per line, for progress and for every event.
`--quiet` keeps only errors. Nothing here ever sees a token: snapshots hold counts and names.
"""

from __future__ import annotations

import asyncio
import logging
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TextIO

import orjson

LOGGER = logging.getLogger("exporter")


@dataclass
class ResourceProgress:
    records: int = 0
    pages: int = 0
    total: int | None = None  # from `count=true`, when the API gave one


@dataclass
class Snapshot:
    elapsed: float
    phase: str
    resources: dict[str, ResourceProgress] = field(default_factory=dict)
    requests: int = 0
    retries: int = 0
    rate_remaining: int | None = None
    waited: float = 0.0  # seconds spent waiting on the rate limit

    def records(self) -> int:
        return sum(r.records for r in self.resources.values())

    def to_json(self) -> dict[str, Any]:
        return {
            "elapsed": round(self.elapsed, 3),
            "phase": self.phase,
            "records": self.records(),
            "resources": {
                k: {"records": v.records, "pages": v.pages, "total": v.total}
                for k, v in self.resources.items()
            },
            "requests": self.requests,
            "retries": self.retries,
            "rate_remaining": self.rate_remaining,
            "rate_wait_seconds": round(self.waited, 3),
        }


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


def _rate(records: int, elapsed: float) -> str:
    return f"{records / elapsed:,.0f}/s" if elapsed > 0 else "-"


def _eta(item: ResourceProgress, elapsed: float) -> str:
    if not item.total or item.records <= 0 or item.records >= item.total:
        return ""
    seconds = (item.total - item.records) * elapsed / item.records
    return f"  eta {seconds:,.0f}s"


def render_lines(snapshot: Snapshot, collections: dict[str, str]) -> list[str]:
    """The live block: one line per resource, then the budget line."""
    lines = []
    for type_name, item in snapshot.resources.items():
        of = f"/{item.total:,}" if item.total else ""
        lines.append(
            f"{collections.get(type_name, type_name):<18} {item.records:>12,}{of} records "
            f"{item.pages:>7,} pages  {_rate(item.records, snapshot.elapsed)}{_eta(item, snapshot.elapsed)}"
        )
    remaining = (
        ""
        if snapshot.rate_remaining is None
        else f", {snapshot.rate_remaining:,} left in the API's window"
    )
    lines.append(
        f"{snapshot.phase}: {snapshot.requests:,} requests ({snapshot.retries:,} retried){remaining}, "
        f"{snapshot.waited:,.1f}s waiting on the rate limit, {snapshot.elapsed:,.1f}s"
    )
    return lines


def summary_line(snapshot: Snapshot) -> str:
    parts = ", ".join(f"{k} {v.records:,}" for k, v in snapshot.resources.items() if v.records)
    return (
        f"progress: {snapshot.records():,} records ({parts or 'none yet'}), "
        f"{_rate(snapshot.records(), snapshot.elapsed)}, {snapshot.requests:,} requests, "
        f"{snapshot.waited:,.1f}s waiting on the rate limit"
    )


class Reporter:
    """Shows progress while a run goes; `mode` is tty, lines, json or quiet."""

    def __init__(
        self,
        mode: str,
        snapshot: Callable[[], Snapshot],
        *,
        collections: dict[str, str] | None = None,
        stream: TextIO | None = None,
        interval: float = 10.0,
        refresh: float = 0.5,
    ) -> None:
        self.mode = mode
        self.snapshot = snapshot
        self.collections = collections or {}
        self.stream = stream or sys.stderr
        self.interval = interval
        self.refresh = refresh
        self._drawn = 0

    async def run(self) -> None:
        """Until cancelled."""
        if self.mode == "quiet":
            return
        period = self.refresh if self.mode == "tty" else self.interval
        try:
            while True:
                await asyncio.sleep(period)
                self.show(self.snapshot())
        finally:
            self.clear()

    def show(self, snapshot: Snapshot) -> None:
        if self.mode == "tty":
            lines = render_lines(snapshot, self.collections)
            up = f"\x1b[{self._drawn}F" if self._drawn else ""
            self.stream.write(up + "".join(f"\x1b[2K{line}\n" for line in lines))
            self.stream.flush()
            self._drawn = len(lines)
        elif self.mode == "lines":
            event("progress", summary_line(snapshot), **snapshot.to_json())
        elif self.mode == "json":
            event("progress", "progress", **snapshot.to_json())

    def clear(self) -> None:
        if self.mode == "tty" and self._drawn:
            self.stream.write(
                f"\x1b[{self._drawn}F" + "\x1b[2K\n" * self._drawn + f"\x1b[{self._drawn}F"
            )
            self.stream.flush()
            self._drawn = 0
