"""`export --metrics-file`: the run's outcome in the Prometheus text format, written atomically for the node exporter's textfile collector."""

# What a scheduler alerts on: a backup that failed (`last_run_exit_code` not 0) or that has not
# succeeded for too long (`time() - last_success_timestamp_seconds`). A failed run keeps the
# last success's time from the file it replaces, so the second alert still fires after a
# string of failures. The file is written next to its final name and renamed into place: the
# collector never reads half a file.

from __future__ import annotations

import contextlib
import os
import re
import time
from dataclasses import dataclass, field
from pathlib import Path

from exporter.core.errors import OutputError, UsageError

PREFIX = "outreach_exporter_"
_SUCCESS = re.compile(rf"^{PREFIX}last_success_timestamp_seconds(?:{{[^}}]*}})? (\S+)$", re.M)


@dataclass
class RunOutcome:
    """What the metrics file says about one run."""

    out: str
    exit_code: int
    seconds: float
    finished_at: float = field(default_factory=time.time)
    records: dict[str, int] = field(default_factory=dict)  # per type, this run
    requests: dict[str, int] = field(default_factory=dict)  # per type, this run
    all_requests: int | None = None  # None: not known (a run that failed)


def check_metrics_path(path: Path) -> None:
    """Before the run: the file's directory exists (so a finished run can say so)."""
    parent = path.expanduser().absolute().parent
    if not parent.is_dir():
        raise UsageError(f"--metrics-file {path}: its directory {parent} does not exist")


def _number(value: float) -> str:
    """A sample value in full (a Unix time needs all its digits)."""
    return str(int(value)) if float(value).is_integer() else repr(float(value))


def _label(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def render(outcome: RunOutcome, last_success: float | None) -> str:
    """The file's text: HELP and TYPE for every metric, all labelled with the backup's `out`."""
    out = f'out="{_label(outcome.out)}"'
    lines: list[str] = []

    def gauge(name: str, help_text: str, samples: list[tuple[str, float]]) -> None:
        if not samples:
            return
        lines.append(f"# HELP {PREFIX}{name} {help_text}")
        lines.append(f"# TYPE {PREFIX}{name} gauge")
        for labels, value in samples:
            lines.append(f"{PREFIX}{name}{{{labels}}} {_number(value)}")

    gauge(
        "last_run_exit_code",
        "Exit code of the last export (0: success).",
        [(out, outcome.exit_code)],
    )
    gauge(
        "last_run_timestamp_seconds",
        "When the last export ended (Unix time).",
        [(out, round(outcome.finished_at, 3))],
    )
    gauge(
        "last_success_timestamp_seconds",
        "When the last successful export ended (Unix time).",
        [] if last_success is None else [(out, round(last_success, 3))],
    )
    gauge(
        "last_run_duration_seconds",
        "Duration of the last export.",
        [(out, round(outcome.seconds, 3))],
    )
    gauge(
        "last_run_records",
        "Records the last export wrote, per type.",
        [(f'{out},type="{_label(t)}"', n) for t, n in outcome.records.items()],
    )
    gauge(
        "last_run_requests",
        "Requests of the last export that fetched records, per type (pages and batches).",
        [(f'{out},type="{_label(t)}"', n) for t, n in outcome.requests.items()],
    )
    gauge(
        "last_run_http_requests",
        "Every request the last export sent (retries included).",
        [] if outcome.all_requests is None else [(out, outcome.all_requests)],
    )
    return "\n".join(lines) + "\n"


def previous_success(path: Path) -> float | None:
    """The last success's time the current file holds, if any."""
    try:
        text = path.read_text(errors="replace")[:1_000_000]
    except OSError:
        return None
    match = _SUCCESS.search(text)
    if match is None:
        return None
    with contextlib.suppress(ValueError):
        return float(match[1])
    return None


def write_metrics(path: Path, outcome: RunOutcome) -> None:
    """Replace `path` atomically (a temporary file beside it, then a rename)."""
    path = path.expanduser()
    last_success = outcome.finished_at if outcome.exit_code == 0 else previous_success(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "w", encoding="utf-8") as handle:
            handle.write(render(outcome, last_success))
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except OSError as exc:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise OutputError(f"cannot write --metrics-file {path}: {exc.strerror or exc}") from None
