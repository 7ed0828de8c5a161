"""The writer's memory across types: every part writer's buffered rows together stay within `buffer_bytes`, and rows written early as extra row groups are all read back (issue 16, item 4)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from exporter.backup.checkpoint import ResourceState, RunState
from exporter.backup.storage import Storage
from exporter.export.crawl import Message, PageBatch
from exporter.export.writer import CommitPolicy, Writer
from exporter.model.normalize import arrow_schema

TYPES = ("sequenceStep", "mailing", "prospect")
ROUNDS = 12
ROWS = 300  # per batch


def batch(type_name: str, round_: int) -> PageBatch:
    """ROWS records of `type_name` with only their id (every other column null)."""
    ids = range(round_ * ROWS + 1, (round_ + 1) * ROWS + 1)
    table = pa.Table.from_pylist([{"id": i} for i in ids], schema=arrow_schema(type_name))
    return PageBatch(type_name, table, None, 0, False, 0, credit=False)


async def test_buffers_of_all_types_stay_within_the_budget(tmp_path: Path) -> None:
    """Bug caught: each type's writer holding its rows until its own row group fills
    (`row_group_rows` here is never reached), so three types hold 36 batches at once."""
    storage = Storage.open(tmp_path)
    run_id = "20240101T000000Z-abcdef"
    state = RunState(run_id, "2024-01-01T00:00:00Z", "test", {})
    for type_name in TYPES:
        state.resources[type_name] = ResourceState(type_name, type_name, planned=True)
    largest = max(batch(t, 0).table.nbytes for t in TYPES)
    budget = int(2.5 * largest)
    policy = CommitPolicy(commit_interval=3600.0, row_group_rows=10**9, buffer_bytes=budget)
    inbox: asyncio.Queue[Message | None] = asyncio.Queue()
    writer = Writer(storage, state, inbox, asyncio.Semaphore(1), policy)
    # Arrow's pool is one that returns freed memory (jemalloc without decay, or the system's).
    assert pa.default_memory_pool().backend_name in ("jemalloc", "system")

    held = []
    for round_ in range(ROUNDS):
        for type_name in TYPES:
            await writer.apply(batch(type_name, round_))
            held.append(writer.buffered_bytes)
    assert max(held) <= budget
    assert sum(b.table.nbytes for b in map(batch, TYPES, [0] * 3)) * ROUNDS > 4 * budget

    await writer.commit_all()
    for type_name in TYPES:
        (committed,) = state.resources[type_name].files
        parquet = pq.ParquetFile(tmp_path / committed.path)
        ids = parquet.read(columns=["id"]).column("id").to_pylist()
        assert ids == list(range(1, ROUNDS * ROWS + 1))
        assert committed.rows == ROUNDS * ROWS
        assert parquet.metadata.num_row_groups > 1  # written early, before the commit
