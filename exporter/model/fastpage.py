"""The fast path from a page's bytes to an Arrow table: Arrow's C++ JSON reader with an explicit schema.

`normalize.Normalizer` turns parsed JSON (Python dicts) into Arrow; this module skips the dicts.
The whole page is read by `pyarrow.json` against a schema derived from the same layout (strings
for date-times and dates, which are then cast exactly as the slow path casts them), and the
columns are taken out of the nested structs without a Python loop per value. It releases the
GIL, so pages parse on another core while the event loop serves the network.

It answers for every page shape the API may send, as long as the slow path would put nothing in
`_extra`: members the slow path ignores are ignored here too (it never reads them): the page's
`meta`, `included` and `jsonapi`; a record's `links` (`self`) and `meta`; a relationship's
`links` and `meta` beside its `data` (JSON:API allows both, and the reference page says "data or
links"); links-only relationships whatever they carry; extra members of a resource identifier.
Anything the slow path treats specially makes it return None, and the caller parses the page
the slow way, which keeps the exact rules (and the error messages): a value of the wrong JSON
type, a string id, a record of another type, a relationship identifier of another type than its
target, an unknown attribute or relationship (kept in `_extra` by the slow path), an `object`
attribute (its JSON text is rebuilt from the parsed value: a missing member and a null one are
one and the same to Arrow), a date-time that does not parse. Tests hold the two paths to the
same tables, and every run counts its pages per path (`PagePaths`, the manifest's
`stats.page_paths`), so a shape that falls to the slow path shows.
"""

from __future__ import annotations

import io
import threading
from dataclasses import dataclass, field
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
_LINKS = pa.struct([("related", pa.string())])
_RECORD_MEMBERS = ("type", "id", "attributes", "relationships")

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
    relationships: frozenset[str]  # every relationship of the type, links-only ones too


@cache
def wire_layout(type_name: str) -> WireLayout | None:
    """None for a type with an `object` attribute (its JSON text is the slow path's to make).

    Declared: what is read (a relationship's `data`), and a links-only relationship's
    `links.related` as the OpenAPI file has it (a string), which is not read but costs less
    declared than inferred (5% of a page of mailings). Anything else (`links` beside `data`,
    `meta`) is left to the reader, which adds whatever it meets, and ignored."""
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
        else:  # not read, but declared as the OpenAPI file has it: inferring costs more
            relationship_fields.append((rel.name, pa.struct([("links", _LINKS)])))
    record = pa.struct(
        [
            ("type", pa.string()),
            ("id", pa.int64()),
            ("attributes", attributes),
            ("relationships", pa.struct(relationship_fields)),
        ]
    )
    schema = pa.schema([("data", pa.list_(record))])
    names = frozenset(r.name for r in resource_type(type_name).relationships)
    return WireLayout(layout, schema, attributes, names)


@dataclass
class PagePaths:
    """How many pages of a run each path read: the fast one (`read_page`) or the slow one.

    Counted by `PageReader`, which runs in worker threads, hence the lock."""

    fast: int = 0
    slow: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)

    def count(self, *, fast: bool) -> None:
        with self._lock:
            if fast:
                self.fast += 1
            else:
                self.slow += 1

    def to_json(self) -> dict[str, int]:
        """As the manifest's `stats.page_paths` holds it."""
        with self._lock:
            return {"fast": self.fast, "slow": self.slow}


@dataclass
class FastPage:
    batch: NormalizedBatch
    links: dict[str, Any] | None
    meta: dict[str, Any] | None = None


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
    try:
        batch = _columns(wire, items)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
        return None  # e.g. a date-time that does not parse: the slow path keeps it in _extra
    if batch is None:
        return None
    return FastPage(batch, _member(table, "links"), _member(table, "meta"))


def _member(table: pa.Table, name: str) -> dict[str, Any] | None:
    """A page-level object (`links`, `meta`) as the slow path reads it: a dict, else None."""
    if name not in table.column_names:
        return None
    value = table.column(name)[0].as_py()
    return value if isinstance(value, dict) else None


def _children(array: pa.StructArray) -> dict[str, pa.Array]:
    """A struct's members by name, each null where the struct is (`flatten` merges them)."""
    return dict(zip([f.name for f in array.type], array.flatten(), strict=True))


def _identifiers(data: pa.Array) -> tuple[pa.Array, pa.Array] | None:
    """The `type` and `id` of resource identifiers (read as structs; members beyond these two
    are ignored, as the slow path ignores them); None when they are not a string and an int."""
    if not pa.types.is_struct(data.type):
        return None
    members = _children(data)
    types, ids = members.get("type"), members.get("id")
    if types is None or ids is None or types.type != pa.string() or ids.type != pa.int64():
        return None
    return types, ids


def _columns(wire: WireLayout, items: pa.StructArray) -> NormalizedBatch | None:
    layout = wire.layout
    # Record members beyond the four (`links`, `meta`) are ignored by the slow path too.
    fields = _children(items)
    if not set(_RECORD_MEMBERS) <= fields.keys():
        return None
    types, ids = fields["type"], fields["id"]
    n = len(items)
    if n and (types.null_count or not pc.all(pc.equal(types, layout.type_name)).as_py()):
        return None  # another type: the slow path raises the error that names it
    if ids.null_count or (n and pc.min(ids).as_py() <= 0):
        return None
    attributes, relationships = fields["attributes"], fields["relationships"]
    if attributes.type != wire.attributes:
        return None  # an unknown attribute: the slow path keeps it in _extra
    if not pa.types.is_struct(relationships.type):
        return None
    by_name = _children(relationships)
    if not by_name.keys() <= wire.relationships:
        return None  # an unknown relationship: the slow path keeps it in _extra
    columns: list[pa.Array] = [ids]
    for attribute, values in zip(layout.attributes, attributes.flatten(), strict=True):
        if attribute.kind in (Kind.DATETIME, Kind.DATE):
            values = values.cast(layout.schema.field(attribute.name).type)
        columns.append(values)
    for column in layout.to_one:
        data = _children(by_name[column.relationship.name])["data"]
        identifier = _identifiers(data)
        if identifier is None:
            return None
        identifier_type, identifier_id = identifier
        if pc.any(pc.and_(identifier_id.is_null(), data.is_valid())).as_py():
            return None  # an identifier without an id
        if not _all_of_type(identifier_type, data.is_valid(), column.relationship.target):
            return None  # an identifier of another type: the slow path keeps it in _extra
        columns.append(identifier_id)
    for column in layout.to_many:
        data = _children(by_name[column.relationship.name])["data"]
        if not pa.types.is_list(data.type):
            return None
        identifiers = data.flatten()
        found = _identifiers(identifiers)
        if found is None:
            return None
        identifier_types, identifier_ids = found
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
    meta: dict[str, Any] | None = None
    fast: bool = False  # read by `read_page` (else parsed and normalized)


class PageReader:
    """A collection page's body to normalized rows: the fast path, else parsed and normalized;
    each page counted in `paths` (when given) by the path that read it."""

    def __init__(self, normalizer: Normalizer, url: str, paths: PagePaths | None = None) -> None:
        self.normalizer = normalizer
        self.url = url
        self.paths = paths

    def __call__(self, body: bytes, content_type: str) -> ParsedPage:
        check_json_content(content_type)
        fast = read_page(body, self.normalizer.type_name)
        if fast is not None:
            if self.paths is not None:
                self.paths.count(fast=True)
            return ParsedPage(fast.batch, fast.links, fast.meta, fast=True)
        document = parse_document(body, content_type)  # RetriableError when malformed
        records = page_records(document, self.url)
        batch = self.normalizer.to_batch(records)  # ResponseError: the page is not counted
        if self.paths is not None:
            self.paths.count(fast=False)
        links, meta = document.get("links"), document.get("meta")
        return ParsedPage(
            batch,
            links if isinstance(links, dict) else None,
            meta if isinstance(meta, dict) else None,
        )
