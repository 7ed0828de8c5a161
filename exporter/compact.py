"""`exporter compact DIR`: the current state of a backup, the newest version of every live record.

A directory holds a full run and incremental runs after it (`<type>/run=<id>/`), and tombstones
(`tombstones/run=<id>/`). Compacting reads every file the manifest lists and keeps, per type and
id, the row with the newest `updatedAt` (the later run when equal), then drops tombstoned ids.
The result goes to `<into>/<collection>.parquet` (default `DIR/_current/`), each file replaced
in one step (a rename locally, a single PUT on an object store). It holds one type in memory at a time; for backups larger
than memory, the README gives the same query in DuckDB SQL.
"""

from __future__ import annotations

from pathlib import Path

import click
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from exporter import manifest
from exporter.errors import ExporterError, UsageError
from exporter.lock import locked
from exporter.normalize import TOMBSTONE_TYPE, arrow_schema, table_layout
from exporter.schema import RESOURCE_TYPES, resource_type
from exporter.storage import Storage

ROOT_TYPE = "sequenceStep"  # the crawled collection: every one of its records is in a backup


def current_table(
    where: Storage | Path | str, document: dict[str, object], type_name: str
) -> pa.Table:
    """The newest version of every live record of `type_name` in the backup."""
    storage = where if isinstance(where, Storage) else Storage.open(where)
    files = document["files"]
    assert isinstance(files, list)
    runs = [r["run_id"] for r in document["runs"]]  # type: ignore[attr-defined]
    order = {run_id: i for i, run_id in enumerate(runs)}
    schema = arrow_schema(type_name)
    tables = []
    tombstoned: list[int] = []
    for entry in files:
        if entry["type"] == TOMBSTONE_TYPE:
            stones = pq.read_table(
                storage.path(entry["path"]), columns=["type", "id"], filesystem=storage.fs
            )
            mask = pc.equal(stones.column("type"), type_name)
            tombstoned.extend(stones.filter(mask).column("id").to_pylist())
        elif entry["type"] == type_name:
            table = pq.read_table(storage.path(entry["path"]), filesystem=storage.fs).cast(schema)
            rank = pa.array([order.get(entry["run_id"], -1)] * table.num_rows, pa.int32())
            tables.append(table.append_column("_run", rank))
    if not tables:
        return schema.empty_table()
    table = pa.concat_tables(tables)
    keys = [("id", "ascending")]
    if "updatedAt" in table.column_names:
        keys.append(("updatedAt", "descending"))
    keys.append(("_run", "descending"))
    table = table.sort_by(keys)  # null updatedAt sorts last
    ids = table.column("id").combine_chunks()
    first = (
        pc.not_equal(ids.slice(1), ids.slice(0, len(ids) - 1))
        if len(ids) > 1
        else pa.array([], pa.bool_())
    )
    keep = (
        pa.concat_arrays([pa.array([True]), first.fill_null(True)])
        if len(ids)
        else pa.array([], pa.bool_())
    )
    if tombstoned:
        keep = pc.and_(keep, pc.invert(pc.is_in(ids, value_set=pa.array(tombstoned, pa.int64()))))
    return table.filter(keep).drop_columns(["_run"])


def inverse_columns(type_name: str) -> list[tuple[str, str]]:
    """(list column on `type_name`, the steps' column pointing back at it) for each to-many
    relationship of `type_name` whose records are sequence steps: a sequence's
    `sequenceStepIds` is the steps whose `sequenceId` is that sequence."""
    steps = table_layout(ROOT_TYPE)
    found = []
    for column in table_layout(type_name).to_many:
        if column.relationship.target != ROOT_TYPE:
            continue
        back = [c.column for c in steps.to_one if c.relationship.target == type_name]
        if len(back) == 1:
            found.append((column.column, back[0]))
    return found


def with_inverse_lists(table: pa.Table, type_name: str, steps: pa.Table) -> pa.Table:
    """`table` with its lists of steps derived from the current steps (ids ascending).

    The API gives such a list as of the record's last fetch, and an incremental run cannot see it
    change when a step comes or goes without the record's `updatedAt` moving. Every step is in
    the backup, so the owning side, each step's to-one column, says it exactly."""
    for list_column, back in inverse_columns(type_name):
        if list_column not in table.column_names or back not in steps.column_names:
            continue
        members: dict[int, list[int]] = {}
        for step_id, owner in zip(
            steps.column("id").to_pylist(), steps.column(back).to_pylist(), strict=True
        ):
            if owner is not None:
                members.setdefault(owner, []).append(step_id)
        values = [sorted(members.get(i, [])) for i in table.column("id").to_pylist()]
        index = table.column_names.index(list_column)
        field = table.schema.field(index)
        table = table.set_column(index, field, pa.array(values, field.type))
    return table


def compact(
    where: Storage | Path | str, into: Storage | Path | str | None = None
) -> dict[str, int]:
    """Write `<into>/<collection>.parquet` per type (default `DIR/_current/`); rows of each."""
    storage = where if isinstance(where, Storage) else Storage.open(where, flag="DIR")
    manifest.load(storage)  # a clear error for a directory that holds no finished backup
    if into is None:  # writes into the backup: not while an export writes there
        with locked(storage, "compact"):
            return _compact(storage, None)
    return _compact(storage, into)


def _compact(storage: Storage, into: Storage | Path | str | None) -> dict[str, int]:
    document = manifest.load(storage)  # read under the lock: the newest finished run
    if into is None:
        target, prefix = storage, "_current/"
    else:
        target = into if isinstance(into, Storage) else Storage.open(into, flag="--into")
        prefix = ""
    present = {entry["type"] for entry in document["files"]}
    rows: dict[str, int] = {}
    steps: pa.Table | None = None
    for type_name in RESOURCE_TYPES:
        if type_name not in present:
            continue
        table = current_table(storage, document, type_name)
        if type_name == ROOT_TYPE:
            steps = table
        elif steps is not None:
            table = with_inverse_lists(table, type_name, steps)
        buffer = pa.BufferOutputStream()
        pq.write_table(table, buffer, compression="zstd")
        relative = f"{prefix}{resource_type(type_name).collection}.parquet"
        target.write_atomically(relative, buffer.getvalue().to_pybytes())
        rows[type_name] = table.num_rows
    return rows


@click.command("compact")
@click.argument("directory")
@click.option(
    "--into",
    help="Where to write <collection>.parquet files.  [default: DIR/_current]",
)
def compact_command(directory: str, into: str | None) -> None:
    """Write the newest version of every live record of a backup (full run, deltas, tombstones)."""
    try:
        if not Storage.open(directory, flag="DIR").exists(manifest.MANIFEST_NAME):
            raise UsageError(f"{directory} holds no finished export to compact")
        rows = compact(directory, into)
    except ExporterError as exc:
        click.echo(f"error: {exc}", err=True)
        raise SystemExit(int(exc.exit_code)) from None
    where = into or f"{directory.rstrip('/')}/_current"
    for type_name, count in rows.items():
        click.echo(f"{resource_type(type_name).collection}: {count:,} current records")
    click.echo(f"wrote {where}")
