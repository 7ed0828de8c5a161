"""Resource types of the Outreach API v2, derived from Outreach's own OpenAPI and hyper-schema files.

The two reference files ship with the package (gzipped, byte-for-byte copies of
`shared/reference/`), and everything else in the project (the simulator's records,
the exporter's Arrow schemas, the query language's filterable/sortable sets, restore's
writable fields, how each type is read incrementally) is derived from them here, never
typed by hand. The one exception is `WIRE_SHAPES`: what the API really sends where the
OpenAPI file is vague or wrong, each entry with its source.
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


class Kind(StrEnum):
    """The value kinds of attributes (and of ids): how a column holds them."""

    INTEGER = "integer"
    NUMBER = "number"
    BOOLEAN = "boolean"
    STRING = "string"
    DATETIME = "date-time"
    DATE = "date"
    STRING_LIST = "string-list"
    INTEGER_LISTS = "integer-lists"  # an array of integer arrays (a prospect's contactHistogram)
    OBJECT = "object"  # kept as JSON text: an object, or an array of objects (`Attribute.wire`)


class WireForm(StrEnum):
    """What a value the OpenAPI file leaves vague looks like on the wire."""

    OBJECT = "object"  # {...}, kept as JSON text
    OBJECT_LIST = "array of objects"  # [{...}, ...], kept as JSON text
    INTEGER_LISTS = "array of integer arrays"  # [[1, 2], ...], list<list<int64>>
    ABSENT = "never sent"  # the OpenAPI file lists it, the API does not send it


@dataclass(frozen=True)
class WireShape:
    """One entry of `WIRE_SHAPES`."""

    form: WireForm
    # The members of the object (of each object of the array), where a source names them;
    # the simulator generates these, the exporter keeps whatever comes as JSON text.
    fields: tuple[tuple[str, Kind], ...]
    source: str  # why we believe it


_PARTICIPANT = (
    ("derivedGuid", Kind.STRING),
    ("displayName", Kind.STRING),
    ("firstName", Kind.STRING),
    ("id", Kind.STRING),
    ("inMeetingId", Kind.INTEGER),
    ("lastName", Kind.STRING),
    ("providerUserId", Kind.STRING),
    ("type", Kind.STRING),
)
_UNSPECIFIED = (
    "the OpenAPI and hyper-schema files say `object` without members, and no connector types it"
)

# (type, attribute or relationship) -> what the API sends, for every attribute whose OpenAPI
# schema is neither a scalar nor an array of strings (tests/model/test_all_types.py keeps the
# table complete) and for the relationships the API does not send. This is the one place where
# a fact about the wire is typed by hand: normalize takes the Arrow type from it, the simulator
# generates this shape.
WIRE_SHAPES: dict[tuple[str, str], WireShape] = {
    ("user", "duties"): WireShape(
        WireForm.OBJECT_LIST,
        (("id", Kind.INTEGER), ("name", Kind.STRING), ("duty_type", Kind.STRING)),
        'the OpenAPI file says `object` ("a collection of the user\'s work roles"); connectors built'
        " against the live API read an array of {id, name, duty_type}: Singer tap-outreach"
        " tap_outreach/schemas/users.json and Airbyte source-outreach schemas/users.json",
    ),
    ("prospect", "contactHistogram"): WireShape(
        WireForm.INTEGER_LISTS,
        (),
        "the OpenAPI file gives no item type, its description says 12 months of"
        " [inboundCount, outboundCount]; the hyper-schema's items are integer arrays, as in"
        " Singer tap-outreach and Airbyte source-outreach schemas/prospects.json",
    ),
    ("auditLog", "additionalInfo"): WireShape(
        WireForm.OBJECT_LIST,
        (("field", Kind.STRING), ("value", Kind.STRING)),
        "hyper-schema auditLog/definitions/additionalInfoList (the OpenAPI file: objects)",
    ),
    ("auditLog", "changes"): WireShape(
        WireForm.OBJECT_LIST,
        (("field", Kind.STRING), ("postValue", Kind.STRING), ("preValue", Kind.STRING)),
        "hyper-schema auditLog/definitions/changesList (the OpenAPI file: objects)",
    ),
    ("kaiaRecording", "participants"): WireShape(
        WireForm.OBJECT_LIST,
        _PARTICIPANT,
        "hyper-schema kaiaRecording/definitions/KaiaRecordingParticipant (the OpenAPI file: objects)",
    ),
    ("kaiaRecording", "topics"): WireShape(
        WireForm.OBJECT_LIST,
        (
            ("category", Kind.STRING),
            ("name", Kind.STRING),
            ("occurrences", Kind.INTEGER),
            ("topicId", Kind.STRING),
            ("totalDurationMs", Kind.INTEGER),
        ),
        "hyper-schema kaiaRecording/definitions/KaiaRecordingTopic (the OpenAPI file: objects)",
    ),
    ("kaiaRecording", "host"): WireShape(
        WireForm.OBJECT,
        _PARTICIPANT,
        'the OpenAPI description: "meeting host/organizer with full participant info", so the'
        " members of hyper-schema kaiaRecording/definitions/KaiaRecordingParticipant",
    ),
    ("auditLog", "agent"): WireShape(WireForm.OBJECT, (), _UNSPECIFIED),
    ("batch", "payload"): WireShape(WireForm.OBJECT, (), _UNSPECIFIED),
    ("batch", "summary"): WireShape(WireForm.OBJECT, (), _UNSPECIFIED),
    ("complianceRequest", "pii"): WireShape(WireForm.OBJECT, (), _UNSPECIFIED),
    ("event", "payload"): WireShape(
        WireForm.OBJECT,
        (),
        _UNSPECIFIED + " (Singer tap-outreach events.json reads an untyped object too)",
    ),
    ("sequenceStep", "schedule"): WireShape(
        WireForm.ABSENT,
        (),
        "a relationship in the OpenAPI file only: the sequenceStep reference page the project"
        " started from (nine relationships) and the hyper-schema do not have it",
    ),
}

_KIND_OF_FORM = {
    WireForm.OBJECT: Kind.OBJECT,
    WireForm.OBJECT_LIST: Kind.OBJECT,
    WireForm.INTEGER_LISTS: Kind.INTEGER_LISTS,
}


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
    wire: WireShape | None = None  # its `WIRE_SHAPES` entry, if it has one


@dataclass(frozen=True)
class Relationship:
    name: str
    # JSON:API type of the related records: the first of `targets` for a polymorphic one (its
    # `<name>Id` column holds ids of that type; identifiers of the others stay in `_extra`).
    target: str
    shape: Shape
    read_only: bool
    targets: tuple[str, ...] = ()  # every type the OpenAPI file allows (several: polymorphic)

    @property
    def polymorphic(self) -> bool:
        return len(self.targets) > 1


@dataclass(frozen=True)
class ResourceType:
    name: str  # JSON:API type, e.g. "sequenceStep"
    collection: str  # URL segment, e.g. "sequenceSteps"
    attributes: tuple[Attribute, ...]
    relationships: tuple[Relationship, ...]
    id_kind: Kind = Kind.INTEGER  # STRING where the OpenAPI file says the id is a UUID (auditLog)
    # The hyper-schema's links for the type: "instances" (list), "self", "create", "update", ...
    operations: frozenset[str] = frozenset()

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

    @property
    def read_scope(self) -> str:
        """The OAuth scope a token needs to list the collection (API-FACTS: `sequenceSteps.read`)."""
        return f"{self.collection}.read"

    @property
    def updated_at_filterable(self) -> bool:
        return "updatedAt" in self.filterable

    @property
    def updated_at_sortable(self) -> bool:
        return "updatedAt" in self.sortable

    @property
    def append_only(self) -> bool:
        """Records carry no `updatedAt` and the API offers no update (PATCH) for them: a log."""
        return self.attribute("updatedAt") is None and "update" not in self.operations


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


# An attribute's kind by its OpenAPI `type`, else by the `format` of a string, else a string.
_KIND_OF_TYPE = {
    "integer": Kind.INTEGER,
    "number": Kind.NUMBER,
    "boolean": Kind.BOOLEAN,
    "array": Kind.STRING_LIST,
    "object": Kind.OBJECT,
}
_KIND_OF_FORMAT = {"date-time": Kind.DATETIME, "date": Kind.DATE}


def _kind(spec: dict[str, Any]) -> Kind:
    by_type = _KIND_OF_TYPE.get(str(spec.get("type")))
    return by_type or _KIND_OF_FORMAT.get(str(spec.get("format")), Kind.STRING)


def _targets(spec: dict[str, Any]) -> tuple[str, ...]:
    """The `type` values a relationship's identifiers may carry, as the OpenAPI file lists them."""
    data = spec.get("properties", {}).get("data", {})
    identifier = data.get("items", data)
    enum = identifier.get("properties", {}).get("type", {}).get("enum") or ()
    return tuple(str(t) for t in enum)


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
        wire = WIRE_SHAPES.get((name, attr_name))
        if wire is not None and wire.form is WireForm.ABSENT:
            continue
        attributes.append(
            Attribute(
                name=attr_name,
                kind=_kind(spec) if wire is None else _KIND_OF_FORM[wire.form],
                read_only="badges/readonly" in description or bool(meta.get("readOnly")),
                filterable=bool(meta.get("filterable")) or "badges/filterable" in description,
                sortable=bool(meta.get("sortable")) or "badges/sortable" in description,
                max_length=spec.get("maxLength"),
                wire=wire,
            )
        )

    excluded = {n for (t, n), w in WIRE_SHAPES.items() if t == name and w.form is WireForm.ABSENT}
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
        targets = _targets(spec)
        if not targets:
            ref = hyper_defs.get(rel_name, {})
            ref_path = ref.get("$ref") or ref.get("items", {}).get("$ref", "")
            targets = (str(ref_path).rsplit("/", 1)[-1] or rel_name,)
        relationships.append(
            Relationship(
                name=rel_name,
                target=targets[0],
                shape=shape,
                read_only="badges/readonly" in str(spec.get("description", "")),
                targets=targets,
            )
        )
    id_spec = schemas.get(name + "Response", {}).get("properties", {}).get("id", {})
    return ResourceType(
        name=name,
        collection=collection,
        attributes=tuple(attributes),
        relationships=tuple(relationships),
        id_kind=Kind.STRING if id_spec.get("type") == "string" else Kind.INTEGER,
        operations=frozenset(str(link.get("rel")) for link in hyper.get("links", [])),
    )


def by_collection(collection: str) -> ResourceType | None:
    """The resource type served under `/api/v2/<collection>`, if it is a readable one."""
    for name in readable_types():
        rtype = resource_type(name)
        if rtype.collection == collection:
            return rtype
    return None


class Incremental(StrEnum):
    """How an incremental run finds what changed in a type since the last run."""

    UPDATED_AT = "window on updatedAt"
    APPEND_ONLY = "window on the creation time"
    RELIST = "re-read every record"


# Why each mode misses no change and writes nothing twice.
INCREMENTAL_EXACTNESS: dict[Incremental, str] = {
    Incremental.UPDATED_AT: (
        "every record changed since the last run's window start comes back from"
        " `filter[updatedAt]=start..inf`; the window overlaps the last one and versions"
        " already held are skipped"
    ),
    Incremental.APPEND_ONLY: (
        "records never change once created, so the new ones, `filter[<time>]=start..inf` on"
        " their creation time, are all that changed; the window overlaps the last one and ids"
        " already held are skipped"
    ),
    Incremental.RELIST: (
        "the API cannot say what changed, so every record is read again (as a root: the whole"
        " collection; as a related type: the records the backup holds or its roots name) and"
        " only versions not yet held are written; a type with no `updatedAt` to tell versions"
        " apart is written whole again (a log's records, which never change: only ids not yet"
        " held), and compaction keeps the newest run's version"
    ),
}


@dataclass(frozen=True)
class IncrementalStrategy:
    mode: Incremental
    attribute: str | None  # the date-time attribute the window filters on
    reason: str  # why this type gets this mode (`INCREMENTAL_EXACTNESS` says why it is exact)


def _creation_time(rtype: ResourceType) -> str | None:
    """The filterable date-time a record gets when it is created: `createdAt`, else the only
    date-time that is both filterable and sortable (an auditLog's `timestamp`)."""
    created = rtype.attribute("createdAt")
    if created is not None and created.kind is Kind.DATETIME and created.filterable:
        return created.name
    times = [
        a.name for a in rtype.attributes if a.kind is Kind.DATETIME and a.filterable and a.sortable
    ]
    return times[0] if len(times) == 1 else None


@cache
def incremental_strategy(name: str) -> IncrementalStrategy:
    """How an incremental run reads `name`, decided from the schema alone."""
    rtype = resource_type(name)
    if rtype.updated_at_filterable:
        sortable = " and sortable" if rtype.updated_at_sortable else ""
        return IncrementalStrategy(
            Incremental.UPDATED_AT, "updatedAt", f"`updatedAt` is filterable{sortable}"
        )
    created = _creation_time(rtype)
    if rtype.append_only and created is not None:
        return IncrementalStrategy(
            Incremental.APPEND_ONLY,
            created,
            f"a log: no `updatedAt`, no update link; `{created}` is filterable",
        )
    if rtype.attribute("updatedAt") is not None:
        why = "`updatedAt` is not filterable"
    elif not rtype.append_only:
        why = "records can be updated (update link) but carry no `updatedAt`"
    else:
        why = "no `updatedAt` and no filterable creation time"
    return IncrementalStrategy(Incremental.RELIST, None, why)
