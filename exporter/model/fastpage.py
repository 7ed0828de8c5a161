"""The fast path from a page's bytes to an Arrow table: Arrow's C++ JSON reader with an explicit schema.

`normalize.Normalizer` turns parsed JSON (Python dicts) into Arrow; this module skips the dicts.
The whole page is read by `pyarrow.json` against a schema derived from the same layout (strings
for date-times and dates, which are then cast exactly as the slow path casts them), and the
columns are taken out of the nested structs without a Python loop per value. It releases the
GIL, so pages parse on another core while the event loop serves the network.

It only ever answers for regular pages. Anything the slow path would treat specially makes it
return None, and the caller parses the page the slow way, which keeps the exact rules (and the
error messages): a value of the wrong JSON type, a string id, a record of another type, a
relationship identifier of another type than its target, an unknown attribute or relationship (kept in `_extra` by the slow path), an `object` attribute,
a date-time that does not parse. Tests hold the two paths to the same tables.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from functools import cache
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.json as pj

from exporter.api.documents import check_json_content, page_records, parse_document
from exporter.model.normalize import (
    EXTRA_COLUMN,
    NormalizedBatch,
    Normalizer,
    TableLayout,
    table_layout,
)
from exporter.model.schema import Kind, Shape, resource_type

_IDENTIFIER = pa.struct([("type", pa.string()), ("id", pa.int64())])

_WIRE_TYPES: dict[Kind, pa.DataType] = {
    Kind.INTEGER: pa.int64(),
    Kind.NUMBER: pa.float64(),
    Kind.BOOLEAN: pa.bool_(),
    Kind.STRING: pa.string(),
    Kind.DATETIME: pa.string(),
    Kind.DATE: pa.string(),
    Kind.STRING_LIST: pa.list_(pa.string()),
    Kind.INTEGER_LISTS: pa.list_(pa.list_(pa.int64())),  # a prospect's contactHistogram
}


@dataclass(frozen=True)
class WireLayout:
    """The explicit schema a page of one type is read with, and what it holds."""

    layout: TableLayout
    schema: pa.Schema
    attributes: pa.DataType
    relationships: pa.DataType


@cache
def wire_layout(type_name: str) -> WireLayout | None:
    """None for a type with an `object` attribute (its JSON text is the slow path's to make)."""
    layout = table_layout(type_name)
    if any(a.kind is Kind.OBJECT for a in layout.attributes):
        return None
    attributes = pa.struct([(a.name, _WIRE_TYPES[a.kind]) for a in layout.attributes])
    relationship_fields = []
    for rel in resource_type(type_name).relationships:
        if rel.shape is Shape.TO_ONE:
            relationship_fields.append((rel.name, pa.struct([("data", _IDENTIFIER)])))
        elif rel.shape is Shape.TO_MANY:
            relationship_fields.append((rel.name, pa.struct([("data", pa.list_(_IDENTIFIER))])))
        else:
            related = pa.struct([("related", pa.string())])
            relationship_fields.append((rel.name, pa.struct([("links", related)])))
    relationships = pa.struct(relationship_fields)
    record = pa.struct(
        [
            ("type", pa.string()),
            ("id", pa.int64()),
            ("attributes", attributes),
            ("relationships", relationships),
        ]
    )
    schema = pa.schema([("data", pa.list_(record))])
    return WireLayout(layout, schema, attributes, relationships)


@dataclass
class FastPage:
    batch: NormalizedBatch
    links: dict[str, Any] | None


def read_page(body: bytes, type_name: str) -> FastPage | None:
    """The page's records as a typed table, or None when the slow path must decide."""
    wire = wire_layout(type_name)
    if wire is None or not body:
        return None
    try:
        table = pj.read_json(
            io.BytesIO(body),
            read_options=pj.ReadOptions(block_size=len(body) + 1, use_threads=False),
            parse_options=pj.ParseOptions(
                explicit_schema=wire.schema,
                unexpected_field_behavior="infer",
                newlines_in_values=True,
            ),
        )
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError, pa.ArrowTypeError):
        return None
    if table.num_rows != 1:
        return None
    records = table.column("data").combine_chunks()
    if records.null_count or not pa.types.is_list(records.type):
        return None
    items: pa.StructArray = records.flatten()
    if items.type.num_fields != 4 and not _only_record_level_extras(items.type):
        return None
    try:
        batch = _columns(wire, items)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
        return None  # e.g. a date-time that does not parse: the slow path keeps it in _extra
    if batch is None:
        return None
    links = None
    if "links" in table.column_names:
        value = table.column("links")[0].as_py()
        links = value if isinstance(value, dict) else None
    return FastPage(batch, links)


def _only_record_level_extras(record_type: pa.DataType) -> bool:
    """Record-level keys beyond the four (`links`, `meta`) are ignored by the slow path too."""
    names = {record_type.field(i).name for i in range(record_type.num_fields)}
    return {"type", "id", "attributes", "relationships"} <= names


def _columns(wire: WireLayout, items: pa.StructArray) -> NormalizedBatch | None:
    layout = wire.layout
    fields = dict(
        zip(
            [items.type.field(i).name for i in range(items.type.num_fields)],
            items.flatten(),
            strict=True,
        )
    )
    types, ids = fields["type"], fields["id"]
    n = len(items)
    if n and (types.null_count or not pc.all(pc.equal(types, layout.type_name)).as_py()):
        return None  # another type: the slow path raises the error that names it
    if ids.null_count or (n and pc.min(ids).as_py() <= 0):
        return None
    attributes, relationships = fields["attributes"], fields["relationships"]
    if attributes.type != wire.attributes or relationships.type != wire.relationships:
        return None  # an unknown attribute or relationship: the slow path keeps it in _extra
    columns: list[pa.Array] = [ids]
    for attribute, values in zip(layout.attributes, attributes.flatten(), strict=True):
        if attribute.kind in (Kind.DATETIME, Kind.DATE):
            values = values.cast(layout.schema.field(attribute.name).type)
        columns.append(values)
    by_name = dict(
        zip(
            [wire.relationships.field(i).name for i in range(wire.relationships.num_fields)],
            relationships.flatten(),
            strict=True,
        )
    )
    for column in layout.to_one:
        data = by_name[column.relationship.name].flatten()[0]
        identifier_type, identifier_id = data.flatten()
        if pc.any(pc.and_(identifier_id.is_null(), data.is_valid())).as_py():
            return None  # an identifier without an id
        if not _all_of_type(identifier_type, data.is_valid(), column.relationship.target):
            return None  # an identifier of another type: the slow path keeps it in _extra
        columns.append(identifier_id)
    for column in layout.to_many:
        data = by_name[column.relationship.name].flatten()[0]
        identifiers = data.flatten()
        identifier_types, identifier_ids = identifiers.flatten()
        if identifier_ids.null_count or identifiers.null_count:
            return None
        if not _all_of_type(identifier_types, None, column.relationship.target):
            return None
        offsets = data.offsets
        columns.append(pa.ListArray.from_arrays(offsets, identifier_ids, mask=data.is_null()))
    columns.append(pa.nulls(n, pa.string()))
    assert layout.schema.field(len(columns) - 1).name == EXTRA_COLUMN
    table = pa.Table.from_arrays(columns, schema=layout.schema)
    return NormalizedBatch(table=table, ids=ids.to_pylist(), extra_values=0)


def _all_of_type(types: pa.Array, present: pa.Array | None, target: str) -> bool:
    """Every identifier (where `present`) names `target` as its type."""
    if len(types) == 0:
        return True
    matches = pc.fill_null(pc.equal(types, target), False)
    if present is not None:
        matches = pc.or_(matches, pc.invert(present))
    return bool(pc.all(matches).as_py())


@dataclass
class ParsedPage:
    batch: NormalizedBatch
    links: dict[str, Any] | None


class PageReader:
    """A collection page's body to normalized rows: the fast path, else parsed and normalized."""

    def __init__(self, normalizer: Normalizer, url: str) -> None:
        self.normalizer = normalizer
        self.url = url

    def __call__(self, body: bytes, content_type: str) -> ParsedPage:
        check_json_content(content_type)
        fast = read_page(body, self.normalizer.type_name)
        if fast is not None:
            return ParsedPage(fast.batch, fast.links)
        document = parse_document(body, content_type)  # RetriableError when malformed
        records = page_records(document, self.url)
        links = document.get("links")
        return ParsedPage(
            self.normalizer.to_batch(records), links if isinstance(links, dict) else None
        )
