"""What a backup directory holds and which of its files are ours: the type directories, part files of our naming, and what a run may delete."""

from __future__ import annotations

import contextlib
import secrets
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from exporter.backup import checkpoint, manifest
from exporter.backup.checkpoint import RunState
from exporter.backup.sink import part_run_id
from exporter.backup.storage import OpenFile, Storage, inside_root
from exporter.model.normalize import TOMBSTONE_TYPE
from exporter.model.schema import readable_types, resource_type


def new_run_id() -> str:
    return datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ") + "-" + secrets.token_hex(3)


TOMBSTONE_DIRECTORY = "tombstones"


# Every directory an export may write into: each readable type's collection (whatever this run
# or an earlier one selected; the nine step-world types first), tombstones last. Below them only
# files of our exact naming (`sink.PART_NAME`) are ours: a user's `prospects/notes.csv` beside a
# steps-only backup is never listed, moved or deleted.
BACKUP_DIRECTORIES = [
    *(resource_type(t).collection for t in readable_types()),
    TOMBSTONE_DIRECTORY,
]


def run_directory(type_name: str, kind: str, run_id: str) -> str:
    """Where run `run_id` of `kind` (full | incremental) writes a type: the type's collection,
    in `run=<id>/` for an incremental run; tombstones always in `tombstones/run=<id>/`.
    KeyError for a type the schema does not know."""
    if type_name == TOMBSTONE_TYPE:
        return f"{TOMBSTONE_DIRECTORY}/run={run_id}"
    collection = resource_type(type_name).collection
    return collection + (f"/run={run_id}" if kind == "incremental" else "")


def is_ours(relative: str) -> bool:
    """A part file or a temporary one of our naming (`sink.part_run_id`), where an export puts
    them: in one of our type directories (tombstones: only in a `run=<id>/`). Nothing else is ours."""
    parts = relative.split("/")
    if parts[0] not in BACKUP_DIRECTORIES or part_run_id(relative) is None:
        return False
    return parts[0] != TOMBSTONE_DIRECTORY or len(parts) == 3


def uncommitted(storage: Storage, named: set[str], directories: list[str]) -> list[str]:
    """Part files of our naming below our directories that `named` (every file a checkpoint
    names, earlier runs' included) does not hold: uploads completed but never committed, and
    temporary files. Files of any other name stay, whoever wrote them."""
    return [
        relative
        for directory in directories
        for relative in storage.list_files(directory)
        if is_ours(relative) and relative not in named
    ]


class ClaimingStorage(Storage):
    """The writer's view of a backup it starts: `claim` runs once, before the first data file
    is opened (a file is opened when its first row group is written, at the latest when it is
    committed)."""

    def __init__(self, storage: Storage, claim: Callable[[], None]) -> None:
        # The same root as `storage`, whatever it holds (not its constructor's arguments).
        self.__dict__.update(storage.__dict__)
        self._claim: Callable[[], None] | None = claim

    def open_data(self, relative: str) -> OpenFile:
        claim, self._claim = self._claim, None
        if claim is not None:
            claim()
        return super().open_data(relative)


def safe_named(relative: str) -> bool:
    """A path a state file names that we may move or delete: inside the root (as
    `Storage.inside` has it), of our naming."""
    return inside_root(relative) == relative and is_ours(relative)


def remove_uncommitted(storage: Storage, state: RunState | None, directories: list[str]) -> int:
    """Delete the `uncommitted` files of a folder holding `state` (our checkpoint); returns the
    count. Without a checkpoint nothing proves a file ours, so nothing is deleted."""
    if state is None:
        return 0
    named = {f.path for f in state.committed_files()}
    found = uncommitted(storage, named, directories)
    for relative in found:
        storage.delete(relative)
    return len(found)


def discard_run(
    storage: Storage,
    state: RunState | None,
    document: dict[str, Any] | None,
    directories: list[str],
) -> int:
    """`--restart` in a folder holding our checkpoint or manifest (the caller checks): delete the
    part files they name (every run's) and every other part file of our naming below our
    directories, then the checkpoint and the manifest, then the directories left empty.
    A named path that is not of our naming where we write is not deleted (a tampered state
    file must not make us delete a user's file). Returns how many data files were deleted."""
    named: set[str] = set()
    if state is not None:
        named.update(f.path for f in state.committed_files())
    if document is not None and isinstance(document.get("files"), list):
        named.update(
            str(f["path"]) for f in document["files"] if isinstance(f, dict) and "path" in f
        )
    ours = {p for p in named if safe_named(p)}
    ours.update(uncommitted(storage, set(), directories))
    for relative in sorted(ours):
        storage.delete(relative)
    for name in (checkpoint.CHECKPOINT_NAME, manifest.MANIFEST_NAME):
        storage.delete(name)
    for directory in directories:
        remove_empty_directories(storage, directory)
    return len(ours)


def remove_empty_directories(storage: Storage, directory: str) -> None:
    """Remove `directory` and its subdirectories, deepest first, where they are empty (local
    only: an object store has no directories to leave behind)."""
    if not storage.local:
        return
    root = Path(storage.path(directory))
    if not root.is_dir():
        return
    for sub in sorted((p for p in root.rglob("*") if p.is_dir()), key=lambda p: -len(p.parts)):
        with contextlib.suppress(OSError):
            sub.rmdir()  # fails, and is meant to, when anything is left inside
    with contextlib.suppress(OSError):
        root.rmdir()
