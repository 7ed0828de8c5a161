"""The query language, parsed without I/O: filters, sort, sparse fieldsets, include and paging parameters."""

from __future__ import annotations

import re
from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from functools import lru_cache
from typing import Any

from exporter.model.schema import Kind, ResourceType, Shape, readable_types, resource_type

from .data import uuid_record_id
from .paging import Cursor, CursorError, KeyValue, decode_cursor

COUNT_LIMIT = 2_000_000  # meta.count is truncated here, as the real API does
_FILTER_KEY = re.compile(r"^filter\[([^\[\]]+)\](?:\[([^\[\]]+)\])?$")
_FIELDS_KEY = re.compile(r"^fields\[([^\[\]]+)\]$")
_OPERATORS = ("gte", "gt", "lte", "lt")


class QueryError(Exception):
    """A request the API refuses; rendered as a JSON:API errors document."""

    def __init__(self, detail: str, *, status: int = 400, error_id: str = "badRequest") -> None:
        super().__init__(detail)
        self.status = status
        self.error_id = error_id
        self.detail = detail

    @property
    def title(self) -> str:
        return {400: "Bad Request", 404: "Resource Not Found"}.get(self.status, "Error")

    def document(self) -> dict[str, Any]:
        return {"errors": [{"id": self.error_id, "title": self.title, "detail": self.detail}]}


@dataclass(frozen=True)
class Bound:
    value: KeyValue
    inclusive: bool


@dataclass(frozen=True)
class Condition:
    """One attribute filter: a set of accepted values, or a range (either end may be open)."""

    attribute: str
    values: frozenset[KeyValue] | None = None
    lower: Bound | None = None
    upper: Bound | None = None

    def accepts(self, value: KeyValue) -> bool:
        if self.values is not None:
            return value in self.values
        if value is None:
            return False
        if self.lower is not None:
            low = self.lower.value
            if value < low or (value == low and not self.lower.inclusive):  # type: ignore[operator]
                return False
        if self.upper is not None:
            high = self.upper.value
            if value > high or (value == high and not self.upper.inclusive):  # type: ignore[operator]
                return False
        return True


@dataclass(frozen=True)
class RelationFilter:
    """`filter[relationship][id]=a,b,c`: records whose to-one relationship points at one of `ids`."""

    relationship: str
    ids: frozenset[int]


@dataclass(frozen=True)
class SortKey:
    attribute: str
    descending: bool = False

    @property
    def spec(self) -> str:
        return ("-" if self.descending else "") + self.attribute


@dataclass(frozen=True)
class Query:
    """A parsed collection request. `sort` always ends with `id`, the tie-breaker."""

    rtype: str
    conditions: tuple[Condition, ...] = ()
    relation_filters: tuple[RelationFilter, ...] = ()
    sort: tuple[SortKey, ...] = (SortKey("id"),)
    fields: Mapping[str, frozenset[str]] = field(default_factory=dict)
    include: tuple[str, ...] = ()
    page_size: int = 50
    after: Cursor | None = None
    count: bool = False
    authorization_meta: bool = False

    @property
    def sort_spec(self) -> tuple[str, ...]:
        return tuple(key.spec for key in self.sort)

    def condition(self, attribute: str) -> Condition | None:
        for condition in self.conditions:
            if condition.attribute == attribute:
                return condition
        return None


@lru_cache(maxsize=65_536)
def datetime_seconds(text: str) -> float:
    """Epoch seconds of an ISO 8601 date-time (or date, as its midnight UTC); ValueError if neither."""
    value = datetime.fromisoformat(text.replace(" ", "+") if "T" in text else text)
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    return value.timestamp()


def normalize(kind: Kind | None, raw: Any) -> KeyValue:
    """The comparable form of a served attribute value (date-times become epoch seconds)."""
    if raw is None:
        return None
    if kind is Kind.DATETIME and isinstance(raw, str):
        return datetime_seconds(raw)
    if isinstance(raw, int | float | str | bool):
        return raw
    return str(raw)


# The kind of `id` in `_parse_value`: a UUID string standing for an integer id (auditLog).
_UUID_ID = "uuid-id"


def _parse_value(kind: Kind | str | None, text: str, attribute: str) -> KeyValue:
    """A filter value in the comparable form of the attribute's kind (None kind = the id)."""
    try:
        if kind == _UUID_ID:
            return uuid_record_id(text)
        if kind is None or kind is Kind.INTEGER:
            return int(text)
        if kind is Kind.NUMBER:
            return float(text)
        if kind is Kind.BOOLEAN:
            if text not in ("true", "false"):
                raise ValueError(text)
            return text == "true"
        if kind is Kind.DATETIME:
            return datetime_seconds(text)
        if kind is Kind.DATE:
            return date.fromisoformat(text[:10]).isoformat()
    except ValueError as error:
        raise QueryError(f"filter[{attribute}]: {text!r} is not a valid value") from error
    return text


def _kind_of(rtype: ResourceType, attribute: str) -> Kind | str | None:
    if attribute == "id" and rtype.id_kind is Kind.STRING:
        return _UUID_ID
    found = rtype.attribute(attribute)
    return None if found is None else found.kind


def _range(rtype: ResourceType, attribute: str, text: str) -> Condition:
    low_text, high_text = text.split("..", 1)
    kind = _kind_of(rtype, attribute)
    lower = None if low_text == "neginf" else Bound(_parse_value(kind, low_text, attribute), True)
    upper = None if high_text == "inf" else Bound(_parse_value(kind, high_text, attribute), True)
    return Condition(attribute, lower=lower, upper=upper)


def _flag(params: Mapping[str, str], name: str) -> bool:
    value = params.get(name, "false")
    if value not in ("true", "false"):
        raise QueryError(f"{name} must be true or false, not {value!r}")
    return value == "true"


def _ids(text: str, where: str) -> frozenset[int]:
    try:
        return frozenset(int(part) for part in text.split(","))
    except ValueError as error:
        raise QueryError(f"{where}: {text!r} is not a list of ids") from error


def parse_query(
    rtype: ResourceType,
    pairs: Mapping[str, str] | Iterable[tuple[str, str]],
    *,
    relations: Collection[str] = (),
    page_default: int = 50,
    page_max: int = 1000,
    refused: Collection[str] = (),
    ignored: Collection[str] = (),
) -> Query:
    """The query a collection request asks for; QueryError (a 400) for anything the API refuses.

    `relations` names the to-one relationships usable as `filter[name][id]`; of those, an API
    unlike the documented one may refuse some (`refused`: a 400 as for any name it does not
    filter by) or silently ignore them (`ignored`: answered as if the filter were not there).
    """
    relations = [r for r in relations if r not in refused]
    params = dict(pairs.items() if isinstance(pairs, Mapping) else pairs)
    new_syntax = _flag(params, "newFilterSyntax")
    ranges: dict[str, dict[str, Bound]] = {}
    conditions: list[Condition] = []
    relation_filters: list[RelationFilter] = []
    fields: dict[str, frozenset[str]] = {}
    for key, value in params.items():
        if key.startswith("filter"):
            match = _FILTER_KEY.match(key)
            if match is None:
                raise QueryError(f"{key} is not a valid filter parameter")
            name, sub = match.group(1), match.group(2)
            if sub is not None and name in relations:
                if name in ignored:
                    continue
                if sub != "id":
                    raise QueryError(f"{key}: relationship {name} can be filtered by id only")
                relation_filters.append(RelationFilter(name, _ids(value, key)))
                continue
            if name not in rtype.filterable:
                known = ", ".join(sorted(rtype.filterable | set(relations)))
                raise QueryError(
                    f"{name} is not a filterable attribute of {rtype.name} (filterable: {known})"
                )
            if value == "":
                raise QueryError(f"{key} needs a value")
            if sub is not None:
                if not new_syntax or sub not in _OPERATORS:
                    raise QueryError(
                        f"{key}: operator filters need newFilterSyntax=true and "
                        "one of gte, gt, lte, lt"
                    )
                bound = Bound(
                    _parse_value(_kind_of(rtype, name), value, name), sub in ("gte", "lte")
                )
                ranges.setdefault(name, {})["lower" if sub.startswith("g") else "upper"] = bound
            elif ".." in value:
                conditions.append(_range(rtype, name, value))
            else:
                kind = _kind_of(rtype, name)
                conditions.append(
                    Condition(
                        name,
                        values=frozenset(_parse_value(kind, v, name) for v in value.split(",")),
                    )
                )
        elif key.startswith("fields"):
            match = _FIELDS_KEY.match(key)
            if match is None:
                raise QueryError(f"{key} is not a valid fields parameter")
            type_name = match.group(1)
            names = frozenset(v for v in value.split(",") if v)
            if type_name in readable_types():
                target = resource_type(type_name)
                known_fields = {a.name for a in target.attributes} | {
                    r.name for r in target.relationships
                }
                unknown = sorted(names - known_fields)
                if unknown:
                    raise QueryError(f"{key}: {', '.join(unknown)} not fields of {type_name}")
            fields[type_name] = names
    for name, bounds in ranges.items():
        conditions.append(Condition(name, lower=bounds.get("lower"), upper=bounds.get("upper")))

    sort = _parse_sort(rtype, params.get("sort", ""))
    include = _parse_include(rtype, params.get("include", ""))
    page_size = _parse_page_size(params.get("page[size]"), page_default, page_max)
    for unsupported in ("page[offset]", "page[limit]", "page[before]"):
        if unsupported in params:
            raise QueryError(f"{unsupported} is not supported: use page[size] and links.next")
    after = None
    if "page[after]" in params:
        try:
            after = decode_cursor(params["page[after]"], tuple(k.spec for k in sort))
        except CursorError as error:
            raise QueryError(str(error)) from error
    return Query(
        rtype=rtype.name,
        conditions=tuple(conditions),
        relation_filters=tuple(relation_filters),
        sort=sort,
        fields=fields,
        include=include,
        page_size=page_size,
        after=after,
        count=_flag(params, "count"),
        authorization_meta=_flag(params, "provideAuthorizationMeta"),
    )


def _parse_sort(rtype: ResourceType, text: str) -> tuple[SortKey, ...]:
    keys: list[SortKey] = []
    for part in (p for p in text.split(",") if p):
        descending = part.startswith("-")
        name = part[1:] if descending else part
        if name not in rtype.sortable:
            known = ", ".join(sorted(rtype.sortable))
            raise QueryError(
                f"{name} is not a sortable attribute of {rtype.name} (sortable: {known})"
            )
        if any(k.attribute == name for k in keys):
            raise QueryError(f"sort names {name} twice")
        keys.append(SortKey(name, descending))
        if name == "id":
            break
    if not keys or keys[-1].attribute != "id":
        # The implicit tie-breaker follows the direction of the last key asked for.
        keys.append(SortKey("id", keys[-1].descending if keys else False))
    return tuple(keys)


def _parse_include(rtype: ResourceType, text: str) -> tuple[str, ...]:
    names: list[str] = []
    for name in (p for p in text.split(",") if p):
        relationship = rtype.relationship(name)
        if relationship is None:
            raise QueryError(f"include: {name} is not a relationship of {rtype.name}")
        if relationship.shape is Shape.LINKS:
            raise QueryError(f"include: {name} carries links only and cannot be included")
        if name not in names:
            names.append(name)
    return tuple(names)


def _parse_page_size(text: str | None, default: int, maximum: int) -> int:
    if text is None:
        return default
    try:
        size = int(text)
    except ValueError as error:
        raise QueryError(f"page[size] must be an integer, not {text!r}") from error
    if not 1 <= size <= maximum:
        raise QueryError(f"page[size] must be between 1 and {maximum}, not {size}")
    return size
