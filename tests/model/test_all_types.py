"""Every collection the bundled OpenAPI file lists with a GET list operation is a typed resource type."""

from __future__ import annotations

from typing import Any

import orjson
import pyarrow as pa
import pytest

from exporter.core.errors import ResponseError
from exporter.model import schema
from exporter.model.normalize import EXTRA_COLUMN, Normalizer, arrow_schema, table_layout
from exporter.model.schema import Incremental, Kind, Shape, WireForm, resource_type

NINE = schema.RESOURCE_TYPES


def _components() -> dict[str, Any]:
    components: dict[str, Any] = schema.openapi_document()["components"]["schemas"]
    return components


def _listed_collections() -> set[str]:
    """Computed here from `paths`, independently of `schema.readable_types`."""
    paths = schema.openapi_document()["paths"]
    return {
        path[1:]
        for path, operations in paths.items()
        if path.startswith("/") and "/" not in path[1:] and "get" in operations
    }


def test_readable_types_are_exactly_the_listed_collections() -> None:
    listed = _listed_collections()
    assert len(listed) == 47
    types = schema.readable_types()
    assert len(types) == len(set(types)) == 47
    assert {resource_type(t).collection for t in types} == listed


def test_the_nine_step_world_types_come_first_in_their_order() -> None:
    types = schema.readable_types()
    assert types[: len(NINE)] == NINE
    assert types[0] == "sequenceStep"
    assert list(types[9:]) == sorted(types[9:])


def test_every_type_loads_and_collections_round_trip() -> None:
    for name in schema.readable_types():
        rtype = resource_type(name)
        assert rtype.name == name
        assert rtype.attributes, name
        found = schema.by_collection(rtype.collection)
        assert found is not None and found.name == name
        assert rtype.read_scope == rtype.collection + ".read"
    assert schema.by_collection("nothingHere") is None
    assert resource_type("sequenceStep").read_scope == "sequenceSteps.read"


def test_types_without_relationships_load_with_none() -> None:
    for name in ("auditLog", "duty", "profile"):
        assert resource_type(name).relationships == ()


def test_audit_log_ids_are_uuids() -> None:
    kinds = {name: resource_type(name).id_kind for name in schema.readable_types()}
    assert {n for n, k in kinds.items() if k is Kind.STRING} == {"auditLog"}
    assert arrow_schema("auditLog").field("id").type == pa.string()
    assert not arrow_schema("auditLog").field("id").nullable


# ------------------------------------------------------------------ the nine stay as they were


def _expected_nine_schema(name: str) -> pa.Schema:
    """Today's rules, applied to the raw OpenAPI file here (not by `schema`/`normalize`)."""
    components = _components()
    arrow = {
        "integer": pa.int64(),
        "number": pa.float64(),
        "boolean": pa.bool_(),
        "array": pa.list_(pa.string()),
        "object": pa.string(),
    }
    formats = {"date-time": pa.timestamp("us", tz="UTC"), "date": pa.date32()}
    fields = [pa.field("id", pa.int64(), nullable=False)]
    taken = {"id", EXTRA_COLUMN}
    for attr, spec in sorted(components[name]["properties"].items()):
        kind = arrow.get(spec.get("type"), formats.get(spec.get("format"), pa.string()))
        fields.append(pa.field(attr, kind))
        taken.add(attr)
    to_one, to_many = [], []
    # The sequenceStep reference page has nine relationships; `schedule` is the OpenAPI file's own.
    skipped = {"schedule"} if name == "sequenceStep" else set()
    for rel, spec in sorted(components[name + "Relationships"]["properties"].items()):
        data = spec.get("properties", {}).get("data")
        if rel in skipped or data is None:
            continue
        if data.get("type") == "array":
            target = data["items"]["properties"]["type"]["enum"][0]
            candidates = [f"{target}Ids", f"{rel}Ids", f"{rel}_ids"]
        else:
            candidates = [f"{rel}Id", f"{rel}_id"]
        column = next(c for c in candidates if c not in taken)
        taken.add(column)
        if data.get("type") == "array":
            to_many.append(pa.field(column, pa.list_(pa.int64())))
        else:
            to_one.append(pa.field(column, pa.int64()))
    fields += to_one + to_many + [pa.field(EXTRA_COLUMN, pa.string())]
    return pa.schema(fields, metadata={b"outreach.type": name.encode()})


@pytest.mark.parametrize("name", NINE)
def test_the_nine_arrow_schemas_are_unchanged(name: str) -> None:
    expected = _expected_nine_schema(name)
    assert arrow_schema(name).equals(expected, check_metadata=True)
    assert arrow_schema(name).serialize().to_pybytes() == expected.serialize().to_pybytes()


# ------------------------------------------------------------------ wire shapes


def _vague(spec: dict[str, Any]) -> bool:
    """Neither a scalar nor an array of strings: the OpenAPI file alone does not say the shape."""
    if spec.get("type") == "object":
        return True
    return spec.get("type") == "array" and spec.get("items", {}).get("type") != "string"


def test_every_vague_attribute_has_a_wire_shape() -> None:
    components = _components()
    vague = {
        (name, attr)
        for name in schema.readable_types()
        for attr, spec in components[name].get("properties", {}).items()
        if _vague(spec)
    }
    shaped = {key for key, wire in schema.WIRE_SHAPES.items() if wire.form is not WireForm.ABSENT}
    assert vague == shaped
    for (name, attr), wire in schema.WIRE_SHAPES.items():
        assert wire.source, (name, attr)
        if wire.form is WireForm.ABSENT:
            assert attr in components[name + "Relationships"]["properties"]
            assert resource_type(name).relationship(attr) is None
        else:
            attribute = resource_type(name).attribute(attr)
            assert attribute is not None and attribute.wire is wire


def test_wire_fields_agree_with_the_hyper_schema_where_it_names_them() -> None:
    hyper = schema.hyper_schema_document()["definitions"]
    checked = 0
    for (name, attr), wire in schema.WIRE_SHAPES.items():
        definitions = hyper[name].get("definitions", {})
        ref = definitions.get(attr, {}).get("items", {}).get("$ref", "")
        if not ref:
            continue
        members = definitions[ref.rsplit("/", 1)[-1]]["definitions"]
        kinds = {
            member: Kind.INTEGER if spec.get("format") == "integer" else Kind.STRING
            for member, spec in members.items()
        }
        assert dict(wire.fields) == kinds, (name, attr)
        checked += 1
    assert checked == 4  # additionalInfo, changes, participants, topics


def test_arrow_types_of_the_shaped_attributes() -> None:
    assert arrow_schema("prospect").field("contactHistogram").type == pa.list_(pa.list_(pa.int64()))
    for name, attr in (("user", "duties"), ("auditLog", "changes"), ("event", "payload")):
        assert arrow_schema(name).field(attr).type == pa.string()
    assert arrow_schema("prospect").field("emails").type == pa.list_(pa.string())


def _record(name: str, record_id: Any, **attributes: Any) -> dict[str, Any]:
    return {"type": name, "id": record_id, "attributes": attributes, "relationships": {}}


def test_duties_as_the_live_api_sends_them_are_json_text() -> None:
    duties = [{"id": 3, "name": "Account Executive", "duty_type": "user_role"}]
    batch = Normalizer("user").to_batch([_record("user", 1, duties=duties)])
    row = batch.table.to_pylist()[0]
    assert orjson.loads(row["duties"]) == duties
    assert row[EXTRA_COLUMN] is None and batch.extra_values == 0


def test_contact_histogram_is_typed_and_a_bad_one_kept_in_extra() -> None:
    histogram = [[0, 1]] * 11 + [[2, 3]]
    batch = Normalizer("prospect").to_batch(
        [
            _record("prospect", 1, contactHistogram=histogram),
            _record("prospect", 2, contactHistogram=[[1, "2"]]),
            _record("prospect", 3, contactHistogram=[[True, 1]]),
        ]
    )
    rows = batch.table.to_pylist()
    assert rows[0]["contactHistogram"] == histogram and rows[0][EXTRA_COLUMN] is None
    for row, sent in ((rows[1], [[1, "2"]]), (rows[2], [[True, 1]])):
        assert row["contactHistogram"] is None
        assert orjson.loads(row[EXTRA_COLUMN]) == {"contactHistogram": sent}


def test_a_scalar_in_a_json_text_column_goes_to_extra() -> None:
    row = Normalizer("event").to_batch([_record("event", 1, payload="text")]).table.to_pylist()[0]
    assert row["payload"] is None and orjson.loads(row[EXTRA_COLUMN]) == {"payload": "text"}


def test_declared_custom_fields_are_columns_and_the_rest_extra() -> None:
    for name in ("prospect", "account", "opportunity"):
        names = arrow_schema(name).names
        assert {f"custom{i}" for i in range(1, 151)} <= set(names)
        assert "custom151" not in names
    row = (
        Normalizer("prospect")
        .to_batch([_record("prospect", 1, custom150="x", custom151="y")])
        .table.to_pylist()[0]
    )
    assert row["custom150"] == "x" and orjson.loads(row[EXTRA_COLUMN]) == {"custom151": "y"}


# ------------------------------------------------------------------ every type normalizes


_SAMPLE: dict[Kind, Any] = {
    Kind.INTEGER: 7,
    Kind.NUMBER: 1.5,
    Kind.BOOLEAN: True,
    Kind.STRING: "text",
    Kind.DATETIME: "2024-05-01T10:00:00.000Z",
    Kind.DATE: "2024-05-01",
    Kind.STRING_LIST: ["a", "b"],
    Kind.INTEGER_LISTS: [[1, 2], [3, 4]],
}


def _sample(attribute: schema.Attribute) -> Any:
    if attribute.kind is not Kind.OBJECT:
        return _SAMPLE[attribute.kind]
    assert attribute.wire is not None
    member = {name: _SAMPLE[kind] for name, kind in attribute.wire.fields} or {"any": 1}
    return [member] if attribute.wire.form is WireForm.OBJECT_LIST else member


def _full_record(name: str) -> dict[str, Any]:
    rtype = resource_type(name)
    relationships: dict[str, Any] = {}
    for n, rel in enumerate(rtype.relationships, start=1):
        identifier = {"type": rel.target, "id": str(100 + n)}
        if rel.shape is Shape.TO_ONE:
            relationships[rel.name] = {"data": identifier}
        elif rel.shape is Shape.TO_MANY:
            relationships[rel.name] = {"data": [identifier, {**identifier, "id": 200 + n}]}
        else:
            relationships[rel.name] = {"links": {"related": f"http://127.0.0.1/{rel.name}"}}
    record_id = "0b5c6f0e-6c1e-4c7a-9a55-3f1f1f6b2a10" if rtype.id_kind is Kind.STRING else 9
    return {
        "type": name,
        "id": record_id,
        "attributes": {a.name: _sample(a) for a in rtype.attributes},
        "relationships": relationships,
    }


@pytest.mark.parametrize("name", schema.readable_types())
def test_every_type_normalizes_every_attribute_and_relationship(name: str) -> None:
    layout = table_layout(name)
    assert len(set(layout.schema.names)) == len(layout.schema.names)
    batch = Normalizer(name).to_batch([_full_record(name)])
    row = batch.table.to_pylist()[0]
    assert row[EXTRA_COLUMN] is None and batch.extra_values == 0, row[EXTRA_COLUMN]
    for attribute in layout.attributes:
        assert row[attribute.name] is not None, attribute.name
    rtype = resource_type(name)
    with_data = [r for r in rtype.relationships if r.shape is not Shape.LINKS]
    assert len(layout.to_one) + len(layout.to_many) == len(with_data)
    for n, rel in enumerate(rtype.relationships, start=1):
        columns = [c.column for c in (*layout.to_one, *layout.to_many) if c.relationship == rel]
        if rel.shape is Shape.LINKS:
            assert columns == []
        elif rel.shape is Shape.TO_ONE:
            assert row[columns[0]] == 100 + n
        else:
            assert row[columns[0]] == [100 + n, 200 + n]
    if rtype.id_kind is Kind.STRING:
        assert batch.ids == [] and batch.uuids == [row["id"]]
    else:
        assert batch.ids == [9] and batch.uuids == []


def test_a_uuid_type_refuses_a_non_string_id() -> None:
    with pytest.raises(ResponseError, match="UUID"):
        Normalizer("auditLog").to_batch([_record("auditLog", 5)])


def test_a_polymorphic_relationship_keeps_its_first_type_as_id_and_the_others_whole() -> None:
    subject = resource_type("task").relationship("subject")
    assert subject is not None and subject.polymorphic
    assert subject.targets == ("account", "opportunity", "prospect")
    assert subject.target == "account"
    records = []
    for n, target in enumerate(subject.targets, start=1):
        record = _record("task", n)
        record["relationships"]["subject"] = {"data": {"type": target, "id": 40 + n}}
        records.append(record)
    rows = Normalizer("task").to_batch(records).table.to_pylist()
    assert rows[0]["subjectId"] == 41 and rows[0][EXTRA_COLUMN] is None
    for row, target, n in zip(rows[1:], subject.targets[1:], (2, 3), strict=True):
        assert row["subjectId"] is None
        assert orjson.loads(row[EXTRA_COLUMN]) == {
            "relationships.subject": {"data": {"type": target, "id": 40 + n}}
        }


def test_relationships_to_types_without_a_collection_still_get_id_columns() -> None:
    readable = set(schema.readable_types())
    unlisted = [
        (name, rel)
        for name in schema.readable_types()
        for rel in resource_type(name).relationships
        if rel.shape is not Shape.LINKS and rel.target not in readable
    ]
    assert unlisted  # e.g. a user's `phones`, an event's `note`
    for name, rel in unlisted:
        layout = table_layout(name)
        assert any(c.relationship == rel for c in (*layout.to_one, *layout.to_many))


# ------------------------------------------------------------------ incremental facts


def _hyper_flag(name: str, attr: str, flag: str) -> bool:
    definitions = schema.hyper_schema_document()["definitions"][name].get("definitions", {})
    return bool(definitions.get(attr, {}).get(flag))


def test_incremental_strategy_follows_the_schema() -> None:
    for name in schema.readable_types():
        strategy = schema.incremental_strategy(name)
        rtype = resource_type(name)
        assert strategy.reason
        filterable = _hyper_flag(name, "updatedAt", "filterable")
        assert rtype.updated_at_filterable == filterable
        assert rtype.updated_at_sortable == _hyper_flag(name, "updatedAt", "sortable")
        assert (strategy.mode is Incremental.UPDATED_AT) == filterable, name
        if strategy.mode is Incremental.APPEND_ONLY:
            assert strategy.attribute is not None
            assert rtype.attribute("updatedAt") is None
            assert _hyper_flag(name, strategy.attribute, "filterable")
        if strategy.mode is Incremental.RELIST:
            assert strategy.attribute is None
    modes = {n: schema.incremental_strategy(n) for n in schema.readable_types()}
    assert (modes["auditLog"].mode, modes["auditLog"].attribute) == (
        Incremental.APPEND_ONLY,
        "timestamp",
    )
    assert (modes["event"].mode, modes["event"].attribute) == (Incremental.APPEND_ONLY, "createdAt")
    assert modes["sequenceTemplate"].mode is Incremental.RELIST  # updatedAt, not filterable
    assert modes["prospectNote"].mode is Incremental.RELIST  # editable, no updatedAt
    assert modes["duty"].mode is Incremental.RELIST  # no time attribute at all
    assert all(modes[n].mode is Incremental.UPDATED_AT for n in NINE if n != "sequenceTemplate")
