"""The typed `detail` record: it encodes to the very dict it replaced (checkpoint bytes, manifest key order, unknown keys, the same errors), and the walk's watermark arithmetic."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from exporter.backup import checkpoint, manifest
from exporter.backup.checkpoint import ResourceState, RunState
from exporter.backup.detail import BatchWatermark, ResourceDetail
from exporter.backup.storage import Storage
from exporter.core.errors import UsageError
from exporter.export.walk_resume import advance, mark_batches_committed

STEP_FILE = "sequenceSteps/part-20260101T000000Z-abcdef-00001.parquet"

# `detail` objects as releases before the typed record wrote them (every key they used).
OLD_DETAILS: dict[str, dict[str, Any]] = {
    "sequenceStep": {
        "mark": {"local_clock": "2026-01-01T00:00:00.000Z", "based_on": "server clock"},
        "needs": {STEP_FILE: {"sequence": 12, "user": 3}},
        "repair": [
            {
                "path": "sequenceSteps/part-20251231T000000Z-abcdef-00002.parquet",
                "low": 5,
                "high": 90,
                "rows": 40,
                "by": "ids",
                "needs": {"sequence": 4},
            }
        ],
    },
    "sequence": {
        "positions_through": 12,
        "ranges_above": [[14, 20], [25, 30]],
        "missing": {"count": 2, "ids": [7, 9]},
        "unrequested": {"count": 1, "ids": [1000]},
    },
    "sequenceTemplate": {
        "not_asked_by_step": {
            "filter": "filter[sequenceStep][id]",
            "how": "refused",
            "why": "status 400: no",
        },
        "a_key_of_another_release": [1, {"x": None}],
    },
    "user": {},
}


def _old_checkpoint() -> dict[str, Any]:
    state = RunState("20260101T000000Z-abcdef", "2026-01-01T00:00:00Z", "http://h/api/v2", {})
    for type_name, directory in [
        ("sequenceStep", "sequenceSteps"),
        ("sequence", "sequences"),
        ("sequenceTemplate", "sequenceTemplates"),
        ("user", "users"),
    ]:
        state.resources[type_name] = ResourceState(type_name, directory)
    data = state.to_json()
    for type_name, detail in OLD_DETAILS.items():
        data["resources"][type_name]["detail"] = detail
    return data


def test_an_old_checkpoint_loads_and_is_written_back_byte_for_byte(tmp_path: Path) -> None:
    raw = orjson.dumps(_old_checkpoint(), option=orjson.OPT_INDENT_2 | orjson.OPT_SORT_KEYS)
    (tmp_path / checkpoint.CHECKPOINT_NAME).write_bytes(raw)
    state = checkpoint.load(tmp_path)
    assert state is not None
    assert checkpoint.encode(state) == raw
    for type_name, detail in OLD_DETAILS.items():
        assert state.resources[type_name].detail.to_json() == detail
    checkpoint.save(Storage.open(tmp_path), state)
    assert (tmp_path / checkpoint.CHECKPOINT_NAME).read_bytes() == raw


def test_the_typed_fields_read_what_the_old_keys_held() -> None:
    step = ResourceDetail.from_json(OLD_DETAILS["sequenceStep"])
    sequence = ResourceDetail.from_json(OLD_DETAILS["sequence"])
    template = ResourceDetail.from_json(OLD_DETAILS["sequenceTemplate"])
    assert step.mark == OLD_DETAILS["sequenceStep"]["mark"]
    assert step.file_needs() == {STEP_FILE: {"sequence": 12, "user": 3}}
    assert [r["low"] for r in step.repairs] == [5] and step.watermark is None
    assert sequence.watermark == BatchWatermark(12, ((14, 20), (25, 30)))
    assert sequence.missing == {"count": 2, "ids": [7, 9]}
    assert sequence.unrequested == {"count": 1, "ids": [1000]}
    assert sequence.not_asked_by_step is None and sequence.repairs == []
    assert template.not_asked_by_step is not None
    assert template.not_asked_by_step["how"] == "refused"


def test_the_manifest_keeps_the_order_the_keys_were_set_in_and_leaves_out_needs() -> None:
    """As the dict did: which of `missing` and the watermark comes first depends on whether the
    writer committed a batch before the walk ended, and the manifest's bytes follow it."""
    late = ResourceDetail()
    late.missing = {"count": 1, "ids": [3]}
    mark_batches_committed(_resource(late), [(0, 5)])
    early = ResourceDetail()
    mark_batches_committed(_resource(early), [(0, 5)])
    early.missing = {"count": 1, "ids": [3]}
    assert list(late.in_manifest()) == ["missing", "positions_through", "ranges_above"]
    assert list(early.in_manifest()) == ["positions_through", "ranges_above", "missing"]
    mark_batches_committed(_resource(late), [(5, 9)])  # updated in place, not moved
    assert list(late.in_manifest()) == ["missing", "positions_through", "ranges_above"]
    root = ResourceDetail.from_json(OLD_DETAILS["sequenceStep"])
    assert list(root.in_manifest()) == ["mark", "repair"]
    state = RunState("r", "2026-01-01T00:00:00Z", "http://h/api/v2", {})
    state.resources["sequence"] = ResourceState("sequence", "sequences", detail=late)
    built = manifest.build(state)["resources"]["sequence"]["detail"]
    assert orjson.dumps(built) == orjson.dumps(
        {"missing": {"count": 1, "ids": [3]}, "positions_through": 9, "ranges_above": []}
    )


def test_needs_appear_when_first_asked_for_and_taking_them_adds_nothing() -> None:
    detail = ResourceDetail()
    assert detail.take_file_needs(STEP_FILE) is None
    assert detail.to_json() == {}
    detail.file_needs()
    assert detail.to_json() == {"needs": {}}  # as the resumed walk's setdefault recorded it
    detail.file_needs()[STEP_FILE] = {"user": 2}
    assert detail.take_file_needs(STEP_FILE) == {"user": 2}
    assert detail.to_json() == {"needs": {}}


def test_repairs_are_added_then_cleared_as_the_key_was() -> None:
    detail = ResourceDetail()
    detail.mark = {"based_on": "local clock"}
    repair = OLD_DETAILS["sequenceStep"]["repair"][0]
    detail.add_repair(repair)
    detail.add_repair(repair)
    assert detail.to_json() == {"mark": {"based_on": "local clock"}, "repair": [repair, repair]}
    detail.clear_repairs()
    assert detail.to_json() == {"mark": {"based_on": "local clock"}} and detail.repairs == []


@pytest.mark.parametrize("value", ["text", [1, 2], 7, True])
def test_a_tampered_detail_gives_the_error_it_gave(tmp_path: Path, value: object) -> None:
    data = _old_checkpoint()
    data["resources"]["sequence"]["detail"] = value
    (tmp_path / checkpoint.CHECKPOINT_NAME).write_bytes(orjson.dumps(data))
    try:
        dict(value or {})  # type: ignore[call-overload]  # what the loader did before
    except (ValueError, TypeError) as exc:
        expected = f"is not a readable checkpoint ({type(exc).__name__}); use --restart"
    with pytest.raises(UsageError) as caught:
        checkpoint.load(tmp_path)
    assert expected in str(caught.value)


def test_a_manifest_detail_that_is_not_an_object_reads_as_empty() -> None:
    for value in (None, "x", [1], 3):
        detail = ResourceDetail.recorded(value)
        assert detail.to_json() == {} and detail.watermark is None and detail.mark is None


def _resource(detail: ResourceDetail) -> ResourceState:
    return ResourceState("sequence", "sequences", detail=detail)


def _old_advance(detail: dict[str, Any], ranges: list[tuple[int, int]]) -> None:
    """`writer.mark_batches_committed` as it was, on the plain dict."""
    through = int(detail.get("positions_through", 0))
    above = sorted([*(tuple(r) for r in detail.get("ranges_above", [])), *ranges])
    waiting: list[list[int]] = []
    for start, end in above:
        if start <= through:
            through = max(through, end)
        else:
            waiting.append([start, end])
    detail["positions_through"] = through
    detail["ranges_above"] = waiting


@given(st.lists(st.lists(st.tuples(st.integers(0, 60), st.integers(1, 8)), max_size=6)))
def test_the_watermark_advances_exactly_as_before(commits: list[list[tuple[int, int]]]) -> None:
    old: dict[str, Any] = {}
    new = ResourceDetail()
    for commit in commits:
        ranges = [(start, start + length) for start, length in commit]
        _old_advance(old, ranges)
        mark_batches_committed(_resource(new), ranges)
        assert orjson.dumps(new.to_json()) == orjson.dumps(old)


def test_batches_committed_out_of_order_wait_above_the_gap() -> None:
    watermark = advance(BatchWatermark(), [(10, 20), (30, 40)])
    assert watermark == BatchWatermark(0, ((10, 20), (30, 40)))
    watermark = advance(watermark, [(0, 10)])
    assert watermark == BatchWatermark(20, ((30, 40),))
    assert advance(watermark, [(20, 30)]) == BatchWatermark(40, ())
