"""Resource types of the Outreach API v2, derived from Outreach's own OpenAPI and hyper-schema files.

The two reference files ship with the package (gzipped, byte-for-byte copies of
`shared/reference/`), and everything else in the project (the simulator's records,
the exporter's Arrow schemas, the query language's filterable/sortable sets, restore's
writable fields) is derived from them here, never typed by hand.
"""

from __future__ import annotations

import gzip
import json
from dataclasses import dataclass
from enum import StrEnum
from functools import cache
from importlib import resources
from typing import Any

# The resources the exporter reads, by JSON:API type. sequenceStep is the root.
RESOURCE_TYPES: tuple[str, ...] = (
    "sequenceStep",
    "sequence",
    "user",
    "callPurpose",
    "taskPriority",
    "sequenceTemplate",
    "mailing",
    "call",
    "task",
)

# The sequenceStep reference page the project started from lists nine relationships;
# the OpenAPI file adds `schedule`, which neither the page nor the hyper-schema has.
_EXCLUDED_RELATIONSHIPS: dict[str, frozenset[str]] = {"sequenceStep": frozenset({"schedule"})}


class Kind(StrEnum):
    """The value kinds that occur in the OpenAPI attribute schemas."""

    INTEGER = "integer"
    NUMBER = "number"
    BOOLEAN = "boolean"
    STRING = "string"
    DATETIME = "date-time"
    DATE = "date"
    STRING_LIST = "string-list"
    OBJECT = "object"


class Shape(StrEnum):
    """How a relationship appears on the wire."""

    TO_ONE = "to-one"  # {"data": {"type", "id"} | null}
    TO_MANY = "to-many"  # {"data": [{"type", "id"}, ...]}
    LINKS = "links"  # {"links": {"related": URL}} only


@dataclass(frozen=True)
class Attribute:
    name: str
    kind: Kind
    read_only: bool
    filterable: bool
    sortable: bool
    max_length: int | None


@dataclass(frozen=True)
class Relationship:
    name: str
    target: str  # JSON:API type of the related records
    shape: Shape
    read_only: bool


@dataclass(frozen=True)
class ResourceType:
    name: str  # JSON:API type, e.g. "sequenceStep"
    collection: str  # URL segment, e.g. "sequenceSteps"
    attributes: tuple[Attribute, ...]
    relationships: tuple[Relationship, ...]
    id_kind: Kind = Kind.INTEGER  # STRING where the OpenAPI file says the id is a UUID (auditLog)

    def attribute(self, name: str) -> Attribute | None:
        for attribute in self.attributes:
            if attribute.name == name:
                return attribute
        return None

    def relationship(self, name: str) -> Relationship | None:
        for relationship in self.relationships:
            if relationship.name == name:
                return relationship
        return None

    @property
    def filterable(self) -> frozenset[str]:
        """Attributes usable in `filter[...]`, plus `id`."""
        return frozenset({"id"} | {a.name for a in self.attributes if a.filterable})

    @property
    def sortable(self) -> frozenset[str]:
        """Attributes usable in `sort`, plus `id`."""
        return frozenset({"id"} | {a.name for a in self.attributes if a.sortable})


def _load(name: str) -> dict[str, Any]:
    raw = resources.files("exporter.resources").joinpath(name).read_bytes()
    loaded: dict[str, Any] = json.loads(gzip.decompress(raw))
    return loaded


@cache
def openapi_document() -> dict[str, Any]:
    """The OpenAPI 3.0 document, as Outreach publishes it."""
    return _load("outreach-openapi.json.gz")


@cache
def hyper_schema_document() -> dict[str, Any]:
    """The JSON hyper-schema document, as Outreach publishes it."""
    return _load("outreach-hyper-schema.json.gz")


def _kind(spec: dict[str, Any]) -> Kind:
    kind = spec.get("type")
    fmt = spec.get("format")
    if kind == "integer":
        return Kind.INTEGER
    if kind == "number":
        return Kind.NUMBER
    if kind == "boolean":
        return Kind.BOOLEAN
    if kind == "array":
        return Kind.STRING_LIST
    if kind == "object":
        return Kind.OBJECT
    if fmt == "date-time":
        return Kind.DATETIME
    if fmt == "date":
        return Kind.DATE
    return Kind.STRING


def _target(spec: dict[str, Any]) -> str:
    data = spec.get("properties", {}).get("data", {})
    identifier = data.get("items", data)
    enum = identifier.get("properties", {}).get("type", {}).get("enum")
    if enum:
        return str(enum[0])
    return ""


def _instances_collection(hyper: dict[str, Any]) -> str | None:
    """The URL segment of a hyper-schema definition's `instances` (list) link, if it has one."""
    for link in hyper.get("links", []):
        if link.get("rel") == "instances":
            return str(link["href"]).rstrip("/").rsplit("/", 1)[-1]
    return None


@cache
def readable_types() -> tuple[str, ...]:
    """Every JSON:API type with a list operation: each `GET /<collection>` path of the OpenAPI file,
    named by the hyper-schema definition whose `instances` link is that collection. The nine
    step-world types (`RESOURCE_TYPES`) come first, in their order, then the rest by name."""
    paths: dict[str, Any] = openapi_document()["paths"]
    listed = {p.strip("/") for p, ops in paths.items() if p.count("/") == 1 and "get" in ops}
    by_segment = {
        segment: name
        for name, hyper in hyper_schema_document()["definitions"].items()
        if (segment := _instances_collection(hyper)) is not None
    }
    unnamed = sorted(listed - by_segment.keys())
    if unnamed:
        raise ValueError(f"no hyper-schema type lists the collections {unnamed}")
    names = {by_segment[segment] for segment in listed}
    return RESOURCE_TYPES + tuple(sorted(names - set(RESOURCE_TYPES)))


@cache
def resource_type(name: str) -> ResourceType:
    """The attributes and relationships of one JSON:API type, from the reference files."""
    schemas = openapi_document()["components"]["schemas"]
    hyper = hyper_schema_document()["definitions"].get(name, {})
    hyper_defs: dict[str, Any] = hyper.get("definitions", {})
    collection = _instances_collection(hyper) or name + "s"

    attributes = []
    for attr_name, spec in sorted(schemas[name].get("properties", {}).items()):
        description = str(spec.get("description", ""))
        meta = hyper_defs.get(attr_name, {})
        attributes.append(
            Attribute(
                name=attr_name,
                kind=_kind(spec),
                read_only="badges/readonly" in description or bool(meta.get("readOnly")),
                filterable=bool(meta.get("filterable")) or "badges/filterable" in description,
                sortable=bool(meta.get("sortable")) or "badges/sortable" in description,
                max_length=spec.get("maxLength"),
            )
        )

    excluded = _EXCLUDED_RELATIONSHIPS.get(name, frozenset())
    relationships = []
    # auditLog, duty and profile have an empty `<type>Relationships` object: no relationships.
    rel_specs: dict[str, Any] = schemas.get(name + "Relationships", {}).get("properties", {})
    for rel_name, spec in sorted(rel_specs.items()):
        if rel_name in excluded:
            continue
        props = spec.get("properties", {})
        if "data" not in props:
            shape = Shape.LINKS
        elif props["data"].get("type") == "array":
            shape = Shape.TO_MANY
        else:
            shape = Shape.TO_ONE
        target = _target(spec)
        if not target:
            ref = hyper_defs.get(rel_name, {})
            ref_path = ref.get("$ref") or ref.get("items", {}).get("$ref", "")
            target = str(ref_path).rsplit("/", 1)[-1] or rel_name
        relationships.append(
            Relationship(
                name=rel_name,
                target=target,
                shape=shape,
                read_only="badges/readonly" in str(spec.get("description", "")),
            )
        )
    id_spec = schemas.get(name + "Response", {}).get("properties", {}).get("id", {})
    return ResourceType(
        name=name,
        collection=collection,
        attributes=tuple(attributes),
        relationships=tuple(relationships),
        id_kind=Kind.STRING if id_spec.get("type") == "string" else Kind.INTEGER,
    )


def by_collection(collection: str) -> ResourceType | None:
    """The resource type served under `/api/v2/<collection>`, if it is a readable one."""
    for name in readable_types():
        rtype = resource_type(name)
        if rtype.collection == collection:
            return rtype
    return None
