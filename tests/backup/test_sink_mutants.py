"""No reader ever sees a partial part file: the output read during a run and between a kill and the resume."""

from __future__ import annotations

import asyncio
import dataclasses
import signal
from pathlib import Path

import orjson
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from exporter.backup.sink import DataFile, PartWriter, part_run_id
from exporter.backup.storage import Storage
from exporter.simulator import Faults
from tests.helpers.runs import export_command, run_export
from tests.helpers.sim import StartSimulator, clean_env


def visible_parts(out: Path) -> list[Path]:
    return sorted(out.rglob("part-*.parquet"))


def committed_paths(out: Path) -> set[str]:
    state = orjson.loads((out / "_checkpoint.json").read_bytes())
    return {f["path"] for resource in state["resources"].values() for f in resource["files"]} | {
        f["path"] for run in state.get("history", []) for f in run["files"]
    }


def test_a_part_being_written_is_hidden_until_rolled(tmp_path: Path) -> None:
    """Bug caught: `Storage.open_data` writing straight under the final `part-*.parquet` name
    (temporary = None) instead of `.part-*.parquet.inprogress`: a row group is flushed, so the
    file exists, yet no `part-*.parquet` may be visible until `roll` returns it."""
    schema = pa.schema([("id", pa.int64()), ("name", pa.string())])
    writer = PartWriter(
        Storage.open(tmp_path),
        "things",
        "thing",
        schema,
        "20240101T000000Z-abcdef",
        row_group_rows=10,
    )
    writer.append(pa.table({"id": list(range(25)), "name": ["x"] * 25}, schema=schema))
    assert writer.file_bytes > 0  # two row groups reached the disk
    assert visible_parts(tmp_path) == []
    assert [p.name for p in (tmp_path / "things").iterdir()] == [
        ".part-20240101T000000Z-abcdef-00001.parquet.inprogress"
    ]
    committed = writer.roll()
    assert committed is not None and committed.rows == 25
    assert [p.relative_to(tmp_path).as_posix() for p in visible_parts(tmp_path)] == [committed.path]
    assert pq.read_table(tmp_path / committed.path).num_rows == 25
    assert list((tmp_path / "things").glob(".*")) == []


@pytest.mark.slow
async def test_every_visible_part_is_complete_during_a_run_and_after_a_kill(
    start_simulator: StartSimulator, tmp_path: Path
) -> None:
    """Bug caught: part files written under their final name (see above). The output is
    polled while a slow export runs: every `part-*.parquet` seen must read back whole. Then a
    CLI export is SIGKILLed just after a commit: every visible part is complete and, after the
    resume, named by the checkpoint."""
    running = await start_simulator(steps=1500, seed=5, faults=Faults(latency_s=0.02))
    out = tmp_path / "out"
    seen: set[str] = set()
    done = asyncio.Event()

    async def poll() -> None:
        while not done.is_set():
            for part in visible_parts(out):
                try:
                    rows = (await asyncio.to_thread(pq.read_metadata, part)).num_rows
                except FileNotFoundError:
                    continue  # removed between the listing and the read
                assert rows > 0, part
                seen.add(part.name)
            await asyncio.sleep(0.005)

    poller = asyncio.create_task(poll())
    try:
        await run_export(
            running.base_url,
            out,
            page_size=50,
            concurrency=2,
            file_rows=100,
            commit_interval=0.05,
        )
    finally:
        done.set()
        await poller
    assert len(seen) >= 5  # parts were seen while the run went on, not only at its end

    killed = tmp_path / "killed"
    command = export_command(running, killed, "--relationships", "none")
    process = await asyncio.create_subprocess_exec(
        *command,
        env=clean_env(),
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.DEVNULL,
    )
    checkpoint = killed / "_checkpoint.json"
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 60
    while not checkpoint.exists() or not committed_paths(killed):
        assert process.returncode is None, "the export finished before a commit was seen"
        assert loop.time() < deadline, "no commit within 60 s"
        await asyncio.sleep(0.005)
    process.send_signal(signal.SIGKILL)
    assert await process.wait() == -signal.SIGKILL
    for part in visible_parts(killed):
        assert pq.read_table(part).num_rows > 0  # complete, never a torn file
    resumed = await asyncio.create_subprocess_exec(
        *command,
        env=clean_env(),
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
    )
    _, err = await resumed.communicate()
    assert resumed.returncode == 0, err.decode()
    names = committed_paths(killed)
    assert {p.relative_to(killed).as_posix() for p in visible_parts(killed)} == names


RUN = "20240101T000000Z-abcdef"
SCHEMA = pa.schema([("id", pa.int64()), ("name", pa.string())])


def rows(ids: list[int]) -> pa.Table:
    return pa.table({"id": ids, "name": [f"n{i}" for i in ids]}, schema=SCHEMA)


@pytest.mark.parametrize(
    ("relative", "expected"),
    [
        (f"things/part-{RUN}-00001.parquet", RUN),
        (f"things/.part-{RUN}-00001.parquet.inprogress", RUN),
        (f"things/run={RUN}/part-{RUN}-00012.parquet", RUN),
        (f"things/run=20240101T000000Z-000000/part-{RUN}-00001.parquet", None),
        (f"things/part-{RUN}-00001.parquet.inprogress", None),  # suffix without the dot
        (f"things/.part-{RUN}-00001.parquet", None),  # dot without the suffix
        (f"part-{RUN}-00001.parquet", None),  # not in a type's directory
        (f"a/b/c/part-{RUN}-00001.parquet", None),
        (f"things/run={RUN}/x/part-{RUN}-00001.parquet", None),
        (f"things/part-{RUN}-0001.parquet", None),
    ],
)
def test_part_run_id_names_only_our_files(relative: str, expected: str | None) -> None:
    """Bugs: `startswith(".") == endswith(...)` (a hidden name without the suffix, or a
    visible one with it, taken for ours), `len(parts) == 1` as `!=` or `== 2` as `!= 2`, a
    `run=` directory of another run accepted: a file that is not ours would be deleted as an
    orphan of a killed run, or ours never cleaned up."""
    assert part_run_id(relative) == expected


def test_part_writer_rolls_row_groups_ids_and_sequences(tmp_path: Path) -> None:
    """Bugs: a row group flushed only past the limit (`>=` as `>`), the file's min or max id
    not reset after a roll (`self._min_id = ...` deleted) or taken from the wrong end, the
    sequence not advanced (a second file overwriting the first), an empty table counted, the buffer's
    counts not starting at 0 or not reset after a flush (a row group flushed one row early, a
    size left over),
    the rows not cast to the schema, `roll` of nothing writing a file, no statistics in
    the footer (`write_statistics=False`), the size estimate not adding what is buffered to what is written (the file would roll late)."""
    writer = PartWriter(Storage.open(tmp_path), "things", "thing", SCHEMA, RUN, row_group_rows=10)
    assert writer.roll() is None and writer.next_sequence == 1
    writer.append(rows([]))
    assert writer.file_rows == 0 and writer.file_bytes == 0
    writer.append(rows([15, 3, 9, 12, 4, 5, 6, 7, 8]))  # nine rows: below the limit, in memory
    assert not (tmp_path / "things").exists()
    writer.append(rows([10]))  # the tenth: exactly one row group, flushed
    assert writer.file_bytes > 0 and not list(tmp_path.rglob("part-*"))
    narrow = pa.table({"id": pa.array([30, 1], pa.int32()), "name": ["a", "b"]})
    flushed = writer.file_bytes
    writer.append(narrow)  # cast to the writer's int64 schema; buffered
    assert writer.file_rows == 12 and writer.file_bytes > flushed  # written plus buffered
    writer.append(rows(list(range(20, 27))))  # 2 + 7 = 9 buffered: below the limit
    writer.append(rows([27]))  # the tenth since the flush: the second row group
    writer.append(rows([28, 29]))
    first = writer.roll()
    assert first is not None and first.path == f"things/part-{RUN}-00001.parquet"
    assert (first.rows, first.min_id, first.max_id) == (22, 1, 30)
    metadata = pq.ParquetFile(tmp_path / first.path).metadata
    assert [metadata.row_group(i).num_rows for i in range(metadata.num_row_groups)] == [10, 10, 2]
    # Each row group states its id range: status's high-water marks and a query engine's
    # pruning read it from the footer instead of the data.
    stats = metadata.row_group(0).column(0).statistics
    assert stats is not None and stats.has_min_max and (stats.min, stats.max) == (3, 15)
    assert pq.read_table(tmp_path / first.path).schema.field("id").type == pa.int64()
    assert writer.file_bytes == 0  # nothing written or buffered for the next file
    writer.append(rows([100, 101]))
    second = writer.roll()
    assert second is not None and second.path == f"things/part-{RUN}-00002.parquet"
    assert (second.rows, second.min_id, second.max_id) == (2, 100, 101)
    assert writer.next_sequence == 3 and writer.file_rows == 0


def test_part_writer_flushes_on_bytes_and_discards_without_a_trace(tmp_path: Path) -> None:
    """Bugs: the byte limit ignored (`or` as `and` with the row limit) or reached only past it (`>=`
    as `>`), `discard` leaving the
    hidden file, its buffered rows (`self._buffer.clear()` deleted: they land in the next file)
    or its counters (`self._file_rows = 0` lost: the next roll commits rows that
    were dropped), a committed file touched by `discard`."""
    limit = rows([1, 2]).nbytes
    writer = PartWriter(
        Storage.open(tmp_path), "things", "thing", SCHEMA, RUN, row_group_bytes=limit
    )
    writer.append(rows([1, 2]))  # exactly the byte limit: flushed at once
    assert list((tmp_path / "things").iterdir())  # the hidden file holds a row group
    kept = writer.roll()
    assert kept is not None
    writer.append(rows([3, 4]))
    writer.discard()
    assert writer.file_rows == 0 and writer.file_bytes == 0 and writer.roll() is None
    assert [p.name for p in (tmp_path / "things").iterdir()] == [Path(kept.path).name]
    assert pq.read_table(tmp_path / kept.path)["id"].to_pylist() == [1, 2]
    writer.append(rows([7]))
    after = writer.roll()
    assert after is not None and (after.rows, after.min_id, after.max_id) == (1, 7, 7)

    buffered = PartWriter(Storage.open(tmp_path), "others", "thing", SCHEMA, RUN)
    buffered.append(rows([5, 6]))  # below both limits: still in memory
    buffered.discard()
    buffered.append(rows([8]))
    last = buffered.roll()
    assert last is not None and last.rows == 1
    assert pq.read_table(tmp_path / last.path)["id"].to_pylist() == [8]  # not 5 and 6 too


def test_a_data_file_entry_reads_back_as_written() -> None:
    """Bugs: a field of `DataFile.to_json`/`from_json` dropped or swapped: the checkpoint
    would name a file with another size, digest or id range than the one committed; `frozen`
    dropped: a committed file's record could be edited after it was reported, and could no
    longer be a set member."""
    data_file = DataFile(f"things/part-{RUN}-00001.parquet", "thing", 3, 99, "ab" * 32, 1, 9)
    assert DataFile.from_json(orjson.loads(orjson.dumps(data_file.to_json()))) == data_file
    with pytest.raises(dataclasses.FrozenInstanceError):
        data_file.rows = 4  # type: ignore[misc]
    assert len({data_file, DataFile.from_json(data_file.to_json())}) == 1  # hashable, by value


def test_row_groups_hold_up_to_50000_rows_by_default(tmp_path: Path) -> None:
    """Bug: `row_group_rows: int = 50_001` (or any other default): README promises row groups of
    up to 50,000 rows; written as the writer task does, a page of 1,000 rows at a time."""
    writer = PartWriter(Storage.open(tmp_path), "things", "thing", SCHEMA, RUN)
    for first in range(0, 51_000, 1_000):
        writer.append(rows(list(range(first + 1, first + 1_001))))
    committed = writer.roll()
    assert committed is not None and committed.rows == 51_000
    metadata = pq.ParquetFile(tmp_path / committed.path).metadata
    groups = [metadata.row_group(i).num_rows for i in range(metadata.num_row_groups)]
    assert groups == [50_000, 1_000]
