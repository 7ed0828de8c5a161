"""`exporter status`'s text: one block per run, oldest first, the backup's totals, and what the next export would do."""

from __future__ import annotations

from collections import Counter

from exporter.audit.status import (
    HIGH_WATER_COLUMN,
    ResourceStatus,
    RunStatus,
    StatusReport,
    shown_seconds,
)
from exporter.backup import lock
from exporter.model.normalize import TOMBSTONE_TYPE


def render(report: StatusReport) -> list[str]:
    """The text report: one block per run, oldest first, the backup's totals, the next export."""
    lines = [f"{report.directory}: {report.state}"]
    if report.writing is not None:
        lines.append(f"being written now by {lock.describe_holder(report.writing)}")
    if not report.runs and not report.earlier_runs:
        lines.append("no export here")
    if report.earlier_runs:
        lines.append(f"({report.earlier_runs:,} earlier run(s) not shown: --runs all lists them)")
    for run in report.runs:
        lines += _render_run(run)
    if report.runs or report.earlier_runs:
        lines += _render_totals(report)
    lines.append(f"next export would: {report.next_export.message}")
    return lines


def _table(rows: list[tuple[str, ...]], right: set[int]) -> list[str]:
    """Aligned columns, two spaces apart (indented two); `right`: the right-aligned ones."""
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = []
    for row in rows:
        cells = [
            cell.rjust(widths[i]) if i in right else cell.ljust(widths[i])
            for i, cell in enumerate(row)
        ]
        lines.append(("  " + "  ".join(cells)).rstrip())
    return lines


def _render_run(run: RunStatus) -> list[str]:
    phase = f" (phase {run.phase})" if run.phase else ""
    lines = [f"run {run.run_id}: {run.kind}, {run.status}{phase}, recorded in {run.recorded_in}"]
    lines.append(f"  started    {run.started_at or '-'}")
    lines.append(f"  finished   {run.finished_at or '-'}")
    mark = run.window_end or "- (not taken yet)"
    if run.kind == "incremental":
        overlap = (
            f" (the previous mark less {shown_seconds(run.overlap_seconds)})"
            if run.overlap_seconds is not None
            else ""
        )
        lines.append(
            f"  window     updatedAt from {run.window_start or '-'}{overlap} to mark {mark}"
        )
    else:
        lines.append(f"  window     every record; mark {mark}")
    if run.window_end and run.mark_basis:
        lines.append(f"  mark       taken from the {run.mark_basis}")
    if run.parameters:
        tool = f" (outreach-exporter {run.tool_version})" if run.tool_version else ""
        lines.append(f"  source     {run.source or '-'}{tool}")
        lines.append(
            "  parameters " + " ".join(f"{k}={v}" for k, v in sorted(run.parameters.items()))
        )
    data = [r for r in run.resources if r.type_name != TOMBSTONE_TYPE]
    with_stones = run.tombstones > 0
    unfinished = run.status != "complete"
    # A finished run lists the types it wrote (or found gone); an unfinished one every type, with
    # its progress.
    shown = data if unfinished else [r for r in data if r.rows or r.files or r.tombstones]
    if shown:
        header = ["type", "rows", "files"] + (["tombstones"] if with_stones else [])
        table: list[tuple[str, ...]] = [tuple(header + (["progress"] if unfinished else []))]
        for r in shown:
            cells = [r.type_name, f"{r.rows:,}", f"{r.files:,}"]
            cells += [f"{r.tombstones:,}"] if with_stones else []
            cells += [_progress(r)] if unfinished else []
            table.append(tuple(cells))
        lines += _table(table, {1, 2, 3} if with_stones else {1, 2})
    quiet = [r.type_name for r in data if all(r is not other for other in shown)]
    if quiet:
        lines.append("  nothing new: " + ", ".join(quiet))
    files = sum(r.files for r in data)
    total = f"  total {run.rows:,} rows in {files:,} files"
    stones = [r for r in run.resources if r.type_name == TOMBSTONE_TYPE]
    if stones:
        total += "; " + _tombstone_total(
            run.tombstones, sum(r.files for r in stones), run.status == "complete"
        )
    lines.append(total)
    missing = [f"{r.type_name} {r.missing_references:,}" for r in data if r.missing_references]
    if missing:
        lines.append("  missing references (the API no longer had them): " + ", ".join(missing))
    extra = [f"{r.type_name} {r.extra_values:,}" for r in data if r.extra_values]
    if extra:
        lines.append("  values kept in _extra: " + ", ".join(extra))
    if run.uncommitted_files:
        lines.append(f"  uncommitted files: {len(run.uncommitted_files)}")
    lines += [f"  problem: {p}" for p in run.problems]
    return lines


def _render_totals(report: StatusReport) -> list[str]:
    kinds = Counter(run.kind for run in report.runs) + Counter(report.earlier_kinds)
    described = ", ".join(f"{n} {kind}" for kind, n in sorted(kinds.items()))
    count = len(report.runs) + report.earlier_runs
    lines = [
        f"backup: {count} run{'s' if count != 1 else ''} ({described}); "
        "totals over every committed file"
    ]
    data = [t for t in report.totals if t.type_name != TOMBSTONE_TYPE]
    with_stones = any(t.tombstones for t in data)
    header = ["type", "rows", "files"] + (["tombstones"] if with_stones else [])
    table: list[tuple[str, ...]] = [tuple([*header, "updatedAt high-water"])]
    for t in data:
        cells = [t.type_name, f"{t.rows:,}", f"{t.files:,}"]
        cells += [f"{t.tombstones:,}"] if with_stones else []
        newest = t.updated_at_max or "-"
        if t.updated_at_max and t.high_water_column not in (None, HIGH_WATER_COLUMN):
            newest += f" ({t.high_water_column})"  # a type without updatedAt: a log's time
        table.append(tuple([*cells, newest]))
    lines += _table(table, {1, 2, 3} if with_stones else {1, 2})
    rows = sum(t.rows for t in data)
    files = sum(t.files for t in data)
    total = f"  total {rows:,} rows in {files:,} files"
    stones = [t for t in report.totals if t.type_name == TOMBSTONE_TYPE]
    if stones:
        total += "; " + _tombstone_total(
            sum(t.rows for t in stones), sum(t.files for t in stones), True
        )
    lines.append(total)
    return lines


def _tombstone_total(count: int, files: int, complete: bool) -> str:
    if files:
        return f"{count:,} tombstones in {files:,} file{'s' if files != 1 else ''}"
    return "no id found gone" if complete else "no tombstones committed yet"


def _progress(r: ResourceStatus) -> str:
    if r.finished:
        return "finished" + (f" ({r.partitions_total} partitions)" if r.partitions_total else "")
    parts: list[str] = []
    if r.partitions_total is not None:
        if r.partitions_total and r.partitions_finished == r.partitions_total:
            parts.append(f"all {r.partitions_total} partitions finished")
        elif r.partitions_total:
            parts.append(f"partitions {r.partitions_finished}/{r.partitions_total} finished")
            if r.id_range_committed is not None:
                parts.append(f"{r.id_range_committed:.0%} of the id range committed")
        else:
            parts.append("done (nothing to fetch)")
    if r.positions_through is not None:
        waiting = f", {r.ranges_waiting} batch(es) waiting above" if r.ranges_waiting else ""
        parts.append(f"related records committed through position {r.positions_through:,}{waiting}")
    return "; ".join(parts) or "in progress"
