"""Part files dictionary-encode the top-level text columns, where values repeat, and nothing else."""

from __future__ import annotations

import io
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from exporter.backup.sink import PartWriter, encode_table
from exporter.backup.storage import Storage

SCHEMA = pa.schema(
    [
        ("id", pa.int64()),
        ("state", pa.string()),
        ("active", pa.bool_()),
        ("createdAt", pa.timestamp("us", tz="UTC")),
        ("score", pa.float64()),
        ("tags", pa.list_(pa.string())),
    ]
)


def table(rows: int) -> pa.Table:
    return pa.table(
        {
            "id": list(range(rows)),
            "state": ["active", "paused"] * (rows // 2),
            "active": [True, False] * (rows // 2),
            "createdAt": [1_700_000_000_000_000 + i for i in range(rows)],
            "score": [i / 3 for i in range(rows)],
            "tags": [["a"]] * rows,
        },
        schema=SCHEMA,
    )


def dictionary_pages(metadata: pq.FileMetaData) -> dict[str, bool]:
    """Per column chunk of the first row group: does it carry a dictionary page?"""
    group = metadata.row_group(0)
    return {
        group.column(i).path_in_schema: group.column(i).has_dictionary_page
        for i in range(group.num_columns)
    }


EXPECTED = {
    "id": False,
    "state": True,
    "active": False,
    "createdAt": False,
    "score": False,
    "tags.list.element": False,
}


def test_part_files_dictionary_encode_only_text(tmp_path: Path) -> None:
    """Bug caught: `use_dictionary=True` put back on every column (ids and timestamps paid for a
    dictionary that never repeats), or `False` (text lost the encoding readers exploit)."""
    writer = PartWriter(
        Storage.open(tmp_path), "things", "thing", SCHEMA, "20240101T000000Z-abcdef"
    )
    written = table(200)
    writer.append(written)
    committed = writer.roll()
    assert committed is not None
    path = tmp_path / committed.path
    assert dictionary_pages(pq.read_metadata(path)) == EXPECTED
    assert pq.read_table(path).equals(written)


def test_compacted_files_encode_the_same_way() -> None:
    """`encode_table` (compact's whole-file writer) follows the same rule as part files."""
    written = table(200)
    payload = encode_table(written)
    assert dictionary_pages(pq.read_metadata(io.BytesIO(payload))) == EXPECTED
    assert pq.read_table(io.BytesIO(payload)).equals(written)
