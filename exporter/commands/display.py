"""What a command shows its operator: a run's live progress (a terminal block, periodic lines or JSON events), a report as lines or JSON.

Three audiences, one source of truth (`Snapshot`, read from the run's counters twice a second):
- a person at a terminal: a live block, one line per resource (records, pages, records/s, and an
  estimate when the API gave a total), plus the requests: how many, the in-flight bound (it
  moves when adaptive), the request budget (requests left in the API's window, time spent
  waiting on the limit). rich's `Live` draws it (cursor movement, wrapping
  at the terminal's width, resizes): the run's log lines are printed above the block while it
  is live, and the block is left on screen with the final counts when the run ends;
- a scheduler's log (not a terminal): one summary line every `interval` seconds;
- a machine (`--log-format json`): one JSON object per line, for progress and for every event.
`--quiet` keeps only errors. Nothing here ever sees a token: snapshots hold counts and names.
"""

from __future__ import annotations

import asyncio
import logging
import sys
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TextIO

import click
import orjson

from exporter.core.events import LOGGER, event
from exporter.core.progress import ResourceProgress, Snapshot

if TYPE_CHECKING:  # rich is imported when a live block is drawn, not by every command
    from rich.console import Console
    from rich.live import Live
    from rich.text import Text


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
    bound = _bound(snapshot)
    lines.append(
        f"{snapshot.phase}: {snapshot.requests:,} requests ({snapshot.retries:,} retried){bound}"
        f"{remaining}, {snapshot.waited:,.1f}s waiting on the rate limit, {snapshot.elapsed:,.1f}s"
    )
    return lines


def _bound(snapshot: Snapshot) -> str:
    bound = snapshot.in_flight_bound
    return "" if bound is None else f", at most {bound} in flight"


def summary_line(snapshot: Snapshot) -> str:
    parts = ", ".join(f"{k} {v.records:,}" for k, v in snapshot.resources.items() if v.records)
    return (
        f"progress: {snapshot.records():,} records ({parts or 'none yet'}), "
        f"{_rate(snapshot.records(), snapshot.elapsed)}, {snapshot.requests:,} requests"
        f"{_bound(snapshot)}, {snapshot.waited:,.1f}s waiting on the rate limit"
    )


class ProgressDisplay:
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
        self._live: Live | None = None
        self._log_streams: list[tuple[logging.StreamHandler[Any], Any]] = []

    async def run(self) -> None:
        """Until cancelled."""
        if self.mode == "quiet":
            return
        period = self.refresh if self.mode == "tty" else self.interval
        if self.mode == "tty":
            self._start_live()
        try:
            while True:
                await asyncio.sleep(period)
                self.show(self.snapshot())
        finally:
            self._stop_live()

    def show(self, snapshot: Snapshot) -> None:
        if self.mode == "tty":
            if self._live is not None:
                self._live.update(self._block(snapshot), refresh=True)
        elif self.mode == "lines":
            event("progress", summary_line(snapshot), **snapshot.to_json())
        elif self.mode == "json":
            event("progress", "progress", **snapshot.to_json())

    def _block(self, snapshot: Snapshot) -> Text:
        from rich.text import Text

        return Text("\n".join(render_lines(snapshot, self.collections)))

    def _start_live(self) -> None:
        from rich.console import Console
        from rich.live import Live
        from rich.text import Text

        console = Console(file=self.stream, highlight=False, markup=False, emoji=False)
        # Log lines (the run's events, a stop notice) go through rich while the block is live,
        # so they are printed above it instead of through it.
        self._live = Live(
            Text(""),
            console=console,
            auto_refresh=False,
            redirect_stdout=False,
            redirect_stderr=self.stream is sys.stderr,
        )
        self._live.start()
        for handler in LOGGER.handlers:
            if isinstance(handler, logging.StreamHandler) and handler.stream is self.stream:
                self._log_streams.append((handler, handler.stream))
                handler.setStream(_LiveStream(console))

    def _stop_live(self) -> None:
        """The block's last frame holds the final counts; it stays on screen, below the log."""
        if self._live is None:
            return
        try:
            self._live.update(self._block(self.snapshot()), refresh=True)
        finally:
            self._live.stop()
            self._live = None
            for handler, stream in self._log_streams:
                handler.setStream(stream)
            self._log_streams.clear()


class _LiveStream:
    """A text stream whose lines rich prints above the live block."""

    def __init__(self, console: Console) -> None:
        self.console = console
        self._pending = ""

    def write(self, text: str) -> int:
        from rich.text import Text

        self._pending += text
        *lines, self._pending = self._pending.split("\n")
        for line in lines:
            self.console.print(Text(line), soft_wrap=True)
        return len(text)

    def flush(self) -> None:
        """Nothing is buffered but a line not yet ended."""


def progress_display(
    log_format: str, quiet: bool, interval: float
) -> Callable[[Callable[[], Snapshot]], ProgressDisplay]:
    """How a run's progress is shown: nothing with --quiet, JSON events with --log-format json,
    a live block on a terminal, else a line every `interval` seconds."""
    from exporter.model.schema import RESOURCE_TYPES, resource_type

    if quiet:
        mode = "quiet"
    elif log_format == "json":
        mode = "json"
    elif sys.stderr.isatty():
        mode = "tty"
    else:
        mode = "lines"
    collections = {t: resource_type(t).collection for t in RESOURCE_TYPES}
    return lambda snapshot: ProgressDisplay(
        mode, snapshot, collections=collections, interval=interval
    )


def show_report(report: Any, as_json: bool, render: Callable[[Any], list[str]]) -> None:
    """A command's report: indented JSON with --json, else its rendered lines."""
    if as_json:
        click.echo(orjson.dumps(report.to_json(), option=orjson.OPT_INDENT_2).decode())
    else:
        for line in render(report):
            click.echo(line)
