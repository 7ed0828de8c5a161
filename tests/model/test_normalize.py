"""Unit tests of the JSON:API -> Arrow normalizer, on plain dicts."""

from __future__ import annotations

import datetime as dt
from typing import Any

import orjson
import pyarrow as pa
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from exporter.core.errors import ResponseError
from exporter.model.normalize import EXTRA_COLUMN, Normalizer, arrow_schema, table_layout
from exporter.model.schema import Kind, resource_type


def step(id_: Any = 1, **attributes: Any) -> dict[str, Any]:
    return {
        "type": "sequenceStep",
        "id": id_,
        "attributes": attributes,
        "relationships": {
            "sequence": {"data": {"type": "sequence", "id": 7}},
            "creator": {"data": None},
            "sequenceTemplates": {"data": [{"type": "sequenceTemplate", "id": 3}]},
            "mailings": {
                "links": {"related": "http://127.0.0.1/api/v2/mailings?filter[sequenceStep][id]=1"}
            },
        },
    }


def test_schema_is_derived_from_openapi() -> None:
    schema = arrow_schema("sequenceStep")
    assert schema.field("id").type == pa.int64() and not schema.field("id").nullable
    assert schema.field("createdAt").type == pa.timestamp("us", tz="UTC")
    assert schema.field("date").type == pa.date32()
    assert schema.field("taskNote").type == pa.string()
    assert schema.field("interval").type == pa.int64()
    for rel in ("sequence", "creator", "updater", "callPurpose", "taskPriority"):
        assert schema.field(f"{rel}Id").type == pa.int64()
    assert schema.field("sequenceTemplateIds").type == pa.list_(pa.int64())
    names = set(schema.names)
    assert not {"mailingsId", "callsId", "tasksId", "mailingIds"} & names  # links-only: no column
    # every attribute the OpenAPI file lists has a column
    assert {a.name for a in resource_type("sequenceStep").attributes} <= names
    assert schema.names[-1] == EXTRA_COLUMN


@pytest.mark.parametrize(
    "type_name",
    [
        "sequence",
        "user",
        "mailing",
        "call",
        "task",
        "callPurpose",
        "taskPriority",
        "sequenceTemplate",
    ],
)
def test_every_type_has_unique_typed_columns(type_name: str) -> None:
    layout = table_layout(type_name)
    assert len(set(layout.schema.names)) == len(layout.schema.names)
    for attribute in layout.attributes:
        field = layout.schema.field(attribute.name)
        if attribute.kind is Kind.DATETIME:
            assert field.type == pa.timestamp("us", tz="UTC")
        if attribute.kind is Kind.STRING_LIST:
            assert field.type == pa.list_(pa.string())


def test_values_are_typed_and_relationships_flattened() -> None:
    batch = Normalizer("sequenceStep").to_batch(
        [
            step(
                11,
                createdAt="2019-08-24T14:15:22.000Z",
                date="2020-02-29",
                order=3,
                stepType="call",
                taskNote="ünïcødé ✓ 日本",
                interval=None,
            )
        ]
    )
    row = batch.table.to_pylist()[0]
    assert row["id"] == 11
    assert row["createdAt"] == dt.datetime(2019, 8, 24, 14, 15, 22, tzinfo=dt.UTC)
    assert row["date"] == dt.date(2020, 2, 29)
    assert row["order"] == 3 and row["interval"] is None
    assert row["taskNote"] == "ünïcødé ✓ 日本"
    assert row["sequenceId"] == 7 and row["creatorId"] is None and row["updaterId"] is None
    assert row["sequenceTemplateIds"] == [3]
    assert row[EXTRA_COLUMN] is None
    assert batch.extra_values == 0


def test_unknown_and_ill_typed_values_are_kept_in_extra() -> None:
    record = step(5, order=2.5, bounceCount="many", createdAt="yesterday", brandNew={"a": 1})
    record["relationships"]["shinyNewRelation"] = {"data": {"type": "x", "id": 1}}
    batch = Normalizer("sequenceStep").to_batch([record, step(6, order=1)])
    rows = batch.table.to_pylist()
    assert (
        rows[0]["order"] is None and rows[0]["bounceCount"] is None and rows[0]["createdAt"] is None
    )
    extra = orjson.loads(rows[0][EXTRA_COLUMN])
    assert extra == {
        "order": 2.5,
        "bounceCount": "many",
        "createdAt": "yesterday",
        "brandNew": {"a": 1},
        "relationships.shinyNewRelation": {"data": {"type": "x", "id": 1}},
    }
    assert batch.extra_values == 5
    assert rows[1]["order"] == 1 and rows[1][EXTRA_COLUMN] is None


def test_relationship_with_neither_data_nor_links_is_null() -> None:
    record = step(5)
    record["relationships"]["sequence"] = {}
    record["relationships"]["sequenceTemplates"] = {"data": []}
    row = Normalizer("sequenceStep").to_batch([record]).table.to_pylist()[0]
    assert row["sequenceId"] is None
    assert row["sequenceTemplateIds"] == []


def test_a_relationship_to_the_wrong_type_is_not_stored_as_an_id() -> None:
    """`sequence: {type: user}` is not a sequence id: the column stays null (the list leaves the
    identifier out) and the relationship as sent is kept in `_extra`, counted."""
    record = step(5)
    record["relationships"]["sequence"] = {"data": {"type": "user", "id": 5}}
    record["relationships"]["sequenceTemplates"] = {
        "data": [{"type": "sequenceTemplate", "id": 3}, {"type": "mailing", "id": 4}]
    }
    record["relationships"]["creator"] = {"data": {"id": 9}}  # no type at all
    batch = Normalizer("sequenceStep").to_batch([record, step(6)])
    rows = batch.table.to_pylist()
    assert rows[0]["sequenceId"] is None and rows[0]["creatorId"] is None
    assert rows[0]["sequenceTemplateIds"] == [3]
    assert orjson.loads(rows[0][EXTRA_COLUMN]) == {
        "relationships.sequence": {"data": {"type": "user", "id": 5}},
        "relationships.sequenceTemplates": {
            "data": [{"type": "sequenceTemplate", "id": 3}, {"type": "mailing", "id": 4}]
        },
        "relationships.creator": {"data": {"id": 9}},
    }
    assert batch.extra_values == 3
    assert rows[1]["sequenceId"] == 7 and rows[1][EXTRA_COLUMN] is None


def test_wrong_type_stops_with_a_clear_error() -> None:
    record = step(5)
    record["type"] = "sequenceState"
    with pytest.raises(ResponseError, match=r"sequenceState.*sequenceStep"):
        Normalizer("sequenceStep").to_batch([record])


@pytest.mark.parametrize("bad_id", ["abc", "1e3", None, 1.5, -3, "../../etc", 2**64])
def test_non_integer_ids_are_refused(bad_id: Any) -> None:
    with pytest.raises(ResponseError, match="id"):
        Normalizer("sequenceStep").to_batch([step(bad_id)])


def test_string_integer_ids_are_accepted() -> None:
    assert Normalizer("sequenceStep").to_batch([step("42")]).ids == [42]


def test_all_null_batch_keeps_the_schema() -> None:
    table = Normalizer("sequenceStep").to_batch([step(1)]).table
    assert table.schema == arrow_schema("sequenceStep")
    assert table.schema.field("taskNote").type == pa.string()


_text = st.one_of(st.none(), st.text(max_size=50))
_ints = st.one_of(st.none(), st.integers(min_value=-(2**63), max_value=2**63 - 1))
_times = st.one_of(
    st.none(),
    st.datetimes(
        min_value=dt.datetime(1970, 1, 1),
        max_value=dt.datetime(2100, 1, 1),
        timezones=st.just(dt.UTC),
    ),
)


@pytest.mark.slow
@settings(max_examples=60, deadline=None)
@given(
    st.lists(
        st.tuples(st.integers(1, 2**62), _text, _ints, _times, st.one_of(st.none(), st.dates())),
        max_size=30,
    )
)
def test_round_trip_property(rows: list[tuple[int, str | None, int | None, Any, Any]]) -> None:
    records = []
    for id_, note, order, updated, date in rows:
        stamp = None if updated is None else updated.strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"
        records.append(
            step(
                id_,
                taskNote=note,
                order=order,
                updatedAt=stamp,
                date=None if date is None else date.isoformat(),
            )
        )
    table = Normalizer("sequenceStep").to_batch(records).table
    out = table.to_pylist()
    for (id_, note, order, updated, date), row in zip(rows, out, strict=True):
        assert row["id"] == id_ and row["taskNote"] == note and row["order"] == order
        assert row["date"] == date
        if updated is None:
            assert row["updatedAt"] is None
        else:
            assert row["updatedAt"] == updated.replace(
                microsecond=updated.microsecond // 1000 * 1000
            )
        assert row[EXTRA_COLUMN] is None
