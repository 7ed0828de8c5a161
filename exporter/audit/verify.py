"""`exporter verify DIR`: recompute every file's size, sha256, rows and schema and compare them with the manifest.

DIR is anything `export --out` takes (a path, `file://...`, `s3://bucket/prefix`): every read goes
through `Storage`, so a local directory and an object-store prefix are checked by the same code.

What is checked, for a finished run (`_manifest.json` present):
1. `manifest_sha256` against the canonical digest of the rest of the manifest (any edit shows);
2. every listed file: it exists inside DIR, and its size, sha256 (streamed, 1 MiB at a time),
   Parquet row count (from the footer) and Arrow schema equal the manifest's;
3. every `*.parquet` file under a type directory that the manifest does not list (a file someone
   added: `read_parquet('DIR/<type>/*.parquet')` would read it too);
4. per resource, the rows found in its files against `resources.<type>.rows`, and its file count.

For an unfinished run (only `_checkpoint.json`) the committed files the checkpoint names are
checked the same way (schemas against the schema this exporter writes).

Files the record does not name, below the backup's directories:
- "uncommitted": exactly what the next `export` removes (`layout.uncommitted`: part and temporary
  files of this exporter's naming where it writes them), listed on their own line, not a
  difference;
- "set aside by --repair" (`<part file>.damaged-<run id>`, `repair.quarantine_name`): not part
  of the backup, kept for inspection; not a difference;
- any other `*.parquet` file is "unlisted": a difference.

A file the store fails to read (a 5xx, a reset, a permission) "cannot be read": that is not a
difference, since nothing was compared, but the backup is not verified either.

Outcome and exit code: 0 everything matches; 6 (`VERIFY_MISMATCH`) anything differs (a damaged
`_checkpoint.json` beside a manifest included: `export` would refuse the backup); 4 (`OUTPUT`)
nothing differs but some files cannot be read (run verify again when the store answers); 1 an
unfinished run whose committed files all match (run `export` again to finish it); 2 DIR holds no
export at all. Reading is streamed: memory stays flat however large the files.
"""

from __future__ import annotations

import errno
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
import pyarrow as pa
import pyarrow.fs as pafs

from exporter.backup import checkpoint, manifest
from exporter.backup.layout import BACKUP_DIRECTORIES, is_ours, uncommitted
from exporter.backup.reader import part_reader
from exporter.backup.sink import PART_NAME
from exporter.backup.storage import Storage
from exporter.core.errors import ExitCode, OutputError, UsageError
from exporter.export.repair import quarantine_name
from exporter.model.normalize import TOMBSTONE_TYPE, arrow_schema
from exporter.model.schema import readable_types, resource_type

_LABELS = {"bytes": "size in bytes", "rows": "row count", "files": "file count"}


@dataclass(frozen=True)
class Difference:
    """One way the directory differs from its record; `subject` is a file path or a record field."""

    subject: str
    what: str  # sha256 | bytes | rows | schema | missing | unlisted | unreadable | manifest_sha256 ...
    expected: Any = None
    found: Any = None
    note: str = ""

    def line(self) -> str:
        if self.note:
            return f"{self.subject}: {self.note}"
        label = _LABELS.get(self.what, self.what)
        if self.subject.startswith("resources."):
            label += {"rows": " (in its readable files)", "files": " (on disk)"}.get(self.what, "")
        return f"{self.subject}: {label} differs: expected {self.expected}, found {self.found}"

    def to_json(self) -> dict[str, Any]:
        return {
            "subject": self.subject,
            "what": self.what,
            "expected": self.expected,
            "found": self.found,
            "message": self.line(),
        }


@dataclass(frozen=True)
class ExpectedFile:
    """A file as the manifest or checkpoint records it."""

    path: str
    type_name: str
    rows: int
    bytes: int
    sha256: str
    schema: Sequence[Mapping[str, Any]] | None  # None: not recorded and not derivable


# Statuses of files the manifest or checkpoint does not name.
NOT_RECORDED = ("unlisted", "uncommitted", "set_aside")


@dataclass
class FileResult:
    path: str
    type_name: str
    status: str  # ok | differs | missing | unreadable, or one of NOT_RECORDED
    rows: int | None = None
    bytes: int | None = None
    sha256: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "path": self.path,
            "type": self.type_name,
            "status": self.status,
            "rows": self.rows,
            "bytes": self.bytes,
            "sha256": self.sha256,
        }


@dataclass
class VerifyReport:
    root: str
    checked_against: str  # "manifest" | "checkpoint"
    run_id: str | None
    run_status: str  # complete | unfinished
    files: list[FileResult] = field(default_factory=list)
    differences: list[Difference] = field(default_factory=list)
    manifest_sha256: str | None = None
    unreadable: list[str] = field(default_factory=list)  # lines: files the store did not serve

    @property
    def ok(self) -> bool:
        return not self.differences and not self.unreadable

    @property
    def exit_code(self) -> ExitCode:
        if self.differences:
            return ExitCode.VERIFY_MISMATCH
        if self.unreadable:
            return ExitCode.OUTPUT
        if self.run_status != "complete":
            return ExitCode.FAILED
        return ExitCode.OK

    @property
    def checked(self) -> list[FileResult]:
        return [f for f in self.files if f.status in ("ok", "differs")]

    def summary(self) -> str:
        listed = [f for f in self.files if f.status not in NOT_RECORDED]
        rows = sum(f.rows or 0 for f in self.checked)
        size = sum(f.bytes or 0 for f in self.checked)
        uncommitted = sum(1 for f in self.files if f.status == "uncommitted")
        if self.differences:
            subjects = {d.subject for d in self.differences}
            unread = f"; {len(self.unreadable)} file(s) cannot be read" if self.unreadable else ""
            return (
                f"MISMATCH: {len(self.differences)} difference(s) in {len(subjects)} item(s); "
                f"run {self.run_id}, {len(listed)} file(s) recorded in {self.checked_against}"
                + unread
            )
        if self.unreadable:
            return (
                f"CANNOT READ: {len(self.unreadable)} of {len(listed)} file(s) recorded in "
                f"{self.checked_against} could not be read, so they are not verified (the rest "
                "match); run verify again once the store answers"
            )
        if self.run_status != "complete":
            extra = f"; {uncommitted} uncommitted file(s) will be removed" if uncommitted else ""
            return (
                f"unfinished run {self.run_id}: {len(listed)} files committed verify OK "
                f"({rows:,} rows, {size:,} bytes){extra}; run export again to finish"
            )
        extra = (
            f"; {uncommitted} uncommitted file(s) are not part of it (the next export removes them)"
            if uncommitted
            else ""
        )
        return (
            f"OK: run {self.run_id}, {len(listed)} files, {rows:,} rows, {size:,} bytes match "
            f"the manifest (manifest_sha256 {self.manifest_sha256}){extra}"
        )

    def to_json(self) -> dict[str, Any]:
        return {
            "directory": self.root,
            "ok": self.ok,
            "exit_code": int(self.exit_code),
            "checked_against": self.checked_against,
            "run_id": self.run_id,
            "run_status": self.run_status,
            "manifest_sha256": self.manifest_sha256,
            "files": [f.to_json() for f in self.files],
            "differences": [d.to_json() for d in self.differences],
            "unreadable": list(self.unreadable),
            "summary": self.summary(),
        }


def verify(where: Storage | Path | str) -> VerifyReport:
    """Check DIR against its manifest, or an unfinished run against its checkpoint."""
    root = where if isinstance(where, Storage) else Storage.open(where, flag="DIR")
    kind = root.root_type()
    if kind == pafs.FileType.NotFound:
        raise UsageError(f"{root} does not exist: no export to verify")
    if kind != pafs.FileType.Directory:
        raise UsageError(f"{root} is not a directory")
    has_manifest = root.exists(manifest.MANIFEST_NAME)
    damaged: str | None = None
    try:
        state = checkpoint.load(root)
    except UsageError as exc:
        if not has_manifest:
            raise
        state = None  # the manifest alone describes the finished runs it lists
        damaged = str(exc)
    if has_manifest and (state is None or state.status == "complete"):
        report = _verify_manifest(root)
        if damaged is not None:  # `export` refuses such a backup: not OK
            report.differences.append(
                Difference(checkpoint.CHECKPOINT_NAME, "checkpoint", note=_damaged_note(damaged))
            )
        return report
    # An unfinished run (the first, or an incremental one after finished runs: the manifest
    # then describes the runs before it): its checkpoint names every committed file, earlier
    # runs' included.
    if state is None:
        raise UsageError(
            f"{root} holds no export: neither {manifest.MANIFEST_NAME} nor "
            f"{checkpoint.CHECKPOINT_NAME} is there"
        )
    report = VerifyReport(
        root=str(root),
        checked_against="checkpoint",
        run_id=state.run_id,
        run_status="complete" if state.status == "complete" else "unfinished",
    )
    if state.status == "complete":
        # run.py saves the finished checkpoint, then writes the manifest: it went missing.
        report.differences.append(
            Difference(
                manifest.MANIFEST_NAME,
                "missing",
                note=f"missing, though the checkpoint says run {state.run_id} finished",
            )
        )
    expected = [
        ExpectedFile(f.path, f.type_name, f.rows, f.bytes, f.sha256, _current_schema(f.type_name))
        for f in state.committed_files()
    ]
    directories = {t: r.directory for t, r in state.resources.items()}
    _unknown_types(expected, report)
    listed = _check_files(root, expected, report)
    _not_recorded(root, directories, listed, report, "not named by the checkpoint (a file added?)")
    return report


def _verify_manifest(root: Storage) -> VerifyReport:
    report = VerifyReport(
        root=str(root), checked_against="manifest", run_id=None, run_status="complete"
    )
    name = manifest.MANIFEST_NAME
    try:
        document = orjson.loads(root.read_document(name) or b"")
    except orjson.JSONDecodeError as exc:
        report.differences.append(Difference(name, "unreadable", note=f"not valid JSON ({exc})"))
        return report
    if not isinstance(document, dict) or document.get("format") != manifest.FORMAT:
        report.differences.append(
            Difference(name, "format", note="not an outreach-exporter manifest")
        )
        return report
    report.run_id = str(document.get("run_id"))
    report.manifest_sha256 = str(document.get("manifest_sha256"))
    recomputed = manifest.canonical_digest(document)
    if document.get("manifest_sha256") != recomputed:
        report.differences.append(
            Difference(name, "manifest_sha256", document.get("manifest_sha256"), recomputed)
        )
    if document.get("version") != manifest.VERSION:
        report.differences.append(
            Difference(name, "version", manifest.VERSION, document.get("version"))
        )
    if document.get("status") != "complete":
        report.differences.append(Difference(name, "status", "complete", document.get("status")))

    resources = document.get("resources")
    resources = resources if isinstance(resources, dict) else {}
    expected: list[ExpectedFile] = []
    for index, entry in enumerate(document.get("files") or []):
        parsed = _expected_from_manifest(entry)
        if parsed is None:
            report.differences.append(
                Difference(f"{name} files[{index}]", "entry", note="not a valid file entry")
            )
            continue
        expected.append(parsed)
    _unknown_types(expected, report)
    listed = _check_files(root, expected, report)

    directories = {
        str(t): str(r.get("directory")) for t, r in resources.items() if isinstance(r, dict)
    }
    _not_recorded(root, directories, listed, report, "not listed in the manifest (a file added?)")

    for type_name, resource in resources.items():
        if not isinstance(resource, dict):
            continue
        mine = [
            f for f in report.files if f.type_name == type_name and f.status not in NOT_RECORDED
        ]
        if any(f.status == "unreadable" for f in mine):
            continue  # its rows cannot be counted: no total to compare
        rows_found = sum(f.rows or 0 for f in mine)
        if resource.get("rows") != rows_found:
            report.differences.append(
                Difference(f"resources.{type_name}", "rows", resource.get("rows"), rows_found)
            )
        present = sum(1 for f in mine if f.status != "missing")
        if resource.get("files") != present:
            report.differences.append(
                Difference(f"resources.{type_name}", "files", resource.get("files"), present)
            )
    return report


def _unknown_types(expected: list[ExpectedFile], report: VerifyReport) -> None:
    """A type the record lists that this version does not know: its files are checked like
    any other, but compact and restore would leave it out, so it is a difference."""
    known = {*readable_types(), TOMBSTONE_TYPE}
    for type_name in sorted({e.type_name for e in expected} - known):
        report.differences.append(
            Difference(
                f"resources.{type_name}",
                "type",
                note=f"type {type_name!r} is not one this exporter knows (written by a newer "
                "version?); compact leaves it out",
            )
        )


def _not_recorded(
    root: Storage, directories: dict[str, str], listed: set[str], report: VerifyReport, note: str
) -> None:
    """The files below the backup's directories that its record does not name:
    - uncommitted: what the next export removes (`layout.uncommitted`, export's own definition:
      part and temporary files of our naming where export writes them). Not a difference;
    - set aside by `export --repair` (`repair.quarantine_name` of a file of ours). Not one either;
    - any other `*.parquet` file: unlisted, a difference (a query over the folder would read it).
    """
    stray = set(uncommitted(root, listed, BACKUP_DIRECTORIES))
    for path, type_name in _parquet_files(root, directories):
        if path in listed:
            continue
        if path in stray:
            report.files.append(FileResult(path, type_name, "uncommitted"))
        elif _set_aside(path):
            report.files.append(FileResult(path, type_name, "set_aside"))
        elif path.endswith(".parquet"):
            report.files.append(FileResult(path, type_name, "unlisted"))
            report.differences.append(Difference(path, "unlisted", note=note))


def _set_aside(path: str) -> bool:
    """Whether `path` is a committed file of ours that `export --repair` renamed aside."""
    original, marker, run_id = path.rpartition(".damaged-")
    return (
        bool(marker)
        and PART_NAME.fullmatch(f"part-{run_id}-00000.parquet") is not None  # a run id
        and is_ours(original)
        and quarantine_name(original, run_id) == path
    )


def _damaged_note(message: str) -> str:
    return f"damaged, so export refuses this backup (its files are checked above): {message}"


def _expected_from_manifest(entry: Any) -> ExpectedFile | None:
    if not isinstance(entry, dict):
        return None
    try:
        schema = entry.get("schema")
        return ExpectedFile(
            path=str(entry["path"]),
            type_name=str(entry["type"]),
            rows=int(entry["rows"]),
            bytes=int(entry["bytes"]),
            sha256=str(entry["sha256"]),
            schema=list(schema) if isinstance(schema, list) else None,
        )
    except (KeyError, TypeError, ValueError):
        return None


def _current_schema(type_name: str) -> list[manifest.SchemaField] | None:
    if type_name not in readable_types():
        return None
    return manifest.schema_fields(arrow_schema(type_name))


def _check_files(root: Storage, expected: list[ExpectedFile], report: VerifyReport) -> set[str]:
    """Check each recorded file; returns the set of recorded paths."""
    listed: set[str] = set()
    for entry in expected:
        listed.add(entry.path)
        before = len(report.differences)
        result = FileResult(entry.path, entry.type_name, "ok")
        report.files.append(result)
        location = root.inside(entry.path)
        if location is None:
            report.differences.append(
                Difference(
                    entry.path, "path", note="recorded path points outside the output directory"
                )
            )
            result.status = "differs"
            continue
        try:
            info = root.fs.get_file_info(root.path(location))
        except OSError as exc:
            _cannot_read(report, result, exc)
            continue
        if info.type == pafs.FileType.Directory:  # a directory where the file was: it differs
            reason = os.strerror(errno.EISDIR)
            report.differences.append(
                Difference(entry.path, "unreadable", note=f"cannot be read: {reason}")
            )
            result.status = "differs"
            continue
        if info.type == pafs.FileType.NotFound:
            report.differences.append(
                Difference(entry.path, "missing", note="missing (listed, not on disk)")
            )
            result.status = "missing"
            continue
        size = int(info.size)
        result.bytes = size
        if size != entry.bytes:
            report.differences.append(Difference(entry.path, "bytes", entry.bytes, size))
        try:
            result.sha256 = root.sha256(location)
        except OutputError as exc:
            _cannot_read(report, result, exc)
            continue
        if result.sha256 != entry.sha256:
            report.differences.append(Difference(entry.path, "sha256", entry.sha256, result.sha256))
        try:
            footer = part_reader(root).footer(location)  # only the footer is fetched
        except OSError as exc:
            _cannot_read(report, result, exc)
            continue
        except (pa.ArrowException, ValueError) as exc:
            reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            report.differences.append(
                Difference(entry.path, "parquet", note=f"not a readable Parquet file ({reason})")
            )
        else:
            result.rows = footer.rows
            if footer.rows != entry.rows:
                report.differences.append(Difference(entry.path, "rows", entry.rows, footer.rows))
            if entry.schema is not None:
                found = manifest.schema_fields(_with_item_names(footer.schema))
                if found != entry.schema:
                    report.differences.append(_schema_difference(entry.path, entry.schema, found))
        if len(report.differences) > before:
            result.status = "differs"
    return listed


def _cannot_read(report: VerifyReport, result: FileResult, exc: Exception) -> None:
    """The store did not serve the file: not a difference (nothing was compared), but not
    verified either (exit 4 when nothing else differs)."""
    result.status = "unreadable"
    result.rows = result.bytes = None
    result.sha256 = None
    if isinstance(exc, OSError):
        reason = _reason(exc)
    else:  # storage_error's text: "cannot read WHERE: WHY; what to do"
        reason = str(exc).split(": ", 1)[-1].split("; ")[0]
    report.unreadable.append(f"{result.path}: cannot be read ({reason}); not verified")


def _with_item_names(schema: pa.Schema) -> pa.Schema:
    """The schema with list items named `item`, as the exporter's Arrow schemas (and manifests) name them.

    Parquet readers name a list's item `element` (the Parquet spec's name); that is the same type,
    so it must not count as a difference.
    """
    return pa.schema([f.with_type(_item_named(f.type)) for f in schema])


def _item_named(data_type: pa.DataType) -> pa.DataType:
    if pa.types.is_list(data_type) or pa.types.is_large_list(data_type):
        value = data_type.value_field
        item = pa.field("item", _item_named(value.type), value.nullable)
        return pa.list_(item) if pa.types.is_list(data_type) else pa.large_list(item)
    if pa.types.is_struct(data_type):
        return pa.struct([f.with_type(_item_named(f.type)) for f in data_type])
    return data_type


def _schema_difference(
    path: str, expected: Sequence[Mapping[str, Any]], found: list[manifest.SchemaField]
) -> Difference:
    """One line naming the columns that differ; the full lists go to the JSON report."""
    want = {str(f.get("name")): f for f in expected if isinstance(f, dict)}
    have = {str(f.get("name")): f for f in found}
    parts = [f"column {n} missing" for n in want if n not in have]
    parts += [f"column {n} added" for n in have if n not in want]
    for n in want.keys() & have.keys():
        w, h = want[n], have[n]
        if w.get("type") != h.get("type"):
            parts.append(f"column {n} type {w.get('type')} expected, {h.get('type')} found")
        if w.get("nullable") != h.get("nullable"):
            parts.append(
                f"column {n} nullable {w.get('nullable')} expected, {h.get('nullable')} found"
            )
    if not parts:
        parts.append("column order differs")
    return Difference(path, "schema", expected, found, note="differs: " + "; ".join(sorted(parts)))


def _reason(exc: OSError) -> str:
    """Why a read failed, in a few words: the OS's text for an errno, else the error's first line."""
    if exc.errno:
        return os.strerror(exc.errno)
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _parquet_files(root: Storage, directories: dict[str, str]) -> list[tuple[str, str]]:
    """Every file under the run's type directories and every known type's directory."""
    by_directory = {resource_type(t).collection: t for t in readable_types()}
    by_directory.update({d: t for t, d in directories.items()})
    found: list[tuple[str, str]] = []
    for directory, type_name in sorted(by_directory.items()):
        folder = root.inside(directory)
        if folder is None or root.file_type(folder) != pafs.FileType.Directory:
            continue
        found += [(relative, type_name) for relative in root.list_files(folder)]
    return found


def render(report: VerifyReport) -> list[str]:
    """The text report: a header, one line per difference, then the summary line."""
    against = (
        manifest.MANIFEST_NAME
        if report.checked_against == "manifest"
        else (f"{checkpoint.CHECKPOINT_NAME} (unfinished run: not in the manifest yet)")
    )
    lines = [f"verifying {report.root} against {against}"]
    lines += [d.line() for d in report.differences]
    lines += report.unreadable
    lines += [
        f"{f.path}: uncommitted (not part of the backup; the next export removes it)"
        for f in report.files
        if f.status == "uncommitted"
    ]
    lines += [
        f"{f.path}: set aside by --repair, not part of the backup"
        for f in report.files
        if f.status == "set_aside"
    ]
    lines.append(report.summary())
    return lines
