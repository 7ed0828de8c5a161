"""A sequence step as restore reads and writes it: the writable fields (from the OpenAPI file), read from a backup row or a target record, and the bodies of a create and a patch."""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from datetime import date, datetime
from functools import cache
from typing import Any

import orjson

from exporter.core.times import iso_exact
from exporter.model.normalize import (
    EXTRA_COLUMN,
    table_layout,
)
from exporter.model.schema import Shape, resource_type

# Restore puts back sequence steps only, whatever root the export crawled (`root_type`): every
# plan, write and lookup below is of this one type.
STEP = "sequenceStep"


@dataclass(frozen=True)
class WritableFields:
    """The attributes and to-one relationships of a step that a write may set."""

    attributes: tuple[str, ...]
    relationships: tuple[tuple[str, str, str], ...]  # (relationship, target type, column)

    @property
    def names(self) -> tuple[str, ...]:
        return self.attributes + tuple(name for name, _t, _c in self.relationships)


@cache
def writable_fields() -> WritableFields:
    layout = table_layout(STEP)
    attributes = tuple(a.name for a in resource_type(STEP).attributes if not a.read_only)
    relationships = tuple(
        (c.relationship.name, c.relationship.target, c.column)
        for c in layout.to_one
        if not c.relationship.read_only and c.relationship.shape is Shape.TO_ONE
    )
    return WritableFields(attributes, relationships)


Values = dict[str, Any]  # writable field -> value as on the wire (relationships: the id or None)


def _wire(value: Any) -> Any:
    if isinstance(value, datetime):
        return iso_exact(value)  # a timestamp[us, UTC] column: always aware, in UTC
    if isinstance(value, date):
        return value.isoformat()
    return value


def values_of_row(row: dict[str, Any]) -> Values:
    """A backup row's writable fields; a value the column could not hold is taken from `_extra`."""
    fields = writable_fields()
    extra: dict[str, Any] = {}
    if row.get(EXTRA_COLUMN):
        with contextlib.suppress(orjson.JSONDecodeError):
            loaded = orjson.loads(row[EXTRA_COLUMN])
            extra = loaded if isinstance(loaded, dict) else {}
    values: Values = {}
    for name in fields.attributes:
        value = row.get(name)
        values[name] = extra[name] if value is None and name in extra else _wire(value)
    for name, _target, column in fields.relationships:
        values[name] = row.get(column)
    return values


def values_of_record(record: dict[str, Any]) -> Values:
    """A target record's writable fields, as the API sent them."""
    fields = writable_fields()
    attributes = record.get("attributes") or {}
    relationships = record.get("relationships") or {}
    values: Values = {name: attributes.get(name) for name in fields.attributes}
    for name, _target, _column in fields.relationships:
        data = (relationships.get(name) or {}).get("data")
        values[name] = _identifier(data)
    return values


def values_of_body(body: dict[str, Any]) -> Values:
    """The writable fields a create or patch body sets."""
    data = body.get("data") or {}
    values: Values = dict(data.get("attributes") or {})
    for name, relationship in (data.get("relationships") or {}).items():
        values[name] = _identifier(relationship.get("data"))
    return values


def _identifier(data: Any) -> int | None:
    if not isinstance(data, dict):
        return None
    raw = data.get("id")
    if type(raw) is int:
        return raw
    if isinstance(raw, str) and raw.isdigit():
        return int(raw)
    return None


def differences(backup: Values, target: Values) -> dict[str, tuple[Any, Any]]:
    """Field -> (target's value, backup's value) for every writable field that differs."""
    return {
        name: (target.get(name), backup.get(name))
        for name in writable_fields().names
        if target.get(name) != backup.get(name)
    }


def create_body(values: Values) -> dict[str, Any]:
    """A POST body: every writable attribute (nulls too) and relationship, as identifiers."""
    fields = writable_fields()
    relationships = {
        name: {"data": None if values.get(name) is None else {"type": t, "id": values[name]}}
        for name, t, _column in fields.relationships
    }
    attributes = {name: values.get(name) for name in fields.attributes}
    return {"data": {"type": STEP, "attributes": attributes, "relationships": relationships}}


def patch_body(target_id: int, changes: Values) -> dict[str, Any]:
    """A PATCH body setting only `changes` (the fields that differ)."""
    fields = writable_fields()
    targets = {name: t for name, t, _column in fields.relationships}
    data: dict[str, Any] = {"type": STEP, "id": target_id}
    attributes = {k: v for k, v in changes.items() if k not in targets}
    relationships = {
        k: {"data": None if v is None else {"type": targets[k], "id": v}}
        for k, v in changes.items()
        if k in targets
    }
    if attributes:
        data["attributes"] = attributes
    if relationships:
        data["relationships"] = relationships
    return {"data": data}


def lookup_key(values: Values) -> dict[str, Any]:
    return {
        "sequence": values.get("sequence"),
        "order": values.get("order"),
        "stepType": values.get("stepType"),
    }
