"""The backup a restore reads: its manifest and every file it reads checked first, the steps as of a run, the account it came from, the steps selected."""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from exporter.api.account import Account, canonical_base_url
from exporter.backup import manifest
from exporter.backup.compact import current_table
from exporter.backup.storage import Storage
from exporter.core.errors import (
    ExitCode,
    ExporterError,
    OutputError,
    UsageError,
)
from exporter.model.normalize import (
    TOMBSTONE_TYPE,
)
from exporter.restore.fields import STEP, Values, values_of_row


def backup_steps(root: Path | str, run_id: str | None) -> dict[int, Values]:
    """The backup's steps (newest version per id, minus tombstones), as of `run_id` if given,
    read only after every file it reads matched the manifest (`check_backup`)."""
    _document, steps = read_backup(root, run_id)
    return steps


def read_backup(root: Path | str, run_id: str | None) -> tuple[dict[str, Any], dict[int, Values]]:
    """(manifest, steps) of a backup whose manifest and files check out."""
    storage = Storage.open(root, flag="DIR")
    document = manifest.load(storage)
    runs = [str(r.get("run_id")) for r in document.get("runs", []) if isinstance(r, dict)]
    if run_id is not None:
        if run_id not in runs:
            raise UsageError(
                f"{storage.display} holds no run {run_id!r}; its runs are: "
                f"{', '.join(runs) or 'none'}"
            )
        upto = set(runs[: runs.index(run_id) + 1])
        document = {
            **document,
            "files": [
                f
                for f in document.get("files") or []
                if isinstance(f, dict) and f.get("run_id") in upto
            ],
        }
    read = check_backup(storage, document)
    table = current_table(storage, {**document, "files": read}, STEP)
    return document, {int(row["id"]): values_of_row(row) for row in table.to_pylist()}


class BackupDamaged(ExporterError):
    """A file restore would read does not match the manifest (what `verify` reports)."""

    exit_code = ExitCode.VERIFY_MISMATCH


def check_backup(storage: Storage, document: dict[str, Any]) -> list[dict[str, Any]]:
    """The manifest's file entries a restore reads (steps and tombstones), each checked: a
    path inside the backup, and the file's sha256 equal to the manifest's; the manifest's own
    `manifest_sha256` first. `BackupDamaged` (exit 6) naming the first that does not match.

    (A file could still change between this check and its read; this guards a backup at rest,
    tampered or damaged, not one being rewritten while it is restored.)"""
    where = storage.path(manifest.MANIFEST_NAME)
    if document.get("manifest_sha256") != manifest.canonical_digest(document):
        # `document` may be narrowed to a run: check the manifest as it is on disk.
        whole = manifest.load(storage)
        if whole.get("manifest_sha256") != manifest.canonical_digest(whole):
            raise BackupDamaged(
                f"{where} does not match its manifest_sha256 (edited or damaged); restore reads "
                f"nothing from it: run `exporter verify {storage}`"
            )
    entries = document.get("files")
    if not isinstance(entries, list):
        raise BackupDamaged(f"{where} lists no files; run `exporter verify {storage}`")
    read: list[dict[str, Any]] = []
    for entry in entries:
        if not isinstance(entry, dict) or entry.get("type") not in (STEP, TOMBSTONE_TYPE):
            continue
        path, digest = entry.get("path"), entry.get("sha256")
        location = storage.inside(path) if isinstance(path, str) else None
        if location is None or not isinstance(digest, str):
            raise BackupDamaged(
                f"{where} lists a file {path!r} outside the backup or without a sha256; "
                "restore reads nothing from it"
            )
        try:
            actual = storage.sha256(location)
        except FileNotFoundError:
            raise BackupDamaged(
                f"{storage.path(location)} is missing (the manifest lists it): restore reads "
                f"nothing from this backup; run `exporter verify {storage}`"
            ) from None
        except OSError as exc:
            raise OutputError(
                f"cannot read {storage.path(location)}: {exc.strerror or exc}; nothing was restored"
            ) from None
        if actual != digest:
            raise BackupDamaged(
                f"{storage.path(location)} does not match the manifest's sha256 (tampered or "
                f"damaged): restore writes nothing from this backup; run `exporter verify "
                f"{storage}` and restore from an intact copy"
            )
        read.append({**entry, "path": location})
    return read


def backup_account(document: dict[str, Any]) -> Account | None:
    """The account a backup was exported from: its manifest's `account`, else its `source`."""
    recorded = Account.from_json(document.get("account"))
    if recorded is not None:
        return recorded
    source = document.get("source")
    if isinstance(source, str):
        with contextlib.suppress(ValueError):
            return Account(canonical_base_url(source))
    return None


def select_steps(
    backup: dict[int, Values], ids: Sequence[int] | None, sequence: int | None
) -> dict[int, Values]:
    if ids is not None:
        absent = [i for i in ids if i not in backup]
        if absent:
            shown = ", ".join(str(i) for i in absent[:10]) + (" ..." if len(absent) > 10 else "")
            raise UsageError(f"the backup holds no step with id {shown}")
        return {i: backup[i] for i in sorted(set(ids))}
    if sequence is not None:
        chosen = {i: v for i, v in sorted(backup.items()) if v.get("sequence") == sequence}
        if not chosen:
            raise UsageError(f"the backup holds no step of sequence {sequence}")
        return chosen
    return dict(sorted(backup.items()))
