"""Mutants of backup/checkpoint.py that the suite let live, each killed by a test naming its one-line bug."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import orjson
import pyarrow.parquet as pq
import pytest

from exporter.backup import checkpoint
from exporter.backup.checkpoint import RunState, checked_history
from exporter.backup.storage import Storage
from exporter.core.errors import ExporterError
from exporter.simulator import Faults
from tests.helpers.commands import status_json
from tests.helpers.runs import fast_retries, run_export
from tests.helpers.sim import StartSimulator


def kept_extra_values(out: Path) -> int:
    """The values the part files keep in `_extra`, counted from the files themselves."""
    total = 0
    for part in out.glob("**/part-*.parquet"):
        for value in pq.read_table(part, columns=["_extra"]).column("_extra").to_pylist():
            total += len(orjson.loads(value)) if value else 0
    return total


@pytest.mark.slow  # an export failed midway, then resumed: seconds
async def test_a_run_failed_midway_claims_no_more_than_it_committed(
    start_simulator: StartSimulator, tmp_path: Path
) -> None:
    """Bugs: a new resource recorded as finished (`finished: bool = True`): `status` calls a
    failed run's type finished; `extra_values: int = 1`: the manifest counts a kept value that
    no file holds. The run fails once its first files are committed; the resume completes it."""
    running = await start_simulator(steps=1500, seed=17, faults=Faults(latency_s=0.01))
    checkpoint_file = tmp_path / checkpoint.CHECKPOINT_NAME

    async def fail_after_a_commit() -> None:
        deadline = time.monotonic() + 60
        while not (checkpoint_file.exists() and b"part-" in checkpoint_file.read_bytes()):
            assert time.monotonic() < deadline, "no file committed within 60 s"
            await asyncio.sleep(0.01)
        running.sim.faults.error_rate = 1.0  # every answer from now on a 500 or 503

    failing = asyncio.create_task(fail_after_a_commit())
    with pytest.raises(ExporterError, match=r"status 50[03]"):
        await run_export(
            running.base_url,
            tmp_path,
            retry=fast_retries(2),
            file_rows=100,
            commit_interval=0.0,
            page_size=100,
            concurrency=1,
        )
    await failing
    state = checkpoint.load(tmp_path)
    assert state is not None and state.status == "running"
    [resource] = state.resources.values()
    assert resource.files and not resource.finished
    [run] = status_json(tmp_path)["runs"]
    assert [r["finished"] for r in run["resources"]] == [False]

    running.sim.faults.error_rate = 0.0
    _job, result = await run_export(running.base_url, tmp_path, file_rows=100)
    assert result.state.status == "complete"
    exported = [
        i
        for part in tmp_path.glob("**/part-*.parquet")
        for i in pq.read_table(part)["id"].to_pylist()
    ]
    assert sorted(exported) == sorted(int(i) for i in running.sim.truth.ids("sequenceStep"))
    manifest = orjson.loads((tmp_path / "_manifest.json").read_bytes())
    assert manifest["resources"]["sequenceStep"]["extra_values"] == kept_extra_values(tmp_path)


def test_a_history_entry_without_a_file_list_is_refused(tmp_path: Path) -> None:
    """Bug: `not isinstance(run, dict) and not isinstance(run.get("files"), list)`: a history
    entry that is a dict without a file list passes, and a later run forgets that run's files
    (compaction and verify then never see them)."""
    with pytest.raises(ValueError, match="a history entry without files"):
        checked_history([{"run_id": "r1", "files": None}])
    with pytest.raises(ValueError, match="a history entry without files"):
        checked_history(["not a run"])
    assert checked_history([{"run_id": "r1", "files": []}]) == [{"run_id": "r1", "files": []}]


def test_damaged_checkpoint_without_a_manifest_advises_restart(tmp_path: Path) -> None:
    """Bug: `_beside_a_manifest` answering True when it cannot tell (`return True` in its
    `except`) or when there is no manifest: the advice for a damaged checkpoint alone would
    change from --restart to 'put back a copy'. And beside a manifest, never --restart."""
    storage = Storage.open(tmp_path)
    (tmp_path / checkpoint.CHECKPOINT_NAME).write_bytes(b"{ damaged")
    with pytest.raises(checkpoint.UnreadableCheckpoint, match="use --restart to discard it"):
        checkpoint.load(storage)
    (tmp_path / "_manifest.json").write_bytes(b"{}")
    with pytest.raises(checkpoint.UnreadableCheckpoint, match="do not use --restart"):
        checkpoint.load(storage)


class StoreThatCannotTell(Storage):
    """A store whose existence checks fail (an S3 outage halfway through a load)."""

    def exists(self, relative: str) -> bool:
        if relative == "_manifest.json":
            raise ExporterError(f"cannot read {relative}: connection reset (injected)")
        return super().exists(relative)


def test_damaged_checkpoint_never_advises_restart_when_the_store_cannot_say(
    tmp_path: Path,
) -> None:
    """Bug: `_beside_a_manifest` answering False when the store cannot say whether a manifest
    is there (its `except` branch): the advice would be --restart, which deletes a finished
    backup the store merely failed to list."""
    Storage.open(tmp_path)  # lays the store out
    (tmp_path / checkpoint.CHECKPOINT_NAME).write_bytes(b"{ damaged")
    (tmp_path / "_manifest.json").write_bytes(b"{}")
    storage = StoreThatCannotTell.open(tmp_path)
    with pytest.raises(
        checkpoint.UnreadableCheckpoint, match="look before using --restart"
    ) as raised:
        checkpoint.load(storage)
    assert "use --restart to discard" not in str(raised.value)


def test_a_partition_state_read_back_keeps_finished(tmp_path: Path) -> None:
    """Bug: a partition created without `finished` starting finished (`finished: bool = True`):
    a fresh partition must be open until its last page is committed."""
    state = RunState(run_id="r", started_at="t", source="s", parameters={})
    assert checkpoint.PartitionState(key=0, low=1, high=9, done_through=0).finished is False
    checkpoint.save(Storage.open(tmp_path), state)
    loaded = checkpoint.load(tmp_path)
    assert loaded is not None and loaded.to_json() == state.to_json()


def test_a_checkpoint_without_extra_values_reads_as_none_kept(tmp_path: Path) -> None:
    """Bug: `data.get("extra_values", 1)`: a checkpoint written before the count existed would
    claim a kept value per type that no file holds."""
    resource = checkpoint.ResourceState(type_name="sequenceStep", directory="sequenceSteps")
    state = RunState(run_id="r", started_at="t", source="s", parameters={})
    state.resources["sequenceStep"] = resource
    data = state.to_json()
    del data["resources"]["sequenceStep"]["extra_values"]
    (tmp_path / checkpoint.CHECKPOINT_NAME).write_bytes(orjson.dumps(data))
    loaded = checkpoint.load(tmp_path)
    assert loaded is not None and loaded.resources["sequenceStep"].extra_values == 0
