"""Reading part files back: the one module that reads Parquet (`sink` is the one that writes it)."""

from __future__ import annotations

from datetime import datetime

import pyarrow.compute as pc
import pyarrow.parquet as pq


def _max_of(parquet: pq.ParquetFile, column: str) -> datetime | None:
    """`updated_high_water` on an open file: statistics first, the column itself if need be."""
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
