"""`exporter status DIR`: every run in an output directory, what each wrote, the backup's totals and high-water marks, and what the next export would do.

A backup directory holds one full run and any number of incremental runs after it (each in
`DIR/<type>/run=<id>/`, tombstones in `DIR/tombstones/run=<id>/`). They are recorded twice:
`_manifest.json` (cumulative, written when a run finishes) lists every finished run (`runs`) and
every file with the run that wrote it; `_checkpoint.json` describes the current run, finished or
not, with the earlier ones in its `history`. `catalog.recorded_runs` is the one place that reads
them: the checkpoint says which runs there are (it is the commit point), the manifest's record
of a run is preferred where it has one; without a checkpoint, the manifest alone. What the next
export would do is what export's own plan says (`plan.plan_export`).

The data files are read only for their footers (the `updatedAt` column statistics give each
type's high-water mark, the newest change its committed data holds), and tombstone files for
their `type` column (how many ids of each type a run found gone). DIR is anything `export --out`
takes (a path, `file://...`, `s3://bucket/prefix`): every read, footers included, goes through
`Storage` and its pyarrow filesystem.

Nothing here writes: `status` is safe to run beside a live export.

This module builds the `StatusReport`; `status_text.render` turns it into the text `exporter status`
prints (`--json` prints the report as JSON).
"""

from __future__ import annotations

import posixpath
from collections import Counter
from dataclasses import asdict, dataclass, field, replace
from datetime import datetime
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.fs as pafs

from exporter.backup import catalog, checkpoint, lock
from exporter.backup.catalog import RecordedFile, RunRecord, ordered_types, recorded_runs
from exporter.backup.checkpoint import ResourceState, RunState
from exporter.backup.damage import inspect, shown
from exporter.backup.detail import BatchWatermark, IdSample, ResourceDetail
from exporter.backup.layout import BACKUP_DIRECTORIES, run_directory, uncommitted
from exporter.backup.reader import newest_value, part_reader
from exporter.backup.storage import Storage
from exporter.core.errors import UsageError
from exporter.core.times import iso_exact, iso_exact_or_none, micros
from exporter.export.plan import (
    DEFAULT_OVERLAP,
    ExportRequest,
    Extend,
    FinishedExport,
    Refuse,
    Resume,
    plan_export,
    window_start,
)
from exporter.model.normalize import TOMBSTONE_TYPE
from exporter.model.schema import Kind, incremental_strategy, readable_types, resource_type

HIGH_WATER_COLUMN = "updatedAt"


def high_water_column(type_name: str) -> str | None:
    """The time a type's high-water mark is taken from: `updatedAt`; for a type without one
    (a log, a note) the time its incremental window filters on, else its `createdAt`; None for
    a type with neither (tombstones, a type this version does not know)."""
    if type_name not in readable_types():
        return None
    rtype = resource_type(type_name)
    if rtype.attribute(HIGH_WATER_COLUMN) is not None:
        return HIGH_WATER_COLUMN
    attribute = incremental_strategy(type_name).attribute
    created = rtype.attribute("createdAt")
    if attribute is None and created is not None and created.kind is Kind.DATETIME:
        attribute = created.name
    return attribute


@dataclass
class ResourceStatus:
    """One type in one run: what that run wrote (and, unfinished, how far it is)."""

    type_name: str
    directory: str
    rows: int
    files: int
    bytes: int
    finished: bool
    updated_at_max: str | None  # high-water mark: newest `updatedAt` in this run's files
    extra_values: int = 0
    missing_references: int = 0  # referenced records the API no longer had
    partitions_total: int | None = None  # crawled collections only
    partitions_finished: int | None = None
    id_range_committed: float | None = None  # share of the planned id range committed
    positions_through: int | None = None  # relationship walk watermark (related types)
    ranges_waiting: int | None = None  # committed batches above the watermark
    tombstones: int = 0  # ids of this type the run found gone (--detect-deletes)
    high_water_column: str | None = HIGH_WATER_COLUMN  # what `updated_at_max` is the newest of


@dataclass
class RunStatus:
    run_id: str
    status: str  # complete | unfinished
    recorded_in: str  # manifest | checkpoint
    started_at: str | None
    finished_at: str | None
    source: str | None
    tool_version: str | None  # the exporter that started the run (when recorded)
    parameters: dict[str, Any]  # as the run recorded them ({} for runs of older backups)
    resources: list[ResourceStatus] = field(default_factory=list)
    uncommitted_files: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    kind: str = "full"  # full | incremental
    window_start: str | None = None  # incremental: records updated at or after this
    window_end: str | None = None  # the run's mark: the API's clock when it began
    mark_basis: str | None = None  # what the mark is based on (server clock, local clock, skew)
    overlap_seconds: float | None = None  # incremental: the previous run's mark less window_start
    phase: str | None = None  # unfinished: crawl | deltas | deletes | done

    @property
    def rows(self) -> int:
        """Data rows the run wrote (tombstones apart)."""
        return sum(r.rows for r in self.resources if r.type_name != TOMBSTONE_TYPE)

    @property
    def tombstones(self) -> int:
        return sum(r.rows for r in self.resources if r.type_name == TOMBSTONE_TYPE)


@dataclass
class TypeTotal:
    """One type over the whole backup: every run's committed files."""

    type_name: str
    rows: int
    files: int
    bytes: int
    updated_at_max: str | None  # the newest `updatedAt` any committed file of the type holds
    tombstones: int = 0  # ids of this type found gone, over all runs
    high_water_column: str | None = HIGH_WATER_COLUMN  # a log's: its creation time


@dataclass
class NextExport:
    action: str  # start | resume | refuse | busy
    run_id: str | None
    message: str
    mark: str | None = None  # finished backup: the last finished run's mark (`window_end`)
    since: str | None = None  # ... less the default --overlap: where --incremental would start


@dataclass
class StatusReport:
    directory: str
    state: str  # complete | unfinished | none (the newest run's status)
    runs: list[RunStatus]  # every run, oldest first
    next_export: NextExport
    writing: dict[str, Any] | None = None  # the run writing it now (purpose, pid, host, since)
    totals: list[TypeTotal] = field(default_factory=list)  # per type, over every run
    earlier_runs: int = 0  # runs left out of `runs` by `newest()` (totals still count them)
    earlier_kinds: dict[str, int] = field(default_factory=dict)  # their kinds (full, incremental)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    def newest(self, count: int | None) -> StatusReport:
        """The report with only the newest `count` runs listed (all when None)."""
        if count is None or len(self.runs) <= count:
            return self
        cut = len(self.runs) - count
        left_out = Counter(run.kind for run in self.runs[:cut])
        return replace(self, runs=self.runs[cut:], earlier_runs=cut, earlier_kinds=dict(left_out))


def status(where: Storage | Path | str) -> StatusReport:
    """Describe DIR: its runs, their progress and high-water marks, and the next export's action."""
    root = where if isinstance(where, Storage) else Storage.open(where, flag="DIR")
    return _with_writer(root, _status(root))


def _status(root: Storage) -> StatusReport:
    kind = root.root_type()
    if kind not in (pafs.FileType.NotFound, pafs.FileType.Directory):
        raise UsageError(f"{root} is not a directory")
    if kind == pafs.FileType.NotFound:
        return StatusReport(str(root), "none", [], NextExport("start", None, "start a new run"))
    survey = _Survey(root)
    runs = survey.runs
    if not runs:
        nothing = plan_export(survey.found, ExportRequest(where=root.display, type_names=()))
        if isinstance(nothing, Refuse):
            # A checkpoint missing or damaged beside a manifest that cannot be read either.
            return StatusReport(
                str(root), "none", [], NextExport("refuse", None, f"refuse: {nothing.error}")
            )
        # No checkpoint or manifest proves a file ours: export deletes nothing here
        # (layout.remove_uncommitted).
        stray = _uncommitted(root, set())
        kept = (
            f"; it leaves the {len(stray)} part file(s) of this tool's naming here as they are "
            "(no checkpoint or manifest names them)"
            if stray
            else ""
        )
        return StatusReport(
            str(root), "none", [], NextExport("start", None, "start a new run" + kept)
        )
    return StatusReport(
        str(root), runs[-1].status, runs, _next_export(survey), totals=survey.totals()
    )


def _next_export(survey: _Survey) -> NextExport:
    """What `export --out DIR` would do, as `plan.plan_export` decides it: without flags, with
    the selection of the backup's run; for a finished backup, with --incremental too."""
    state, current = survey.state, survey.runs[-1]
    same = ExportRequest(
        where=survey.root.display, type_names=tuple(state.resources) if state else ()
    )
    plan = plan_export(survey.found, same)
    if state is None:
        # A finished backup without its checkpoint: export refuses it, but with --incremental
        # --repair (`plan.refusal_before_request`, then the plan rebuilds it from the manifest).
        assert isinstance(plan, Refuse)
        return NextExport(
            "refuse",
            current.run_id,
            f"refuse: {checkpoint.CHECKPOINT_NAME} is "
            f"{'damaged' if survey.checkpoint_damaged else 'missing'} beside the manifest, so "
            "the backup can neither be resumed nor extended as it is; --incremental --repair "
            "rebuilds the checkpoint from the manifest and extends the backup (or put the "
            "checkpoint back; --restart discards the backup)",
        )
    damaged = _damage(survey.root, state)
    if isinstance(plan, Resume):
        unfinished = next((r for r in survey.runs if r.run_id == state.run_id), current)
        removal = (
            f"; {len(unfinished.uncommitted_files)} uncommitted file(s) removed and fetched again"
            if unfinished.uncommitted_files
            else ""
        )
        if unfinished.status == "complete":
            removal += "; its manifest is written: it only marks the run finished"
        kind = state.kind
        if kind == "incremental":
            kind += f", changes since {state.window_start}"
        relationships = state.parameters.get("relationships", "all")
        deletes = " --detect-deletes" if TOMBSTONE_TYPE in state.resources else ""
        resume = (
            f"resume run {state.run_id} ({kind}) from {state.source} with "
            f"--relationships {relationships}{deletes}{removal} (another --base-url, "
            "--relationships or --detect-deletes is refused unless --restart)"
        )
        if damaged:
            return NextExport("refuse", state.run_id, f"stop: {damaged}, then {resume}")
        return NextExport("resume", state.run_id, resume)
    assert isinstance(plan, Refuse) and isinstance(plan.error, FinishedExport)
    refused = f"refuse a full export (run {state.run_id} finished it; --restart starts over)"
    # --incremental: the plan removes the uncommitted files, then `_check_files` stops on damage.
    leftovers = _uncommitted(survey.root, {f.path for f in state.committed_files()})
    first = f"first remove {len(leftovers)} uncommitted file(s), then " if leftovers else ""
    if damaged:
        return NextExport(
            "refuse", state.run_id, f"{refused}; --incremental would {first}stop: {damaged}"
        )
    if state.window_end is None:
        return NextExport(
            "refuse",
            state.run_id,
            f"{refused}; --incremental cannot start: run {state.run_id} recorded no mark",
        )
    extend = plan_export(survey.found, replace(same, incremental=True))
    assert isinstance(extend, Extend)
    since = extend.window_start
    used = state.parameters.get("overlap")
    last = ""
    if isinstance(used, int | float) and float(used) != DEFAULT_OVERLAP:
        own = window_start(state.window_end, float(used))
        last = f"; the last run used {shown_seconds(float(used))}: since {own}"
    return NextExport(
        "refuse",
        state.run_id,
        f"{refused}; --incremental would {first}fetch what changed since {state.window_end} (the mark "
        f"of run {state.run_id}) less --overlap (default {shown_seconds(DEFAULT_OVERLAP)}: since "
        f"{since}{last})",
        mark=state.window_end,
        since=since,
    )


def mark_basis(basis: dict[str, Any] | None) -> str | None:
    """What the run's mark was taken from, as `Export._mark_window` recorded it (the root's
    `detail.mark`); None for runs that recorded nothing (older releases: the API's clock)."""
    if not isinstance(basis, dict) or not isinstance(basis.get("based_on"), str):
        return None
    text = str(basis["based_on"])
    skew = basis.get("skew_seconds")
    if isinstance(skew, int | float) and abs(skew) >= 1:
        side = "ahead of" if skew > 0 else "behind"
        text += f"; the API's clock was {abs(skew):,.0f} s {side} this machine's"
    if isinstance(basis.get("window_start_clamped_from"), str):
        text += f"; the window start was moved back from {basis['window_start_clamped_from']}"
    return text


def _damage(root: Storage, state: RunState) -> str:
    """The committed files export would stop on (run.py `_check_files`: `damage.inspect`, without
    --repair), as a clause; '' when none."""
    found = inspect(root, state.committed_files(), thorough=False)
    if not found:
        return ""
    more = f" and {len(found) - 1} more committed file(s)" if len(found) > 1 else ""
    return (
        f"{shown(root, found[0].file.path)} is damaged ({found[0].reason}){more}; pass --repair "
        "to set it aside and fetch its records again"
    )


def shown_seconds(value: float) -> str:
    return f"{value:g} s"


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
    """Every run recorded in DIR, oldest first: the checkpoint's history and its own run (each as
    the manifest records it, where it does), or the manifest's runs when there is no checkpoint."""
    return _Survey(root).runs


class _Survey:
    """The runs of one directory, read once: the documents, the footers, the tombstone files."""

    def __init__(self, root: Storage) -> None:
        self.root = root
        self.found = found = catalog.read(root)
        self._manifest_present = found.manifest_present
        if found.unreadable is not None and not found.manifest_present:
            raise found.unreadable  # an unfinished run's checkpoint: nothing else describes it
        # Beside a manifest, a damaged checkpoint is refused by export as a missing one.
        self.checkpoint_damaged = found.unreadable is not None
        self.state = found.state
        self.document = found.document
        problems: list[str] = []  # about the records themselves: shown on the newest run
        if found.manifest_unreadable is not None:
            problems.append(f"{found.manifest_unreadable}; run `exporter verify`")
        self._high_water: dict[str, datetime | None] = {}
        self._stones: dict[str, Counter[str]] = {}
        records, disagreements = recorded_runs(found)
        problems += disagreements
        self.runs: list[RunStatus] = []
        previous: RunRecord | None = None
        for record in records:
            self.runs.append(self._run(record, previous))
            previous = record
        if self.runs:
            self.runs[-1].problems += problems
        self._recorded = records

    @property
    def source(self) -> str | None:
        # Every run of a directory has one source: export refuses another (run.py `_prepare`).
        if self.state is not None:
            return self.state.source
        return None if self.document is None else self.document.get("source")

    def _run(self, record: RunRecord, previous: RunRecord | None) -> RunStatus:
        # The manifest's top level describes one run (its newest), the checkpoint one (its own).
        document = self.document
        if document is not None and str(document.get("run_id")) != record.run_id:
            document = None
        state = (
            self.state if self.state is not None and self.state.run_id == record.run_id else None
        )
        tool = document.get("tool") if document is not None else None
        tool_version = tool.get("version") if isinstance(tool, dict) else record.tool_version
        parameters: dict[str, Any] = dict(record.parameters)  # runs recorded in a history
        if document is not None:
            parameters = dict(document.get("parameters") or {})
        elif state is not None:
            parameters = dict(state.parameters)
            tool_version = state.tool_version or tool_version
        run = RunStatus(
            run_id=record.run_id,
            status="complete" if record.complete else "unfinished",
            recorded_in=record.recorded_in,
            started_at=record.started_at,
            finished_at=record.finished_at,
            source=self.source,
            tool_version=tool_version,
            parameters=parameters,
            kind=record.kind,
            window_start=record.window_start,
            window_end=record.window_end,
        )
        if (
            record.kind == "incremental"
            and previous is not None
            and previous.window_end
            and record.window_start
        ):
            run.overlap_seconds = (micros(previous.window_end) - micros(record.window_start)) / 1e6
        unfinished = state is not None and state.status != "complete"
        if state is not None and unfinished:
            run.phase = state.phase
        # What the run's documents say per type beyond its files: the manifest's top level
        # for the run it describes, else the checkpoint for its own run.
        details: dict[str, dict[str, Any]] = {}
        recorded: dict[str, ResourceDetail] = {}
        if document is not None:
            resources = document.get("resources") or {}
            details = {str(k): v for k, v in resources.items() if isinstance(v, dict)}
            recorded = {k: ResourceDetail.recorded(v.get("detail")) for k, v in details.items()}
        elif state is not None:
            details = {
                k: {"directory": v.directory, "extra_values": v.extra_values}
                for k, v in state.resources.items()
            }
            recorded = {k: v.detail for k, v in state.resources.items()}
        stones = Counter[str]()
        for entry in record.files:
            if entry.type_name == TOMBSTONE_TYPE:
                stones.update(self._tombstones(entry.path, run.problems))
        # The mark is recorded in the root type's detail (whichever type the run crawled whole).
        bases = (mark_basis(detail.mark) for detail in recorded.values())
        run.mark_basis = next((basis for basis in bases if basis is not None), None)
        for type_name in ordered_types(set(record.types) | set(stones) - {""}):
            mine = [f for f in record.files if f.type_name == type_name]
            summary = details.get(type_name, {})
            detail = recorded.get(type_name) or ResourceDetail()
            result = ResourceStatus(
                type_name=type_name,
                directory=str(summary.get("directory") or _directory(record, type_name, mine)),
                rows=sum(f.rows for f in mine),
                files=len(mine),
                bytes=sum(f.bytes for f in mine),
                finished=record.complete,
                updated_at_max=None,
                extra_values=int(summary.get("extra_values") or 0),
                missing_references=_missing_count(detail.missing),
                tombstones=stones.get(type_name, 0),
                high_water_column=high_water_column(type_name),
            )
            if result.high_water_column is not None:
                paths = [f.path for f in mine]
                newest = self._newest(paths, result.high_water_column, run.problems)
                result.updated_at_max = iso_exact_or_none(newest)
            if state is not None and type_name in state.resources:
                _partitions(result, state.resources[type_name])
            _watermark(result, detail.watermark)
            run.resources.append(result)
        if state is not None and unfinished:
            run.uncommitted_files = _uncommitted(
                self.root, {f.path for f in state.committed_files()}
            )
        return run

    def totals(self) -> list[TypeTotal]:
        """Per type, every run's committed files (an unfinished run's committed ones included)."""
        found: dict[str, TypeTotal] = {}
        newest: dict[str, datetime] = {}
        for run in self.runs:
            for r in run.resources:
                total = found.setdefault(
                    r.type_name,
                    TypeTotal(r.type_name, 0, 0, 0, None, 0, high_water_column(r.type_name)),
                )
                total.rows += r.rows
                total.files += r.files
                total.bytes += r.bytes
                total.tombstones += r.tombstones
        for record in self._recorded:
            for recorded in record.files:
                type_name, path = recorded.type_name, recorded.path
                value = self._high_water.get(path)
                if value is not None and (type_name not in newest or value > newest[type_name]):
                    newest[type_name] = value
        for type_name, value in newest.items():
            if type_name in found:
                found[type_name].updated_at_max = iso_exact(value)
        return [found[t] for t in ordered_types(set(found))]

    def _newest(self, paths: list[str], column: str, problems: list[str]) -> datetime | None:
        newest: datetime | None = None
        for relative in paths:
            if relative not in self._high_water:
                found = _high_water_of(self.root, relative, column, problems)
                self._high_water[relative] = found
            value = self._high_water[relative]
            if value is not None and (newest is None or value > newest):
                newest = value
        return newest

    def _tombstones(self, relative: str, problems: list[str]) -> Counter[str]:
        """Ids found gone per type, from a tombstone file's `type` column."""
        if relative not in self._stones:
            counts: Counter[str] = Counter()
            location = self.root.inside(relative)
            if location is None:
                problems.append(_outside(relative))
            else:
                try:
                    table = part_reader(self.root).table(location, ["type"])
                    counts.update(str(v) for v in table.column("type").to_pylist())
                except (OSError, pa.ArrowException, KeyError) as exc:
                    problems.append(
                        f"{relative}: cannot read its tombstones ({type(exc).__name__}); "
                        "run `exporter verify`"
                    )
            self._stones[relative] = counts
        return self._stones[relative]


def _directory(record: RunRecord, type_name: str, files: list[RecordedFile]) -> str:
    """Where a run wrote a type: its files' directory, else where an export puts it."""
    if files:
        return posixpath.dirname(files[0].path)
    try:
        return run_directory(type_name, record.kind, record.run_id)
    except KeyError:
        return type_name


def _partitions(result: ResourceStatus, resource: ResourceState) -> None:
    """The checkpoint's progress of a crawled type: partitions and the id range committed."""
    if not resource.planned:
        return
    result.partitions_total = len(resource.partitions)
    result.partitions_finished = sum(1 for p in resource.partitions if p.finished)
    span = sum(p.high - p.low + 1 for p in resource.partitions)
    done = sum(
        p.high - p.low + 1 if p.finished else max(0, min(p.done_through, p.high) - p.low + 1)
        for p in resource.partitions
    )
    result.id_range_committed = done / span if span else 1.0


def _missing_count(missing: IdSample | None) -> int:
    return int(missing.get("count") or 0) if isinstance(missing, dict) else 0


def _watermark(result: ResourceStatus, watermark: BatchWatermark | None) -> None:
    if watermark is not None:
        result.positions_through = watermark.through
        result.ranges_waiting = len(watermark.waiting)


def _outside(relative: str) -> str:
    return f"{relative}: recorded path points outside the output directory; run `exporter verify`"


def _high_water_of(
    root: Storage, relative: str, column: str, problems: list[str]
) -> datetime | None:
    location = root.inside(relative)
    if location is None:
        problems.append(_outside(relative))
        return None
    try:
        return part_reader(root).newest(location, column)
    except (OSError, pa.ArrowException) as exc:
        problems.append(
            f"{relative}: cannot read its {column} ({type(exc).__name__}); run `exporter verify`"
        )
        return None


def updated_high_water(
    path: Path | str,
    column: str = HIGH_WATER_COLUMN,
    filesystem: pafs.FileSystem | None = None,
) -> datetime | None:
    """The largest value of `column` in a part file (`reader.newest_value`): `path` is on
    `filesystem` (an object store's, say), a local path when none is given."""
    if filesystem is None:
        filesystem, path = pafs.LocalFileSystem(), Path(path).absolute()
    return newest_value(filesystem, str(path), column)


def _uncommitted(root: Storage, named: set[str]) -> list[str]:
    """Part files no checkpoint names: the next export removes them (layout.remove_uncommitted)."""
    return uncommitted(root, named, BACKUP_DIRECTORIES)
