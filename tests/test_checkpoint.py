"""Unit tests of partition planning, the dedupe set and the checkpoint file."""

from __future__ import annotations

import itertools
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from exporter import checkpoint
from exporter.checkpoint import PartitionState, ResourceState, RunState
from exporter.crawl import EmittedIds, plan_partitions
from exporter.errors import UsageError
from exporter.sink import DataFile
from exporter.storage import Storage


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
