"""Unit tests of partition planning, the dedupe set and the checkpoint file."""

from __future__ import annotations

import itertools
from pathlib import Path

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from exporter.backup import checkpoint, manifest
from exporter.backup.checkpoint import PartitionState, ResourceState, RunState
from exporter.backup.sink import DataFile
from exporter.backup.storage import Storage
from exporter.core.errors import ExitCode, UsageError
from exporter.export.crawl import EmittedIds, plan_partitions
from tests.helpers.runs import export_command, run_export
from tests.helpers.sim import StartSimulator, spawn


@given(st.integers(1, 10**12), st.integers(0, 10**6), st.integers(1, 64))
def test_plan_covers_the_range_exactly(low: int, extra: int, count: int) -> None:
    high = low + extra
    parts = plan_partitions(low, high, count)
    assert parts[0].low == low and parts[-1].high == high
    assert 1 <= len(parts) <= count
    for before, after in itertools.pairwise(parts):
        assert after.low == before.high + 1
    for part in parts:
        assert part.low <= part.high and part.done_through == part.low - 1
    assert len({p.key for p in parts}) == len(parts)


@given(st.lists(st.integers(1, 500)))
def test_emitted_ids_reports_each_id_once(values: list[int]) -> None:
    emitted = EmittedIds()
    accepted = [v for v in values if emitted.add(v)]
    assert sorted(accepted) == sorted(set(values))


def _state() -> RunState:
    state = RunState(
        run_id="r1",
        started_at="2026-01-01T00:00:00Z",
        source="http://h/api/v2",
        parameters={"page_size": 10},
    )
    resource = ResourceState("sequenceStep", "sequenceSteps", planned=True)
    resource.partitions = [PartitionState(0, 1, 10, 4), PartitionState(1, 11, 20, 20, True)]
    resource.files = [
        DataFile("sequenceSteps/part-r1-00001.parquet", "sequenceStep", 5, 100, "ab", 1, 4)
    ]
    resource.next_sequence = 2
    state.resources["sequenceStep"] = resource
    return state


def test_checkpoint_round_trip_and_no_leftovers(tmp_path: Path) -> None:
    state = _state()
    checkpoint.save(Storage.open(tmp_path), state)
    loaded = checkpoint.load(tmp_path)
    assert loaded is not None
    assert loaded.to_json() == state.to_json()
    assert loaded.resources["sequenceStep"].partitions[0].resume_from == 5
    assert sorted(p.name for p in tmp_path.iterdir()) == [checkpoint.CHECKPOINT_NAME]


def test_missing_checkpoint_is_none(tmp_path: Path) -> None:
    assert checkpoint.load(tmp_path) is None


@pytest.mark.parametrize("content", [b"{", b"[]", b'{"version": 99}', b'{"version": 1}'])
def test_unreadable_checkpoint_is_a_usage_error(tmp_path: Path, content: bytes) -> None:
    (tmp_path / checkpoint.CHECKPOINT_NAME).write_bytes(content)
    with pytest.raises(UsageError, match="--restart"):
        checkpoint.load(tmp_path)


@pytest.mark.parametrize(
    ("where", "value"),
    [
        ("directory", "../x"),
        ("directory", "/tmp/elsewhere"),
        ("directory", "sequenceSteps/../../x"),
        ("file", "../../x/part-r1-00001.parquet"),
        ("file", "/etc/part-r1-00001.parquet"),
        ("file", "sequenceSteps/../../part-r1-00001.parquet"),
        ("file", "sequenceSteps/_checkpoint.json"),
        ("file", "users/part-r1-00001.parquet"),  # another type's directory
        ("history", "../outside/part-r0-00001.parquet"),
    ],
)
def test_paths_that_leave_the_backup_are_refused(tmp_path: Path, where: str, value: str) -> None:
    """A checkpoint naming `directory: "../x"` made export write outside --out."""
    data = _state().to_json()
    resource = data["resources"]["sequenceStep"]
    if where == "directory":
        resource["directory"] = value
    elif where == "file":
        resource["files"][0]["path"] = value
    else:
        data["history"] = [{"run_id": "r0", "files": [{**resource["files"][0], "path": value}]}]
    (tmp_path / checkpoint.CHECKPOINT_NAME).write_bytes(orjson.dumps(data))
    with pytest.raises(UsageError) as caught:
        checkpoint.load(tmp_path)
    message = str(caught.value)
    assert message.startswith(f"{tmp_path}/_checkpoint.json names ") and repr(value) in message
    assert "\n" not in message and "--restart" not in message and "from a copy" in message


@pytest.mark.parametrize(
    ("key", "value"),
    [("path", "../outside.parquet"), ("path", "/abs/x.parquet"), ("path", None)],
)
def test_manifest_paths_that_leave_the_backup_are_refused(
    tmp_path: Path, key: str, value: str | None
) -> None:
    document = {
        "format": "outreach-exporter/manifest",
        "files": [{"path": "sequenceSteps/part-r1-00001.parquet"}, {key: value}],
        "resources": {},
    }
    (tmp_path / "_manifest.json").write_bytes(orjson.dumps(document))
    with pytest.raises(UsageError, match=r"_manifest\.json names file .* outside the backup"):
        manifest.load_checked(tmp_path)
    document["files"] = []
    document["resources"] = {"sequenceStep": {"directory": "../../x"}}
    (tmp_path / "_manifest.json").write_bytes(orjson.dumps(document))
    with pytest.raises(UsageError, match=r"names directory '\.\./\.\./x'"):
        manifest.load_checked(tmp_path)


@pytest.mark.slow
async def test_export_never_writes_outside_out_for_a_tampered_checkpoint(
    start_simulator: StartSimulator, tmp_path: Path
) -> None:
    running = await start_simulator(steps=300, seed=12)
    out = tmp_path / "out"
    await run_export(running.base_url, out)
    state = orjson.loads((out / "_checkpoint.json").read_bytes())
    state["status"] = "running"  # an unfinished run, to be resumed
    state["resources"]["sequenceStep"]["directory"] = "../x"
    state["resources"]["sequenceStep"]["files"] = []
    for partition in state["resources"]["sequenceStep"]["partitions"]:
        partition[3], partition[4] = partition[1] - 1, False
    (out / "_checkpoint.json").write_bytes(orjson.dumps(state))
    before = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*"))
    process = await spawn(*export_command(running, out))
    _stdout, err = await process.communicate()
    assert process.returncode == ExitCode.USAGE, err.decode()
    [line] = err.decode().strip().splitlines()
    assert "_checkpoint.json names directory '../x'" in line
    assert not (tmp_path / "x").exists()
    after = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*") if p.name != "_lock")
    assert after == [p for p in before if p.name != "_lock"]
