"""The backup's catalog: what an output directory holds of ours (its checkpoint and its manifest), read before anything is decided."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from exporter.backup import checkpoint, manifest
from exporter.backup.checkpoint import RunState
from exporter.backup.storage import Storage
from exporter.core.errors import UsageError


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
