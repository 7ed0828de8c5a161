"""The backup's catalog: what an output directory holds of ours (its checkpoint and its manifest), read before anything is decided."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from exporter.backup import checkpoint, manifest
from exporter.backup.checkpoint import RunState
from exporter.backup.storage import Storage
from exporter.core.errors import UsageError
from exporter.model.normalize import TOMBSTONE_TYPE
from exporter.model.schema import RESOURCE_TYPES


@dataclass
class Found:
    """What `--out` holds of ours, as read before anything is decided."""

    checkpoint_present: bool
    manifest_present: bool
    state: RunState | None = None
    unreadable: UsageError | None = None  # why the checkpoint could not be read
    document: dict[str, Any] | None = None  # the manifest, when it could be read
    manifest_unreadable: UsageError | None = None  # why the manifest could not be read


def read(storage: Storage) -> Found:
    """What the folder holds of ours (nothing is changed)."""
    found = Found(
        checkpoint_present=storage.exists(checkpoint.CHECKPOINT_NAME),
        manifest_present=storage.exists(manifest.MANIFEST_NAME),
    )
    if found.checkpoint_present:
        try:
            found.state = checkpoint.load(storage)
        except UsageError as exc:
            found.unreadable = exc
    if found.manifest_present:
        try:
            found.document = manifest.load(storage)
        except UsageError as exc:
            found.manifest_unreadable = exc
    return found


@dataclass
class _Record:
    """A run as one document records it: its times, window, the types it exported, its files."""

    run_id: str
    kind: str
    complete: bool
    recorded_in: str
    started_at: str | None
    finished_at: str | None
    window_start: str | None
    window_end: str | None
    types: list[str]
    files: list[dict[str, Any]]  # path, type, rows, bytes (as the manifest and checkpoint list)
    parameters: dict[str, Any] = field(default_factory=dict)  # older backups did not record them
    tool_version: str | None = None


def _order(types: set[str]) -> list[str]:
    """The crawled collection first, then related types as the schema lists them, tombstones last."""
    known = {name: i for i, name in enumerate(RESOURCE_TYPES)}
    return sorted(types, key=lambda t: (t == TOMBSTONE_TYPE, known.get(t, len(known)), t))


def _record(
    entry: dict[str, Any], files: list[dict[str, Any]], complete: bool, recorded_in: str
) -> _Record:
    rows = entry.get("rows")
    types = {str(t) for t in rows} if isinstance(rows, dict) else set()
    types |= {str(f.get("type")) for f in files}
    return _Record(
        run_id=str(entry.get("run_id")),
        kind=str(entry.get("kind") or "full"),
        complete=complete,
        recorded_in=recorded_in,
        started_at=entry.get("started_at"),
        finished_at=entry.get("finished_at"),
        window_start=entry.get("window_start"),
        window_end=entry.get("window_end"),
        types=_order(types),
        files=files,
        parameters=dict(entry.get("parameters") or {}),
        tool_version=entry.get("tool_version"),
    )


def _manifest_records(document: dict[str, Any]) -> list[_Record]:
    """The manifest's runs, oldest first, each with the files its `run_id` names."""
    top = str(document.get("run_id"))
    by_run: dict[str, list[dict[str, Any]]] = {}
    for entry in document.get("files") or []:
        if isinstance(entry, dict):
            by_run.setdefault(str(entry.get("run_id") or top), []).append(entry)
    runs = [r for r in document.get("runs") or [] if isinstance(r, dict)]
    if not runs:  # a manifest without a run history: one run, every file its own
        resources = document.get("resources") or {}
        runs = [{**document, "rows": {str(t): 0 for t in resources}}]
    return [_record(r, by_run.get(str(r.get("run_id")), []), True, "manifest") for r in runs]


def _checkpoint_records(state: RunState) -> list[_Record]:
    """The checkpoint's finished runs (`history`) and its own, finished or not."""
    records = [
        _record(r, [f for f in r.get("files") or [] if isinstance(f, dict)], True, "checkpoint")
        for r in state.history
        if isinstance(r, dict)
    ]
    files = [f.to_json() for r in state.resources.values() for f in r.files]
    own = _record(state.summary(), files, state.status == "complete", "checkpoint")
    return [*records, own]
