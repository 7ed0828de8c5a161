"""JSON:API records to typed Arrow tables, one row per record, with schemas derived from the OpenAPI file.

Pure: values in, values out, no I/O. The rules (README, "Data model"; docs/data-model.md):
- `id` int64 (string for a type whose ids are UUIDs: auditLog); attributes typed by their
  OpenAPI kind: integer -> int64, number -> float64, boolean -> bool, string -> string,
  date-time -> timestamp[us, UTC], date -> date32, array of strings -> list<string>, array
  of integer arrays -> list<list<int64>>, object or array of objects -> JSON text. Where the
  OpenAPI file is vague, `schema.WIRE_SHAPES` says what the API sends.
- a to-one relationship with `data` -> `<relationship>Id` int64 (null when `data` is null);
  a to-many one -> `<target>Ids` list<int64>; links-only relationships carry no data and no
  column. A polymorphic relationship's column holds ids of its first listed type.
- anything the schema does not know (an unknown attribute or relationship, custom fields
  beyond those declared), and any value that does not fit its column's type, goes to the
  `_extra` JSON column under its name: kept, never dropped, and counted so the manifest can
  say so. A JSON-text column takes an object or an array; a scalar does not fit it.
- a relationship identifier of another `type` than the relationship's target (or with no type,
  or a bad id) is not stored as an id: the column is null (a list leaves it out) and the
  relationship as sent goes to `_extra`.
- a record of another `type`, or with an id that is not an integer (a string, for UUID
  types), stops the export.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import cache
from typing import Any

import orjson
import pyarrow as pa

from exporter.core.errors import ResponseError
from exporter.model.schema import Attribute, Kind, Relationship, Shape, resource_type

EXTRA_COLUMN = "_extra"
_INT64_MIN = -(2**63)
_INT64_MAX = 2**63 - 1

_ARROW_TYPES: dict[Kind, pa.DataType] = {
    Kind.INTEGER: pa.int64(),
    Kind.NUMBER: pa.float64(),
    Kind.BOOLEAN: pa.bool_(),
    Kind.STRING: pa.string(),
    Kind.DATETIME: pa.timestamp("us", tz="UTC"),
    Kind.DATE: pa.date32(),
    Kind.STRING_LIST: pa.list_(pa.string()),
    Kind.INTEGER_LISTS: pa.list_(pa.list_(pa.int64())),
    Kind.OBJECT: pa.string(),
}
_UUID_MAX_LENGTH = 255


@dataclass(frozen=True)
class RelationshipColumn:
    relationship: Relationship
    column: str


@dataclass(frozen=True)
class TableLayout:
    """The columns of one resource type's table, in order."""

    type_name: str
    attributes: tuple[Attribute, ...]
    to_one: tuple[RelationshipColumn, ...]
    to_many: tuple[RelationshipColumn, ...]
    schema: pa.Schema = field(compare=False)


@cache
def table_layout(type_name: str) -> TableLayout:
    """Column layout and Arrow schema for a resource type (cached; derived from the OpenAPI file)."""
    rtype = resource_type(type_name)
    taken = {"id", EXTRA_COLUMN} | {a.name for a in rtype.attributes}
    to_one: list[RelationshipColumn] = []
    to_many: list[RelationshipColumn] = []
    for rel in rtype.relationships:
        if rel.shape is Shape.LINKS:
            continue
        if rel.shape is Shape.TO_ONE:
            candidates = [f"{rel.name}Id", f"{rel.name}_id"]
        else:
            candidates = [f"{rel.target}Ids", f"{rel.name}Ids", f"{rel.name}_ids"]
        column = next(c for c in candidates if c not in taken)
        taken.add(column)
        (to_one if rel.shape is Shape.TO_ONE else to_many).append(RelationshipColumn(rel, column))

    fields = [pa.field("id", _ARROW_TYPES[rtype.id_kind], nullable=False)]
    fields += [pa.field(a.name, _ARROW_TYPES[a.kind]) for a in rtype.attributes]
    fields += [pa.field(c.column, pa.int64()) for c in to_one]
    fields += [pa.field(c.column, pa.list_(pa.int64())) for c in to_many]
    fields.append(pa.field(EXTRA_COLUMN, pa.string()))
    metadata = {b"outreach.type": type_name.encode()}
    return TableLayout(
        type_name=type_name,
        attributes=rtype.attributes,
        to_one=tuple(to_one),
        to_many=tuple(to_many),
        schema=pa.schema(fields, metadata=metadata),
    )


TOMBSTONE_TYPE = "_tombstone"
TOMBSTONE_SCHEMA = pa.schema(
    [
        pa.field("type", pa.string(), nullable=False),
        pa.field("id", pa.int64(), nullable=False),
        pa.field("detected_at", pa.timestamp("us", tz="UTC"), nullable=False),
        pa.field("run_id", pa.string(), nullable=False),
    ],
    metadata={b"outreach.type": TOMBSTONE_TYPE.encode()},
)


def arrow_schema(type_name: str) -> pa.Schema:
    if type_name == TOMBSTONE_TYPE:
        return TOMBSTONE_SCHEMA
    return table_layout(type_name).schema


@dataclass
class NormalizedBatch:
    table: pa.Table
    ids: list[int]  # the records' ids, in order (empty for a type with UUID ids)
    extra_values: int  # values kept in `_extra` (unknown or ill-typed)
    uuids: list[str] = field(default_factory=list)  # the ids of a type with UUID ids (auditLog)


def record_id(record: dict[str, Any], type_name: str) -> int:
    """The record's integer id; anything else is a `ResponseError`."""
    raw = record.get("id")
    if type(raw) is int:
        value = raw
    elif isinstance(raw, str) and raw.isascii() and raw.isdigit() and len(raw) < 19:
        value = int(raw)
    else:
        shown = repr(raw)[:40]
        raise ResponseError(f"a {type_name} record has a non-integer id {shown}")
    if not 0 < value <= _INT64_MAX:
        raise ResponseError(f"a {type_name} record has an out-of-range id {value}")
    return value


def record_uuid(record: dict[str, Any], type_name: str) -> str:
    """The id of a record of a type whose ids are UUID strings; anything else is a `ResponseError`."""
    raw = record.get("id")
    if isinstance(raw, str) and 0 < len(raw) <= _UUID_MAX_LENGTH and raw.isprintable():
        return raw
    shown = repr(raw)[:40]
    raise ResponseError(f"a {type_name} record has an id {shown} that is not a UUID string")


def check_type(record: Any, type_name: str) -> dict[str, Any]:
    if not isinstance(record, dict):
        raise ResponseError(f"expected a {type_name} record object, got {type(record).__name__}")
    found = record.get("type")
    if found != type_name:
        shown = repr(found)[:60]
        raise ResponseError(
            f"the API returned a record of type {shown} where {type_name!r} was asked for; "
            "refusing to write it as a " + type_name
        )
    return record


def _is_int64(value: Any) -> bool:
    return type(value) is int and _INT64_MIN <= value <= _INT64_MAX


def _fits(kind: Kind, value: Any) -> bool:
    if kind is Kind.INTEGER:
        return _is_int64(value)
    if kind is Kind.NUMBER:
        return type(value) in (int, float)
    if kind is Kind.BOOLEAN:
        return type(value) is bool
    if kind is Kind.STRING_LIST:
        return type(value) is list and all(type(v) is str for v in value)
    if kind is Kind.INTEGER_LISTS:
        return type(value) is list and all(
            type(v) is list and all(_is_int64(n) for n in v) for v in value
        )
    if kind is Kind.OBJECT:
        # JSON text keeps an object or an array whole, whichever WIRE_SHAPES expects.
        return type(value) in (dict, list)
    return type(value) is str  # STRING, DATETIME, DATE


def _typed_column(
    attribute: Attribute, values: list[Any], extras: list[dict[str, Any] | None]
) -> pa.Array:
    """One attribute's column; ill-typed values become null here and are kept in `extras`."""
    kind = attribute.kind
    bad = [i for i, v in enumerate(values) if v is not None and not _fits(kind, v)]
    for i in bad:
        _keep(extras, i, attribute.name, values[i])
        values[i] = None
    if kind is Kind.OBJECT:
        values = [
            None if v is None else orjson.dumps(v, option=orjson.OPT_SORT_KEYS).decode()
            for v in values
        ]
    if kind in (Kind.DATETIME, Kind.DATE):
        target = _ARROW_TYPES[kind]
        strings = pa.array(values, pa.string())
        try:
            return strings.cast(target)
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
            # Parse one by one to find the culprits; the rest of the column keeps its values.
            parsed: list[Any] = []
            for i, v in enumerate(values):
                if v is None:
                    parsed.append(None)
                    continue
                try:
                    parsed.append(pa.array([v], pa.string()).cast(target)[0].as_py())
                except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
                    _keep(extras, i, attribute.name, v)
                    parsed.append(None)
            return pa.array(parsed, target)
    return pa.array(values, _ARROW_TYPES[kind])


def _keep(extras: list[dict[str, Any] | None], index: int, key: str, value: Any) -> None:
    slot = extras[index]
    if slot is None:
        slot = extras[index] = {}
    slot[key] = value


def _identifier_id(identifier: Any, target: str) -> int | None:
    """The id of a resource identifier of type `target`; None for anything else (another type,
    no type, a bad id): the caller keeps the relationship as sent in `_extra`."""
    if not isinstance(identifier, dict) or identifier.get("type") != target:
        return None
    raw = identifier.get("id")
    if type(raw) is int and 0 < raw <= _INT64_MAX:
        return raw
    if isinstance(raw, str) and raw.isascii() and raw.isdigit() and len(raw) < 19:
        return int(raw)
    return None


class Normalizer:
    """Turns pages of JSON:API records of one type into Arrow tables with a fixed schema."""

    def __init__(self, type_name: str) -> None:
        self.type_name = type_name
        self.layout = table_layout(type_name)
        self._known_attributes = frozenset(a.name for a in self.layout.attributes)
        rtype = resource_type(type_name)
        self._known_relationships = frozenset(r.name for r in rtype.relationships)
        self._uuid_ids = rtype.id_kind is Kind.STRING

    @property
    def schema(self) -> pa.Schema:
        return self.layout.schema

    def to_batch(self, records: Sequence[Any]) -> NormalizedBatch:
        n = len(records)
        ids: list[int] = []
        uuids: list[str] = []
        attributes: list[dict[str, Any]] = []
        relationships: list[dict[str, Any]] = []
        extras: list[dict[str, Any] | None] = [None] * n
        for i, raw in enumerate(records):
            record = check_type(raw, self.type_name)
            if self._uuid_ids:
                uuids.append(record_uuid(record, self.type_name))
            else:
                ids.append(record_id(record, self.type_name))
            attrs = record.get("attributes") or {}
            rels = record.get("relationships") or {}
            if not isinstance(attrs, dict):
                _keep(extras, i, "attributes", attrs)
                attrs = {}
            if not isinstance(rels, dict):
                _keep(extras, i, "relationships", rels)
                rels = {}
            for key in attrs.keys() - self._known_attributes:
                _keep(extras, i, key, attrs[key])
            for key in rels.keys() - self._known_relationships:
                _keep(extras, i, "relationships." + key, rels[key])
            attributes.append(attrs)
            relationships.append(rels)

        columns: list[pa.Array] = [
            pa.array(uuids, pa.string()) if self._uuid_ids else pa.array(ids, pa.int64())
        ]
        for attribute in self.layout.attributes:
            values = [a.get(attribute.name) for a in attributes]
            columns.append(_typed_column(attribute, values, extras))
        for column in self.layout.to_one:
            columns.append(pa.array(self._to_one(relationships, column, extras), pa.int64()))
        for column in self.layout.to_many:
            columns.append(
                pa.array(self._to_many(relationships, column, extras), pa.list_(pa.int64()))
            )
        extra_values = sum(len(e) for e in extras if e)
        columns.append(
            pa.array(
                [
                    None if e is None else orjson.dumps(e, option=orjson.OPT_SORT_KEYS).decode()
                    for e in extras
                ],
                pa.string(),
            )
        )
        table = pa.Table.from_arrays(columns, schema=self.layout.schema)
        return NormalizedBatch(table=table, ids=ids, extra_values=extra_values, uuids=uuids)

    @staticmethod
    def _to_one(
        relationships: list[dict[str, Any]],
        column: RelationshipColumn,
        extras: list[dict[str, Any] | None],
    ) -> list[int | None]:
        name = column.relationship.name
        out: list[int | None] = []
        for i, rels in enumerate(relationships):
            rel = rels.get(name)
            if rel is None:
                out.append(None)
                continue
            data = rel.get("data") if isinstance(rel, dict) else None
            target = column.relationship.target
            value = _identifier_id(data, target) if data is not None else None
            if data is not None and value is None:
                _keep(extras, i, "relationships." + name, rel)
            out.append(value)
        return out

    @staticmethod
    def _to_many(
        relationships: list[dict[str, Any]],
        column: RelationshipColumn,
        extras: list[dict[str, Any] | None],
    ) -> list[list[int] | None]:
        name = column.relationship.name
        out: list[list[int] | None] = []
        for i, rels in enumerate(relationships):
            rel = rels.get(name)
            data = rel.get("data") if isinstance(rel, dict) else None
            if data is None:
                out.append(None)  # no `data`: unknown, not "none"
                continue
            if not isinstance(data, list):
                _keep(extras, i, "relationships." + name, rel)
                out.append(None)
                continue
            ids = [_identifier_id(d, column.relationship.target) for d in data]
            if any(v is None for v in ids):
                _keep(extras, i, "relationships." + name, rel)
            out.append([v for v in ids if v is not None])
        return out
