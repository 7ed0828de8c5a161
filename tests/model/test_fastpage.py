"""The fast page reader gives exactly the slow path's table, or declines; never anything else."""

from __future__ import annotations

from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from exporter.core.errors import ResponseError
from exporter.model.fastpage import read_page
from exporter.model.normalize import Normalizer
from exporter.simulator import Simulator, SimulatorConfig

SIM = Simulator(SimulatorConfig(steps=400, seed=5))


def slow(body: bytes, type_name: str) -> Any:
    return Normalizer(type_name).to_batch(orjson.loads(body)["data"]).table


@pytest.mark.slow
@pytest.mark.parametrize(
    "type_name",
    [
        "sequenceStep",
        "sequence",
        "sequenceTemplate",
        "mailing",
        "call",
        "task",
        "callPurpose",
        "taskPriority",
    ],
)
def test_simulator_pages_read_the_same_both_ways(type_name: str) -> None:
    records = list(SIM.truth.records(type_name))[:300]
    for option in (0, orjson.OPT_INDENT_2):  # one line, and pretty-printed over many lines
        body = orjson.dumps(
            {"data": records, "links": {"next": "http://127.0.0.1/x"}}, option=option
        )
        page = read_page(body, type_name)
        assert page is not None
        assert page.batch.table.equals(slow(body, type_name))
        assert page.batch.ids == [int(r["id"]) for r in records]
        assert page.links == {"next": "http://127.0.0.1/x"}


def test_types_with_object_attributes_take_the_slow_path() -> None:
    body = orjson.dumps({"data": list(SIM.truth.records("user"))})
    assert read_page(body, "user") is None


_mutations = st.sampled_from(
    [
        ("type", "sequenceState"),
        ("id", "17"),
        ("id", -4),
        ("id", 2.5),
        ("attributes.order", 2.5),
        ("attributes.order", "3"),
        ("attributes.taskNote", 5),
        ("attributes.createdAt", "yesterday"),
        ("attributes.date", "2020-13-45"),
        ("attributes.brandNew", 1),
        ("attributes", None),
        ("relationships.sequence", {}),
        ("relationships.sequence", {"data": {"type": "sequence", "id": "x"}}),
        ("relationships.sequence", {"data": {"type": "user", "id": 5}}),
        ("relationships.sequence", {"data": {"id": 5}}),
        ("relationships.creator", {"data": {"type": "sequence", "id": 5}}),
        ("relationships.sequenceTemplates", {"data": [{"type": "mailing", "id": 4}]}),
        ("relationships.sequenceTemplates", {"data": []}),
        ("relationships.sequenceTemplates", {"data": None}),
        ("relationships.newRelation", {"data": None}),
        ("meta", {"canWrite": True}),
        ("links", {"self": "http://127.0.0.1/x"}),
    ]
)


def _apply(record: dict[str, Any], path: str, value: Any) -> dict[str, Any]:
    record = orjson.loads(orjson.dumps(record))
    keys = path.split(".")
    target = record
    for key in keys[:-1]:
        target = target.setdefault(key, {}) or {}
    target[keys[-1]] = value
    return record


@pytest.mark.slow
@settings(max_examples=80, deadline=None)
@given(
    st.lists(
        st.tuples(st.integers(0, 30), st.lists(_mutations, max_size=2)), min_size=1, max_size=6
    )
)
def test_irregular_pages_are_declined_or_read_identically(
    plan: list[tuple[int, list[tuple[str, Any]]]],
) -> None:
    steps = list(SIM.truth.records("sequenceStep"))
    records = []
    for index, mutations in plan:
        record = steps[index]
        for path, value in mutations:
            record = _apply(record, path, value)
        records.append(record)
    body = orjson.dumps({"data": records})
    try:
        expected = slow(body, "sequenceStep")
    except ResponseError:
        assert read_page(body, "sequenceStep") is None
        return
    page = read_page(body, "sequenceStep")
    if page is not None:
        assert page.batch.table.equals(expected)


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("sequence", {"data": {"type": "user", "id": 5}}),
        ("sequence", {"data": {"id": 5}}),
        (
            "sequenceTemplates",
            {"data": [{"type": "sequenceTemplate", "id": 3}, {"type": "user", "id": 4}]},
        ),
    ],
)
def test_a_relationship_to_the_wrong_type_reads_as_the_slow_path_does(
    name: str, value: Any
) -> None:
    records = list(SIM.truth.records("sequenceStep"))[:20]
    records[3] = _apply(records[3], f"relationships.{name}", value)
    body = orjson.dumps({"data": records})
    expected = slow(body, "sequenceStep")
    assert expected.column("_extra")[3].as_py() is not None
    page = read_page(body, "sequenceStep")
    assert page is None or page.batch.table.equals(expected)


def test_every_readable_type_has_a_wire_layout_or_declines() -> None:
    """Bug caught: a kind without a wire type (`Kind.INTEGER_LISTS`, a prospect's
    contactHistogram) made `wire_layout("prospect")` raise KeyError instead of reading pages."""
    from exporter.model.fastpage import wire_layout
    from exporter.model.schema import Kind, readable_types, resource_type

    for name in readable_types():
        layout = wire_layout(name)
        has_object = any(a.kind is Kind.OBJECT for a in resource_type(name).attributes)
        assert (layout is None) == has_object, name
