"""`exporter status DIR`: the runs in an output directory, their progress and high-water marks, and what the next export would do.

A run is described by `_manifest.json` (finished) or `_checkpoint.json` (finished or not); the
data files are read only for their footers (the `updatedAt` column statistics give each
resource's high-water mark, the newest change its committed data holds). Today a directory holds
one run; incremental runs will add `DIR/<type>/run=<id>/` partitions and a `_state.json` listing
them, which is why a report carries a list of runs and `discover_runs` is the one place that
finds them. DIR is anything `export --out` takes (a path, `file://...`, `s3://bucket/prefix`):
every read, footers included, goes through `Storage` and its pyarrow filesystem.

Nothing here writes: `status` is safe to run beside a live export.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import click
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from exporter import checkpoint, lock, manifest
from exporter.checkpoint import ResourceState, RunState
from exporter.errors import ExporterError, UsageError
from exporter.options import exit_on_error, show_report
from exporter.schema import RESOURCE_TYPES, resource_type
from exporter.storage import INPROGRESS_SUFFIX, Storage

HIGH_WATER_COLUMN = "updatedAt"


@dataclass
class ResourceStatus:
    type_name: str
    directory: str
    rows: int
    files: int
    bytes: int
    finished: bool
    updated_at_max: str | None  # high-water mark: newest `updatedAt` in the committed files
    extra_values: int = 0
    missing_references: int = 0  # referenced records the API no longer had
    partitions_total: int | None = None  # crawled collections only
    partitions_finished: int | None = None
    id_range_committed: float | None = None  # share of the planned id range committed
    positions_through: int | None = None  # relationship walk watermark (related types)
    ranges_waiting: int | None = None  # committed batches above the watermark


@dataclass
class RunStatus:
    run_id: str
    status: str  # complete | unfinished
    recorded_in: str  # manifest | checkpoint
    started_at: str | None
    finished_at: str | None
    source: str | None
    tool_version: str | None
    parameters: dict[str, Any]
    resources: list[ResourceStatus] = field(default_factory=list)
    uncommitted_files: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)

    @property
    def rows(self) -> int:
        return sum(r.rows for r in self.resources)


@dataclass
class NextExport:
    action: str  # start | resume | refuse | busy
    run_id: str | None
    message: str


@dataclass
class StatusReport:
    directory: str
    state: str  # complete | unfinished | none
    runs: list[RunStatus]
    next_export: NextExport
    writing: dict[str, Any] | None = None  # the run writing it now (purpose, pid, host, since)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def status(where: Storage | Path | str) -> StatusReport:
    """Describe DIR: its runs, their progress and high-water marks, and the next export's action."""
    root = where if isinstance(where, Storage) else Storage.open(where, flag="DIR")
    return _with_writer(root, _status(root))


def _status(root: Storage) -> StatusReport:
    kind = root.root_type()
    if kind not in (pafs.FileType.NotFound, pafs.FileType.Directory):
        raise UsageError(f"{root} is not a directory")
    is_dir = kind == pafs.FileType.Directory
    runs = discover_runs(root) if is_dir else []
    if not runs:
        stray = _uncommitted(root, set()) if is_dir else []
        removal = f"; it would remove {len(stray)} stray part file(s) first" if stray else ""
        return StatusReport(
            str(root), "none", [], NextExport("start", None, "start a new run" + removal)
        )
    current = runs[-1]
    if current.status == "complete":
        action = NextExport(
            "refuse",
            current.run_id,
            f"refuse a full export (run {current.run_id} is finished); with --incremental, add "
            "what changed since it; --restart replaces it",
        )
    else:
        removal = (
            f"; {len(current.uncommitted_files)} uncommitted file(s) removed and fetched again"
            if current.uncommitted_files
            else ""
        )
        relationships = current.parameters.get("relationships", "all")
        action = NextExport(
            "resume",
            current.run_id,
            f"resume run {current.run_id} from {current.source} with --relationships "
            f"{relationships}{removal} (another --base-url or --relationships is refused "
            "unless --restart)",
        )
    return StatusReport(str(root), current.status, runs, action)


def _with_writer(root: Storage, report: StatusReport) -> StatusReport:
    """Name the run writing the backup now, if any: the next export would stop (exit 7)."""
    found = lock.holder(root)
    if found is None:
        return report
    report.writing = {k: v for k, v in found.items() if k != "token"}
    who = lock.describe_holder(found)
    report.next_export = NextExport(
        "busy", report.next_export.run_id, f"stop (exit 7): {who} is writing it now"
    )
    return report


def discover_runs(root: Storage) -> list[RunStatus]:
    """The runs recorded in DIR, oldest first (today at most one: manifest, else checkpoint)."""
    state = checkpoint.load(root)
    problems: list[str] = []
    document: dict[str, Any] | None = None
    if root.exists(manifest.MANIFEST_NAME):
        try:
            document = manifest.load(root)
        except UsageError as exc:
            problems.append(f"{exc}; run `exporter verify`")
    if document is not None and (state is None or state.run_id == document.get("run_id")):
        return [_from_manifest(root, document, state)]
    if state is None:
        return []
    run = _from_checkpoint(root, state)
    run.problems += problems
    if state.status == "complete" and document is None:
        run.problems.append(
            f"{manifest.MANIFEST_NAME} is missing though the checkpoint says the run finished; "
            "run `exporter verify`"
        )
    return [run]


def _from_checkpoint(root: Storage, state: RunState) -> RunStatus:
    run = RunStatus(
        run_id=state.run_id,
        status="complete" if state.status == "complete" else "unfinished",
        recorded_in="checkpoint",
        started_at=state.started_at,
        finished_at=state.finished_at,
        source=state.source,
        tool_version=None,
        parameters=dict(state.parameters),
    )
    for resource in state.resources.values():
        run.resources.append(_resource_from_state(root, resource, run.problems))
    # The crawled collection first, then related types (the checkpoint sorts its keys).
    run.resources.sort(key=lambda r: r.partitions_total is None)
    if run.status != "complete":
        run.uncommitted_files = _uncommitted(root, {f.path for f in state.committed_files()})
    return run


def _resource_from_state(
    root: Storage, resource: ResourceState, problems: list[str]
) -> ResourceStatus:
    paths = [f.path for f in resource.files]
    result = ResourceStatus(
        type_name=resource.type_name,
        directory=resource.directory,
        rows=resource.rows,
        files=len(resource.files),
        bytes=sum(f.bytes for f in resource.files),
        finished=resource.finished,
        updated_at_max=_high_water(root, paths, problems),
        extra_values=resource.extra_values,
        missing_references=_missing_count(resource.detail),
    )
    if resource.planned:
        result.partitions_total = len(resource.partitions)
        result.partitions_finished = sum(1 for p in resource.partitions if p.finished)
        span = sum(p.high - p.low + 1 for p in resource.partitions)
        done = sum(
            p.high - p.low + 1 if p.finished else max(0, min(p.done_through, p.high) - p.low + 1)
            for p in resource.partitions
        )
        result.id_range_committed = done / span if span else 1.0
    _watermark(result, resource.detail)
    return result


def _from_manifest(root: Storage, document: dict[str, Any], state: RunState | None) -> RunStatus:
    tool = document.get("tool")
    run = RunStatus(
        run_id=str(document.get("run_id")),
        status="complete",
        recorded_in="manifest",
        started_at=document.get("started_at"),
        finished_at=document.get("finished_at"),
        source=document.get("source"),
        tool_version=tool.get("version") if isinstance(tool, dict) else None,
        parameters=dict(document.get("parameters") or {}),
    )
    files = [f for f in document.get("files") or [] if isinstance(f, dict)]
    resources = document.get("resources") or {}
    for type_name, resource in resources.items():
        if not isinstance(resource, dict):
            continue
        mine = [f for f in files if f.get("type") == type_name]
        detail = resource.get("detail") or {}
        result = ResourceStatus(
            type_name=type_name,
            directory=str(resource.get("directory")),
            rows=int(resource.get("rows") or 0),
            files=int(resource.get("files") or 0),
            bytes=sum(int(f.get("bytes") or 0) for f in mine),
            finished=True,
            updated_at_max=_high_water(root, [str(f.get("path")) for f in mine], run.problems),
            extra_values=int(resource.get("extra_values") or 0),
            missing_references=_missing_count(detail),
        )
        if state is not None and type_name in state.resources:
            planned = state.resources[type_name]
            if planned.planned:
                result.partitions_total = len(planned.partitions)
                result.partitions_finished = sum(1 for p in planned.partitions if p.finished)
                result.id_range_committed = 1.0
        _watermark(result, detail)
        run.resources.append(result)
    return run


def _missing_count(detail: dict[str, Any]) -> int:
    missing = detail.get("missing")
    return int(missing.get("count") or 0) if isinstance(missing, dict) else 0


def _watermark(result: ResourceStatus, detail: dict[str, Any]) -> None:
    if "positions_through" in detail:
        result.positions_through = int(detail["positions_through"])
        result.ranges_waiting = len(detail.get("ranges_above") or [])


def _high_water(root: Storage, paths: list[str], problems: list[str]) -> str | None:
    newest: datetime | None = None
    for relative in paths:
        location = root.inside(relative)
        if location is None:
            problems.append(
                f"{relative}: recorded path points outside the output directory; "
                "run `exporter verify`"
            )
            continue
        try:
            value = updated_high_water(root.path(location), filesystem=root.fs)
        except (OSError, pa.ArrowException) as exc:
            problems.append(
                f"{relative}: cannot read its updatedAt ({type(exc).__name__}); "
                "run `exporter verify`"
            )
            continue
        if value is not None and (newest is None or value > newest):
            newest = value
    return _iso(newest) if newest is not None else None


def updated_high_water(
    path: Path | str,
    column: str = HIGH_WATER_COLUMN,
    filesystem: pafs.FileSystem | None = None,
) -> datetime | None:
    """The largest value of `column` in a Parquet file: row-group statistics, else a column scan.

    `path` is on `filesystem` (an object store's, say), a local path when none is given. Only the
    footer is read when every row group carries statistics; otherwise the one column is streamed
    batch by batch, so memory stays flat either way.
    """
    if filesystem is None:
        filesystem, path = pafs.LocalFileSystem(), Path(path).absolute()
    with filesystem.open_input_file(str(path)) as handle:
        return _max_of(pq.ParquetFile(handle), column)


def _max_of(parquet: pq.ParquetFile, column: str) -> datetime | None:
    """`updated_high_water` on an open file: statistics first, the column itself if need be."""
    metadata = parquet.metadata
    names = [metadata.schema.column(i).path for i in range(metadata.num_columns)]
    if column not in names:
        return None
    index = names.index(column)
    newest: datetime | None = None
    for group in range(metadata.num_row_groups):
        chunk = metadata.row_group(group).column(index)
        stats = chunk.statistics
        if stats is None or not stats.has_min_max:
            if stats is not None and stats.null_count == chunk.num_values:
                continue  # an all-null row group has no maximum
            return _scan_max(parquet, column)
        value = stats.max
        if not isinstance(value, datetime):
            return _scan_max(parquet, column)
        if newest is None or value > newest:
            newest = value
    return newest


def _scan_max(parquet: pq.ParquetFile, column: str) -> datetime | None:
    newest: datetime | None = None
    for batch in parquet.iter_batches(batch_size=65_536, columns=[column]):
        value = pc.max(batch.column(0)).as_py()
        if isinstance(value, datetime) and (newest is None or value > newest):
            newest = value
    return newest


def _iso(value: datetime) -> str:
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    text = value.astimezone(UTC).isoformat()
    return text.replace("+00:00", "Z")


def _uncommitted(root: Storage, named: set[str]) -> list[str]:
    """Part files the checkpoint does not name: the next export removes them (run.remove_uncommitted).

    Only the files directly in each type directory: that is where an export writes its parts.
    """
    found: list[str] = []
    for type_name in RESOURCE_TYPES:
        directory = resource_type(type_name).collection
        for relative in root.list_files(directory):
            name = relative[len(directory) + 1 :]
            if "/" in name:
                continue
            is_part = name.startswith("part-") and name.endswith(".parquet")
            is_temp = name.startswith(".part-") and name.endswith(INPROGRESS_SUFFIX)
            if (is_part and relative not in named) or is_temp:
                found.append(relative)
    return found


def render(report: StatusReport) -> list[str]:
    """The text report."""
    lines = [f"{report.directory}: {report.state}"]
    if report.writing is not None:
        lines.append(f"being written now by {lock.describe_holder(report.writing)}")
    if not report.runs:
        lines.append("no export here")
    for run in report.runs:
        lines += _render_run(run)
    lines.append(f"next export would: {report.next_export.message}")
    return lines


def _render_run(run: RunStatus) -> list[str]:
    tool = f" (outreach-exporter {run.tool_version})" if run.tool_version else ""
    lines = [
        f"run {run.run_id}: {run.status}, recorded in {run.recorded_in}",
        f"  started    {run.started_at or '-'}",
        f"  finished   {run.finished_at or '-'}",
        f"  source     {run.source or '-'}{tool}",
        "  parameters " + " ".join(f"{k}={v}" for k, v in run.parameters.items()),
    ]
    table = [("resource", "rows", "files", "updatedAt high-water", "progress")]
    for r in run.resources:
        table.append(
            (r.type_name, f"{r.rows:,}", f"{r.files:,}", r.updated_at_max or "-", _progress(r))
        )
    widths = [max(len(row[i]) for row in table) for i in range(4)]
    for row in table:
        cells = [
            row[0].ljust(widths[0]),
            row[1].rjust(widths[1]),
            row[2].rjust(widths[2]),
            row[3].ljust(widths[3]),
            row[4],
        ]
        lines.append(("  " + "  ".join(cells)).rstrip())
    lines.append(f"  total {run.rows:,} rows in {sum(r.files for r in run.resources):,} files")
    missing = [
        f"{r.type_name} {r.missing_references:,}" for r in run.resources if r.missing_references
    ]
    if missing:
        lines.append("  missing references (the API no longer had them): " + ", ".join(missing))
    extra = [f"{r.type_name} {r.extra_values:,}" for r in run.resources if r.extra_values]
    if extra:
        lines.append("  values kept in _extra: " + ", ".join(extra))
    if run.uncommitted_files:
        lines.append(f"  uncommitted files: {len(run.uncommitted_files)}")
    lines += [f"  problem: {p}" for p in run.problems]
    return lines


def _progress(r: ResourceStatus) -> str:
    if r.finished:
        return "finished" + (
            f" ({r.partitions_total} partitions)" if r.partitions_total is not None else ""
        )
    parts: list[str] = []
    if r.partitions_total is not None:
        parts.append(f"partitions {r.partitions_finished}/{r.partitions_total} finished")
    if r.id_range_committed is not None:
        parts.append(f"{r.id_range_committed:.0%} of the id range committed")
    if r.positions_through is not None:
        waiting = f", {r.ranges_waiting} batch(es) waiting above" if r.ranges_waiting else ""
        parts.append(f"related records committed through position {r.positions_through:,}{waiting}")
    return "; ".join(parts) or "in progress"


@click.command("status")
@click.argument("directory", metavar="DIR")
@click.option("--json", "as_json", is_flag=True, help="Print a machine-readable JSON report.")
def status_command(directory: str, as_json: bool) -> None:
    """Show the runs in DIR (finished or not), their high-water marks, and what export would do next.

    DIR is a path or a URI, as `export --out` takes (s3://bucket/prefix, file://...).
    """
    try:
        report = status(directory)
    except ExporterError as exc:
        exit_on_error(exc)
        return
    show_report(report, as_json, render)
