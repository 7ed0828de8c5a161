"""The output seam: what `sink.PartWriter` writes, `reader.PartReader` reads back (footer, table, columns, batches, newest value); compact's whole-file bytes."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from exporter.backup.reader import PartReader, decode_table, part_reader, read_table
from exporter.backup.sink import PartSink, PartWriter, encode_table
from exporter.backup.storage import DamagedFile, Storage

SCHEMA = pa.schema(
    [("id", pa.int64()), ("name", pa.string()), ("updatedAt", pa.timestamp("us", "UTC"))]
)


def _rows(start: int, count: int) -> pa.Table:
    ids = list(range(start, start + count))
    return pa.table(
        {
            "id": ids,
            "name": [f"n{i}" for i in ids],
            "updatedAt": [datetime(2024, 1, 1 + i % 28, tzinfo=UTC) for i in ids],
        },
        schema=SCHEMA,
    )


def _written(tmp_path: Path) -> tuple[Storage, str, pa.Table]:
    storage = Storage.open(tmp_path)
    sink: PartSink = PartWriter(storage, "things", "thing", SCHEMA, "r1", row_group_rows=7)
    table = pa.concat_tables([_rows(1, 10), _rows(11, 15)])
    sink.append(table.slice(0, 10))
    sink.append(table.slice(10))
    committed = sink.roll()
    assert committed is not None and committed.rows == 25
    return storage, committed.path, table


def test_the_reader_reads_back_what_the_sink_wrote(tmp_path: Path) -> None:
    storage, relative, table = _written(tmp_path)
    reader: PartReader = part_reader(storage)
    footer = reader.footer(relative)
    assert footer.rows == 25 and footer.schema.names == SCHEMA.names
    assert reader.table(relative).equals(table)
    assert reader.table(relative, ["id"]).column("id").to_pylist() == list(range(1, 26))
    batches = list(reader.batches(relative, rows=10))
    assert [b.num_rows for b in batches] == [10, 10, 5]
    assert pa.concat_tables(batches).equals(table)
    assert reader.newest(relative, "updatedAt") == max(table.column("updatedAt").to_pylist())
    assert reader.newest(relative, "nothing") is None


def test_the_reader_matches_pyarrow_reading_the_file_itself(tmp_path: Path) -> None:
    storage, relative, _table = _written(tmp_path)
    path = tmp_path / relative
    reader = part_reader(storage)
    assert reader.footer(relative).schema == pq.read_schema(path)
    assert reader.footer(relative).rows == pq.read_metadata(path).num_rows
    assert reader.table(relative, ["id", "name"]).equals(
        pq.read_table(path, columns=["id", "name"])
    )


def test_errors_are_the_formats_own_and_read_table_tells_them_apart(tmp_path: Path) -> None:
    storage = Storage.open(tmp_path)
    (tmp_path / "things").mkdir()
    (tmp_path / "things" / "bad.parquet").write_bytes(b"not parquet at all")
    reader = part_reader(storage)
    with pytest.raises(pa.ArrowException, match="Parquet magic bytes not found"):
        reader.footer("things/bad.parquet")
    with pytest.raises(OSError, match=r"things/gone\.parquet"):
        reader.table("things/gone.parquet")
    with pytest.raises(DamagedFile, match=r"things/bad\.parquet is damaged"):
        read_table(storage, "things/bad.parquet")


def test_whole_file_bytes_are_those_pyarrow_writes_and_read_back() -> None:
    table = _rows(1, 40)
    payload = encode_table(table)
    buffer = pa.BufferOutputStream()
    # compact's published bytes: pyarrow's, zstd, a dictionary on the text column only
    pq.write_table(table, buffer, compression="zstd", use_dictionary=["name"])
    assert payload == buffer.getvalue().to_pybytes()
    assert decode_table(payload).equals(table)
