"""No reader ever sees a partial part file: the output read during a run and between a kill and the resume."""

from __future__ import annotations

import asyncio
import signal
from pathlib import Path

import orjson
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from exporter.backup.sink import PartWriter
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
