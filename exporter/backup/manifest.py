"""The manifest: the record of a finished run, written last, that `verify` and an auditor check files against.

`_manifest.json` holds the run id, time window, source (no credentials), tool version, parameters,
and per file its path, rows, bytes, sha256 and Arrow schema; `manifest_sha256` is the SHA-256 of
the canonical JSON (sorted keys, no whitespace) of everything else, so any edit is detectable.
`stats` says how the run went (seconds, requests, retries, whether it resumed, ...), among them
`page_paths`: `{"fast": n, "slow": m}`, the pages of the run read into records by the fast page
reader (`model.fastpage`) and by the slow path, so a page shape that falls to the slow one shows.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from pathlib import Path
from typing import Any, NotRequired, TypedDict, cast

import orjson
import pyarrow as pa

from exporter import __version__
from exporter.backup.checkpoint import HistoryEntry, RunEntry, RunState
from exporter.backup.sink import FileEntry
from exporter.backup.storage import Storage, inside_root
from exporter.core.errors import UsageError
from exporter.model.normalize import arrow_schema

MANIFEST_NAME = "_manifest.json"
FORMAT = "outreach-exporter/manifest"
VERSION = 1


class SchemaField(TypedDict):
    name: str
    type: str  # the Arrow type, as pyarrow prints it
    nullable: bool


class ManifestFile(FileEntry):
    """A part file as the manifest lists it: with the run that wrote it and its Arrow schema."""

    run_id: str
    schema: list[SchemaField]


class ResourceSummary(TypedDict):
    """One type over every run's files; `directory`, `extra_values` and `detail` describe the
    newest run's, for the types it exported."""

    rows: int
    files: int
    directory: NotRequired[str]
    extra_values: NotRequired[int]
    detail: NotRequired[dict[str, Any]]  # the type's stage-specific progress, `needs` left out


class ToolEntry(TypedDict):
    name: str
    version: str


class ManifestDocument(TypedDict):
    """`_manifest.json` as `build` writes it (a manifest read back is untrusted JSON: `load`
    returns it as such, and its readers check what they use)."""

    format: str
    version: int
    run_id: str
    kind: str
    status: str
    started_at: str
    finished_at: str | None
    window_start: str | None
    window_end: str | None
    source: str
    account: dict[str, Any] | None
    tool: ToolEntry
    parameters: dict[str, Any]
    resources: dict[str, ResourceSummary]
    runs: list[RunEntry]  # every run, oldest first, this one last
    files: list[ManifestFile]  # every run's files
    stats: dict[str, Any]
    manifest_sha256: NotRequired[str]  # of everything else (`canonical_digest`)


def schema_fields(schema: pa.Schema) -> list[SchemaField]:
    return [{"name": f.name, "type": str(f.type), "nullable": f.nullable} for f in schema]


def without_files(run: HistoryEntry) -> RunEntry:
    """A history entry as one of the manifest's `runs`: every key but `files`, in the entry's
    own order (the manifest's bytes follow it)."""
    return cast(RunEntry, {k: v for k, v in run.items() if k != "files"})


def canonical_digest(document: Mapping[str, object]) -> str:
    body = {k: v for k, v in document.items() if k != "manifest_sha256"}
    return hashlib.sha256(orjson.dumps(body, option=orjson.OPT_SORT_KEYS)).hexdigest()


def build(state: RunState, stats: dict[str, Any] | None = None) -> ManifestDocument:
    """The manifest of the directory after `state`'s run: every run's files, this run on top.

    A directory holds one full run and any number of incremental ones after it (each in
    `<type>/run=<id>/`, tombstones in `tombstones/run=<id>/`); the manifest lists all their files,
    so `verify` checks the whole backup, and `runs` says which run wrote what."""
    files: list[ManifestFile] = []
    resources: dict[str, ResourceSummary] = {}
    schemas: dict[str, list[SchemaField]] = {}

    def add(entry: FileEntry, run_id: str) -> None:
        type_name = entry["type"]
        fields = schemas.setdefault(type_name, schema_fields(arrow_schema(type_name)))
        files.append({**entry, "run_id": run_id, "schema": fields})
        summary = resources.setdefault(type_name, {"rows": 0, "files": 0})
        summary["rows"] += int(entry["rows"])
        summary["files"] += 1

    runs: list[RunEntry] = []
    for run in state.history:
        for entry in run["files"]:
            add(entry, run["run_id"])
        runs.append(without_files(run))
    for type_name, resource in state.resources.items():
        summary = resources.setdefault(type_name, {"rows": 0, "files": 0})
        summary["directory"] = resource.directory
        summary["extra_values"] = resource.extra_values
        detail = resource.detail.in_manifest()
        if detail:
            summary["detail"] = detail
        for data_file in resource.files:
            add(data_file.to_json(), state.run_id)
    runs.append(without_files(state.summary()))
    document: ManifestDocument = {
        "format": FORMAT,
        "version": VERSION,
        "run_id": state.run_id,
        "kind": state.kind,
        "status": state.status,
        "started_at": state.started_at,
        "finished_at": state.finished_at,
        "window_start": state.window_start,
        "window_end": state.window_end,
        "source": state.source,
        "account": state.account,
        "tool": {"name": "outreach-exporter", "version": __version__},
        "parameters": state.parameters,
        "resources": resources,
        "runs": runs,
        "files": files,
        "stats": stats or {},
    }
    document["manifest_sha256"] = canonical_digest(document)
    return document


def write(
    storage: Storage, state: RunState, stats: dict[str, Any] | None = None
) -> ManifestDocument:
    document = build(state, stats)
    storage.write_atomically(MANIFEST_NAME, orjson.dumps(document, option=orjson.OPT_INDENT_2))
    return document


def load(where: Storage | Path | str) -> dict[str, Any]:
    storage = where if isinstance(where, Storage) else Storage.open(where)
    path = storage.path(MANIFEST_NAME)
    raw = storage.read_document(MANIFEST_NAME)
    if raw is None:
        raise UsageError(f"{path} does not exist: no finished export in {storage}")
    try:
        document = orjson.loads(raw)
    except orjson.JSONDecodeError:
        raise UsageError(f"{path} is not valid JSON") from None
    if not isinstance(document, dict) or document.get("format") != FORMAT:
        raise UsageError(f"{path} is not an outreach-exporter manifest")
    return document


def load_checked(where: Storage | Path | str) -> dict[str, Any]:
    """`load`, refusing a manifest that names a path outside the backup (UsageError naming it):
    for every command that follows the manifest's paths (compact, restore). `verify` and
    `status` read it with `load` and report each such path instead."""
    storage = where if isinstance(where, Storage) else Storage.open(where)
    document = load(storage)
    problem = unsafe_path(document)
    if problem is not None:
        raise UsageError(
            f"{storage.shown(MANIFEST_NAME)} names {problem}, outside the backup: it was edited or "
            "damaged, so it is not followed. Run exporter verify on it, and put back "
            f"{MANIFEST_NAME} from a copy of the backup"
        )
    return document


def unsafe_path(document: dict[str, Any]) -> str | None:
    """The first recorded path that is not a plain path inside the backup (quoted), or None."""
    files = document.get("files")
    if not isinstance(files, list):
        return "no list of files"
    for entry in files:
        path = entry.get("path") if isinstance(entry, dict) else None
        if inside_root(path) is None:
            return f"file {path!r}"
    resources = document.get("resources")
    for resource in (resources if isinstance(resources, dict) else {}).values():
        directory = resource.get("directory") if isinstance(resource, dict) else None
        if directory is not None and inside_root(directory) is None:
            return f"directory {directory!r}"
    return None


def file_path(storage: Storage, entry: dict[str, Any]) -> str:
    """A manifest entry's path, normalised; UsageError when it would leave the backup."""
    relative = inside_root(entry.get("path"))
    if relative is None:
        raise UsageError(
            f"{storage.shown(MANIFEST_NAME)} names file {entry.get('path')!r}, outside the "
            f"backup; run exporter verify on it, and put back {MANIFEST_NAME} from a copy"
        )
    return relative
