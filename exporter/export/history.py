"""What a directory's earlier runs exported: ids, their newest versions, tombstones; read from committed files.

An incremental run needs three things from the backup it extends, and reads them from the part
files the checkpoint names (never from memory of a previous process):
- which ids each type holds, and which were tombstoned (deletion detection, relationship
  membership: a mailing belongs in the backup when its step does);
- the newest `updatedAt` exported per id, so a record fetched again only because of the overlap
  of the time windows is not written twice ("dedupe at the boundary");
- the ids the backup's steps reference, per related type.
Ids are held in `IdSet`s (8 bytes each); versions only for the records that can be refetched.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

import pyarrow as pa
import pyarrow.compute as pc

from exporter.backup.damage import read_failure
from exporter.backup.reader import part_reader
from exporter.backup.sink import DataFile
from exporter.backup.storage import Storage
from exporter.export.idset import IdSet
from exporter.export.links import Link
from exporter.model.normalize import TOMBSTONE_TYPE
from exporter.model.schema import Kind, resource_type


def _micros(column: pa.ChunkedArray) -> list[int | None]:
    values: list[int | None] = column.cast(pa.int64()).to_pylist()
    return values


@dataclass
class BackupIndex:
    """The live content of a backup: ids per type, minus tombstones; newest versions."""

    ids: dict[str, IdSet] = field(default_factory=dict)
    tombstoned: dict[str, IdSet] = field(default_factory=dict)
    versions: dict[str, dict[int, int]] = field(default_factory=dict)  # id -> updatedAt (us)
    referenced: dict[str, IdSet] = field(default_factory=dict)  # related type -> ids steps name
    # Types with string ids (an auditLog's UUIDs): the ids held, nothing more (a log's records
    # never change, so they have no versions; nothing references them).
    text_ids: dict[str, set[str]] = field(default_factory=dict)

    def live_ids(self, type_name: str) -> list[int]:
        gone = self.tombstoned.get(type_name, IdSet())
        return sorted(i for i in self.ids.get(type_name, IdSet()) if i not in gone)


def load_index(
    storage: Storage,
    files: Iterable[DataFile],
    *,
    version_since: dict[str, int | None],
    links: list[Link],
    root_type: str,
) -> BackupIndex:
    """Read the committed files once: ids, tombstones, per type the versions updated at or after
    `version_since[type]` (microseconds; all of them when None), and what the steps reference."""
    index = BackupIndex()
    for data_file in files:
        try:
            _read_into(index, storage, data_file, version_since, links, root_type)
        except (OSError, ValueError, pa.ArrowException) as exc:
            # A committed file that cannot be read: named, and called damaged only when proved.
            raise read_failure(storage, data_file.path, exc, data_file) from None
    return index


def _read_into(
    index: BackupIndex,
    storage: Storage,
    data_file: DataFile,
    version_since: dict[str, int | None],
    links: list[Link],
    root_type: str,
) -> None:
    """Add what one committed file holds to `index`."""
    reader = part_reader(storage)
    relative = data_file.path
    if data_file.type_name == TOMBSTONE_TYPE:
        table = reader.table(relative, ["type", "id"])
        for type_name, value in zip(
            table.column("type").to_pylist(), table.column("id").to_pylist(), strict=True
        ):
            index.tombstoned.setdefault(type_name, IdSet()).add(value)
        return
    if resource_type(data_file.type_name).id_kind is Kind.STRING:
        held = index.text_ids.setdefault(data_file.type_name, set())
        held.update(str(value) for value in reader.table(relative, ["id"]).column("id").to_pylist())
        return
    schema = reader.footer(relative).schema
    columns = ["id"]
    if "updatedAt" in schema.names:
        columns.append("updatedAt")
    references = [
        link for link in links if data_file.type_name == root_type and link.column is not None
    ]
    columns += [link.column for link in references if link.column and link.column in schema.names]
    table = reader.table(relative, columns)
    ids = table.column("id").to_pylist()
    seen = index.ids.setdefault(data_file.type_name, IdSet())
    for value in ids:
        seen.add(value)
    if "updatedAt" in table.column_names:
        version_since_us = version_since.get(data_file.type_name)
        versions = index.versions.setdefault(data_file.type_name, {})
        for value, stamp in zip(ids, _micros(table.column("updatedAt")), strict=True):
            if stamp is None or (version_since_us is not None and stamp < version_since_us):
                continue
            if versions.get(value, -1) < stamp:
                versions[value] = stamp
    for link in references:
        assert link.column is not None
        column = table.column(link.column)
        if link.many:
            column = pc.list_flatten(column)
        target = index.referenced.setdefault(link.target, IdSet())
        for value in column.drop_null().to_pylist():
            target.add(value)


class SkipKnownVersions:
    """Row selector: drop a record whose exact version (`id`, `updatedAt`) the backup holds.

    With `remember`, a version it lets through counts as held from then on: several fetches of
    one type in a run (a refresh by id, then by step) write each version once."""

    def __init__(self, versions: dict[int, int], *, remember: bool = False) -> None:
        self.versions = versions
        self.remember = remember

    def __call__(self, table: pa.Table) -> list[bool]:
        if (not self.versions and not self.remember) or "updatedAt" not in table.column_names:
            return [True] * table.num_rows
        ids = table.column("id").to_pylist()
        stamps = _micros(table.column("updatedAt"))
        keep = [self.versions.get(i) != t for i, t in zip(ids, stamps, strict=True)]
        if self.remember:
            for value, stamp, kept in zip(ids, stamps, keep, strict=True):
                if kept and stamp is not None:
                    self.versions[value] = stamp
        return keep


class BelongsToBackup:
    """Row selector: keep records that belong in the backup, and of those, only versions the
    backup does not already hold. A record belongs when the backup already holds its id (it is
    kept up to date even once nothing points at it any more: its step deleted, or it moved
    away), or when `column` (`id` for records the steps name, `sequenceStepId` for mailings,
    calls and tasks) is one of `members`."""

    def __init__(
        self, members: IdSet, column: str, versions: dict[int, int], held: IdSet | None = None
    ) -> None:
        self.members = members
        self.column = column
        self.held = held if held is not None else IdSet()
        self.known = SkipKnownVersions(versions)

    def __call__(self, table: pa.Table) -> list[bool]:
        new_version = self.known(table)
        ids = table.column("id").to_pylist()
        owners = table.column(self.column).to_pylist()
        return [
            n and (i in self.held or (o is not None and o in self.members))
            for i, o, n in zip(ids, owners, new_version, strict=True)
        ]
