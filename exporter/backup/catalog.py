"""The backup's catalog: what an output directory holds of ours (its checkpoint and its manifest) and the runs they record.

The entries themselves are typed where they are written: `sink.FileEntry` (a part file),
`checkpoint.RunEntry` and `HistoryEntry` (a finished run), `manifest.ManifestDocument`. Read
back they are documents from disk, so the records here are built leniently from them: `Found`
is what `export`'s plan (`export.plan`) and `status` start from, `recorded_runs` the runs
`status` lists.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

from exporter.backup import checkpoint, manifest
from exporter.backup.checkpoint import RunState
from exporter.backup.storage import Storage
from exporter.core.errors import UsageError
from exporter.model.normalize import TOMBSTONE_TYPE
from exporter.model.schema import readable_types

_Document = TypeVar("_Document")


@dataclass(frozen=True)
class Found:
    """What `--out` holds of ours, as read before anything is decided."""

    checkpoint_present: bool
    manifest_present: bool
    state: RunState | None = None
    unreadable: UsageError | None = None  # why the checkpoint could not be read
    document: dict[str, Any] | None = None  # the manifest, when it could be read (unchecked)
    manifest_unreadable: UsageError | None = None  # why the manifest could not be read


def read(storage: Storage) -> Found:
    """What the folder holds of ours (nothing is changed)."""
    checkpoint_present = storage.exists(checkpoint.CHECKPOINT_NAME)
    manifest_present = storage.exists(manifest.MANIFEST_NAME)
    state, unreadable = _load(checkpoint.load, storage) if checkpoint_present else (None, None)
    document, manifest_unreadable = (
        _load(manifest.load, storage) if manifest_present else (None, None)
    )
    return Found(
        checkpoint_present, manifest_present, state, unreadable, document, manifest_unreadable
    )


def _load(
    load: Callable[[Storage], _Document], storage: Storage
) -> tuple[_Document | None, UsageError | None]:
    """What `load` reads, or why it cannot."""
    try:
        return load(storage), None
    except UsageError as exc:
        return None, exc


@dataclass(frozen=True)
class RecordedFile:
    """A file as a run's record lists it, read leniently (a record from an older release, or
    a damaged manifest, still says what it can): what `status` counts."""

    path: str
    type_name: str
    rows: int
    bytes: int

    @classmethod
    def from_entry(cls, entry: Mapping[str, Any]) -> RecordedFile:
        """From a checkpoint's or a manifest's file entry (`FileEntry`, `ManifestFile`)."""
        return cls(
            path=str(entry.get("path")),
            type_name=str(entry.get("type")),
            rows=int(entry.get("rows") or 0),
            bytes=int(entry.get("bytes") or 0),
        )


@dataclass
class RunRecord:
    """A run as one document records it: its times, window, the types it exported, its files."""

    run_id: str
    kind: str
    complete: bool
    recorded_in: str  # manifest | checkpoint
    started_at: str | None
    finished_at: str | None
    window_start: str | None
    window_end: str | None
    types: list[str]
    files: list[RecordedFile]
    parameters: dict[str, Any] = field(default_factory=dict)  # older backups did not record them
    tool_version: str | None = None


def ordered_types(types: set[str]) -> list[str]:
    """The crawled collection first, then related types as the schema lists them, tombstones last."""
    known = {name: i for i, name in enumerate(readable_types())}
    return sorted(types, key=lambda t: (t == TOMBSTONE_TYPE, known.get(t, len(known)), t))


def recorded_runs(found: Found) -> tuple[list[RunRecord], list[str]]:
    """Every run recorded in the folder, oldest first, and what the records disagree on.

    The checkpoint says which runs there are (it is the commit point): its `history` and its
    own run, each as the manifest records it where it does; without a checkpoint, the
    manifest's runs. A record's files are read only once it is chosen."""
    document, state = found.document, found.state
    problems: list[str] = []
    from_manifest = _manifest_entries(document) if document is not None else []
    if state is None:
        return [_record(*run, "manifest") for run in from_manifest], problems
    recorded = {str(run[0].get("run_id")): run for run in from_manifest}
    records = []
    for entry, files, complete in _checkpoint_entries(state):
        chosen = recorded.pop(str(entry.get("run_id")), None)
        if chosen is not None:
            records.append(_record(*chosen, "manifest"))
        else:
            records.append(_record(entry, files, complete, "checkpoint"))
    if document is None:
        if state.status == "complete" and not found.manifest_present:
            problems.append(
                f"{manifest.MANIFEST_NAME} is missing though the checkpoint says the run "
                "finished; run `exporter verify`"
            )
    elif state.status == "complete" and str(document.get("run_id")) != state.run_id:
        problems.append(
            f"{manifest.MANIFEST_NAME} records run {document.get('run_id')}, not run "
            f"{state.run_id}, which the checkpoint says finished; run `exporter verify`"
        )
    if recorded:
        problems.append(
            f"{manifest.MANIFEST_NAME} records run(s) {', '.join(recorded)} that "
            f"{checkpoint.CHECKPOINT_NAME} does not; run `exporter verify`"
        )
    return records, problems


# A run as one document lists it: its entry, its files' entries, and whether it finished.
_Listed = tuple[Mapping[str, Any], Sequence[Mapping[str, Any]], bool]


def _record(
    entry: Mapping[str, Any],
    entries: Sequence[Mapping[str, Any]],
    complete: bool,
    recorded_in: str,
) -> RunRecord:
    files = [RecordedFile.from_entry(f) for f in entries]
    rows = entry.get("rows")
    types = {str(t) for t in rows} if isinstance(rows, dict) else set()
    types |= {f.type_name for f in files}
    return RunRecord(
        run_id=str(entry.get("run_id")),
        kind=str(entry.get("kind") or "full"),
        complete=complete,
        recorded_in=recorded_in,
        started_at=entry.get("started_at"),
        finished_at=entry.get("finished_at"),
        window_start=entry.get("window_start"),
        window_end=entry.get("window_end"),
        types=ordered_types(types),
        files=files,
        parameters=dict(entry.get("parameters") or {}),
        tool_version=entry.get("tool_version"),
    )


def _manifest_entries(document: dict[str, Any]) -> list[_Listed]:
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
    return [(r, by_run.get(str(r.get("run_id")), []), True) for r in runs]


def _checkpoint_entries(state: RunState) -> list[_Listed]:
    """The checkpoint's finished runs (`history`) and its own, finished or not."""
    runs: list[_Listed] = [
        (r, [f for f in r.get("files") or [] if isinstance(f, dict)], True)
        for r in state.history
        if isinstance(r, dict)
    ]
    files = [f.to_json() for r in state.resources.values() for f in r.files]
    return [*runs, (state.summary(), files, state.status == "complete")]
