"""Writes docs/data-model.md: every readable type's table, columns, types and joins, from the schema."""

from __future__ import annotations

import sys
from pathlib import Path

from exporter.export.links import step_links
from exporter.model.normalize import EXTRA_COLUMN, RelationshipColumn, table_layout
from exporter.model.schema import (
    INCREMENTAL_EXACTNESS,
    RESOURCE_TYPES,
    WIRE_SHAPES,
    Attribute,
    Kind,
    WireForm,
    incremental_strategy,
    readable_types,
    resource_type,
)


def _cell(text: str) -> str:
    return text.replace("|", "\\|")


def _shape(attribute: Attribute) -> str:
    """What a JSON-text or nested column holds, from its `WIRE_SHAPES` entry."""
    wire = attribute.wire
    if wire is None:
        return ""
    members = ", ".join(name for name, _ in wire.fields)
    if wire.form is WireForm.OBJECT_LIST:
        return f"JSON: an array of {{{members}}}" if members else "JSON: an array of objects"
    if wire.form is WireForm.OBJECT:
        return f"JSON: {{{members}}}" if members else "JSON: an object"
    return str(wire.form)


def _joins(column: RelationshipColumn, readable: set[str]) -> str:
    rel = column.relationship
    if rel.target not in readable:
        return f"ids of `{rel.target}` (a type the API lists no collection for)"
    to = f"{resource_type(rel.target).collection}.id"
    if rel.polymorphic:
        others = ", ".join(f"`{t}`" for t in rel.targets[1:])
        return f"{to} (polymorphic: identifiers of {others} are kept in `{EXTRA_COLUMN}`)"
    return to


def _walk() -> list[str]:
    lines = [
        "## How the tables join",
        "",
        "What the export walks from a step (each related table holds the records these name, or",
        "for links-only relationships, the records that name the exported steps):",
        "",
        "| from | column | to |",
        "|---|---|---|",
    ]
    for link in step_links():
        target = resource_type(link.target).collection
        if link.link_only:
            lines.append(f"| {target} | `sequenceStepId` | sequenceSteps.id |")
        else:
            lines.append(f"| sequenceSteps | `{link.column}` | {target}.id |")
    lines += [
        "",
        "Every other id column says in its table below which table it joins (it may name a record",
        "the export did not fetch: the walk follows the steps' relationships only).",
    ]
    return lines


def _incremental() -> list[str]:
    lines = [
        "## Reading each type",
        "",
        "The read scope a token needs for the collection, and how an incremental run finds what",
        "changed, derived from the schema's filterable attributes and the hyper-schema's links",
        "(`exporter.model.schema.incremental_strategy`). Why each mode is exact:",
        "",
        "| incremental | why it is exact |",
        "|---|---|",
    ]
    for mode, exact in INCREMENTAL_EXACTNESS.items():
        lines.append(f"| {mode} | {_cell(exact)} |")
    lines += [
        "",
        "| collection | type | read scope | incremental | by | because |",
        "|---|---|---|---|---|---|",
    ]
    for name in readable_types():
        rtype = resource_type(name)
        strategy = incremental_strategy(name)
        by = f"`{strategy.attribute}`" if strategy.attribute else ""
        lines.append(
            f"| {rtype.collection} | `{name}` | `{rtype.read_scope}` | {strategy.mode} | {by} "
            f"| {_cell(strategy.reason)} |"
        )
    return lines


def _wire_shapes() -> list[str]:
    lines = [
        "## Where the OpenAPI file is vague",
        "",
        "`exporter.model.schema.WIRE_SHAPES`, the one table of facts about the wire typed by hand:",
        "what the API sends where the OpenAPI file says only `object`, gives no item type, or lists",
        "something the API does not send. Objects and arrays of objects are kept as JSON text",
        "(their members vary by record); the simulator generates these shapes.",
        "",
        "| type | field | on the wire | source |",
        "|---|---|---|---|",
    ]
    for (name, field), wire in WIRE_SHAPES.items():
        members = ", ".join(f"{member} ({kind})" for member, kind in wire.fields)
        shape = f"{wire.form}" + (f": {members}" if members else "")
        lines.append(f"| `{name}` | `{field}` | {_cell(shape)} | {_cell(wire.source)} |")
    return lines


def _table(name: str, readable: set[str]) -> list[str]:
    layout = table_layout(name)
    rtype = resource_type(name)
    notes: dict[str, str] = {a.name: _shape(a) for a in layout.attributes}
    for column in (*layout.to_one, *layout.to_many):
        notes[column.column] = _joins(column, readable)
    if rtype.id_kind is Kind.STRING:
        notes["id"] = "a UUID string"
    notes[EXTRA_COLUMN] = "JSON: what the schema does not know, values that did not fit"
    default = " (in the default selection)" if name in RESOURCE_TYPES else ""
    lines = [
        "",
        f"### {rtype.collection} (`{name}`){default}",
        "",
        "| column | type | holds |",
        "|---|---|---|",
    ]
    for field in layout.schema:
        lines.append(f"| `{field.name}` | {field.type} | {_cell(notes.get(field.name, ''))} |")
    return lines


def render() -> str:
    readable = set(readable_types())
    lines = [
        "# Data model",
        "",
        "Generated by `python scripts/data_model.py` from Outreach's OpenAPI file; do not edit.",
        "",
        f"Every collection the OpenAPI file lists with a `GET` list operation ({len(readable)}) is a",
        "typed table: one directory of Parquet files per type, `DIR/<collection>/part-*.parquet`,",
        "one row per record. Every column but `id` is nullable; `id` is int64 except where the",
        "OpenAPI file says the ids are UUID strings. To-one relationships are `<name>Id` columns,",
        "to-many ones with ids `<target>Ids` lists (a name an attribute already has gets `_id` /",
        "`<name>Ids`); links-only relationships have no column (the related records point back",
        "instead, or carry nothing the list can return). A polymorphic relationship's column holds",
        "ids of its first listed type; an identifier of another type is kept whole, with its type,",
        f"in `{EXTRA_COLUMN}`. `{EXTRA_COLUMN}` holds, as JSON, anything the schema does not know",
        "(custom fields beyond those declared included) and any value that did not fit its column's",
        "type.",
        "",
    ]
    lines += _walk()
    lines += ["", *_incremental()]
    lines += ["", *_wire_shapes()]
    lines += ["", "## Tables"]
    for name in readable_types():
        lines += _table(name, readable)
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    target = Path(sys.argv[1]) if len(sys.argv) > 1 else Path("docs/data-model.md")
    target.write_text(render())
    print(f"wrote {target}")
