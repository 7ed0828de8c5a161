"""Reading part files back: a file's footer (rows, schema), its table or some columns, its batches, a column's newest value.

Every reader of a backup's data files (the resumed walk, the index of an incremental run,
compact, verify, status) goes through a `PartReader`, got from `part_reader(storage)`: the one
place that decides the files' format. That format is Parquet, and this is the one module that
reads it (`sink` is the one that writes it).

Errors are the format's own, untranslated: OSError when the store fails, pyarrow's
ArrowException or ValueError when the bytes are not a readable file. Each caller says what that
means where it knows which file it was reading and why (`damage.read_failure`, verify's
differences, status's problems); `read_table` is the plain translation.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from typing import Protocol

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from exporter.backup.storage import DamagedFile, Storage, storage_error

BATCH_ROWS = 50_000  # rows per batch of `PartReader.batches`


@dataclass(frozen=True)
class PartFooter:
    """What a part file says about itself without its data being read."""

    rows: int
    schema: pa.Schema


class PartReader(Protocol):
    """Reads the part files below one backup root, by their paths relative to it."""

    def footer(self, relative: str) -> PartFooter:
        """Row count and Arrow schema, from one read of the footer."""
        ...

    def table(self, relative: str, columns: list[str] | None = None) -> pa.Table:
        """The whole file, or only `columns`."""
        ...

    def batches(self, relative: str, rows: int = BATCH_ROWS) -> Iterator[pa.Table]:
        """The whole file, `rows` at a time (memory stays flat however large the file)."""
        ...

    def newest(self, relative: str, column: str) -> datetime | None:
        """The largest timestamp in `column` (None when it has none, or no such column)."""
        ...


class ParquetReader:
    """`PartReader` for the Parquet part files `sink.PartWriter` writes."""

    def __init__(self, storage: Storage) -> None:
        self.storage = storage

    def footer(self, relative: str) -> PartFooter:
        storage = self.storage
        with storage.fs.open_input_file(storage.path(relative)) as handle:
            parquet = pq.ParquetFile(handle)
            metadata = parquet.metadata
            schema = parquet.schema_arrow
        return PartFooter(metadata.num_rows, schema)

    def table(self, relative: str, columns: list[str] | None = None) -> pa.Table:
        storage = self.storage
        return pq.read_table(storage.path(relative), columns=columns, filesystem=storage.fs)

    def batches(self, relative: str, rows: int = BATCH_ROWS) -> Iterator[pa.Table]:
        storage = self.storage
        parquet = pq.ParquetFile(storage.fs.open_input_file(storage.path(relative)))
        for batch in parquet.iter_batches(batch_size=rows):
            yield pa.Table.from_batches([batch])

    def newest(self, relative: str, column: str) -> datetime | None:
        return newest_value(self.storage.fs, self.storage.path(relative), column)


def part_reader(storage: Storage) -> PartReader:
    """The reader of the part files below `storage`."""
    return ParquetReader(storage)


def read_table(storage: Storage, relative: str, columns: list[str] | None = None) -> pa.Table:
    """A committed part file, whole (or some columns).

    OutputError (exit 4) when the store fails to answer (a 5xx, a reset: run again later);
    DamagedFile when the bytes are there but are not the Parquet file they should be."""
    storage._check_root()
    try:
        return part_reader(storage).table(relative, columns)
    except OSError as exc:
        raise storage_error("read", storage.shown(relative), exc) from None
    except (pa.ArrowInvalid, pa.ArrowException, ValueError) as exc:
        raise DamagedFile(storage.shown(relative), exc) from None


def decode_table(payload: bytes) -> pa.Table:
    """A whole file from its bytes (`compact`'s published files, read from the bytes it hashed)."""
    return pq.read_table(pa.BufferReader(payload))


def newest_value(filesystem: pafs.FileSystem, path: str, column: str) -> datetime | None:
    """`PartReader.newest` of the file at `path` on `filesystem`: row-group statistics, else a
    column scan. Only the footer is read when every row group carries statistics; otherwise
    the one column is streamed batch by batch, so memory stays flat either way."""
    with filesystem.open_input_file(path) as handle:
        return _max_of(pq.ParquetFile(handle), column)


def _max_of(parquet: pq.ParquetFile, column: str) -> datetime | None:
    """`newest_value` on an open file: statistics first, the column itself if need be."""
    metadata = parquet.metadata
    names = [metadata.schema.column(i).path for i in range(metadata.num_columns)]
    if column not in names:
        return None
    index = names.index(column)
    newest: datetime | None = None
    for group in range(metadata.num_row_groups):
        chunk = metadata.row_group(group).column(index)
        stats = chunk.statistics
        if stats is None or not stats.has_min_max:
            if stats is not None and stats.null_count == chunk.num_values:
                continue  # an all-null row group has no maximum
            return _scan_max(parquet, column)
        value = stats.max
        if not isinstance(value, datetime):
            return _scan_max(parquet, column)
        if newest is None or value > newest:
            newest = value
    return newest


def _scan_max(parquet: pq.ParquetFile, column: str) -> datetime | None:
    newest: datetime | None = None
    for batch in parquet.iter_batches(batch_size=65_536, columns=[column]):
        value = pc.max(batch.column(0)).as_py()
        if isinstance(value, datetime) and (newest is None or value > newest):
            newest = value
    return newest
