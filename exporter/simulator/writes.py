"""Write requests for sequence steps, checked without I/O: a JSON:API document in, a StepChange or errors out."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import date
from typing import Any

import orjson

from exporter.model.schema import Kind, ResourceType, Shape

from .data import STEP_TYPES

WRITABLE_TYPE = "sequenceStep"
# To-one relationships a write may not leave null.
REQUIRED_RELATIONSHIPS = frozenset({"sequence"})
REQUIRED_ATTRIBUTES = frozenset({"stepType"})
INT_MIN, INT_MAX = -(2**31), 2**31 - 1  # integer columns are 32-bit, as in Outreach's database


@dataclass
class WritePolicy:
    """How a simulator's write endpoint behaves besides the fault dice (`sim.write_policy`;
    tests change it at runtime).

    `apply_delay_s` holds every accepted write that long before applying it: a client that gave
    up (or was killed) meanwhile never hears back, yet the write lands (aiohttp does not cancel a
    handler whose client went away). `require_sequence=False` stands for an API that takes a
    step without a sequence (the real API's rule is not documented)."""

    apply_delay_s: float = 0.0
    require_sequence: bool = True


_TITLES = {
    400: "Bad Request",
    403: "Forbidden",
    404: "Resource Not Found",
    409: "Conflict",
    422: "Unprocessable Entity",
}


@dataclass
class WriteError(Exception):
    """A write the API refuses, rendered as a JSON:API errors document (one or more errors)."""

    status: int
    errors: list[dict[str, Any]] = field(default_factory=list)

    def document(self) -> dict[str, Any]:
        return {"errors": self.errors}


def _error(status: int, error_id: str, detail: str, pointer: str | None = None) -> dict[str, Any]:
    error: dict[str, Any] = {"id": error_id, "title": _TITLES[status], "detail": detail}
    if pointer is not None:
        error["source"] = {"pointer": pointer}
    return error


def _fail(status: int, error_id: str, detail: str, pointer: str | None = None) -> WriteError:
    return WriteError(status, [_error(status, error_id, detail, pointer)])


@dataclass(frozen=True)
class StepChange:
    """A validated write: the attributes it sets and the to-one relationships it points (0 = null)."""

    attributes: dict[str, Any]
    relationships: dict[str, int]


def parse_write(
    body: bytes,
    rtype: ResourceType,
    *,
    record_id: int | None,
    exists: Callable[[str, int], bool],
    required_relationships: frozenset[str] = REQUIRED_RELATIONSHIPS,
) -> StepChange:
    """Check a POST (`record_id` None) or PATCH body against `rtype`; raise WriteError if refused.

    In order: a body that is not a JSON:API document is a 400; a `type` other than the
    endpoint's, or an `id` other than the URL's, a 409 (JSON:API's rule); a client-generated id
    on create a 403; then every attribute and relationship problem together in one 422.
    """
    try:
        document = orjson.loads(body)
    except orjson.JSONDecodeError as error:
        raise _fail(400, "badRequest", f"The body is not valid JSON: {error}") from error
    data = document.get("data") if isinstance(document, dict) else None
    if not isinstance(data, dict):
        raise _fail(400, "badRequest", "The body must be an object with a `data` object", "/data")
    type_name = data.get("type")
    if not isinstance(type_name, str):
        raise _fail(400, "badRequest", "`data.type` is required", "/data/type")
    if type_name != rtype.name:
        raise _fail(
            409,
            "typeMismatch",
            f"`data.type` is {type_name!r} but this endpoint takes {rtype.name!r}",
            "/data/type",
        )
    if record_id is None:
        if "id" in data:
            raise _fail(
                403, "clientGeneratedId", "Client-generated ids are not supported", "/data/id"
            )
    else:
        if "id" not in data:
            raise _fail(400, "badRequest", "`data.id` is required to update", "/data/id")
        if _as_id(data["id"]) != record_id:
            raise _fail(
                409,
                "idMismatch",
                f"`data.id` {data['id']!r} does not match the URL's id {record_id}",
                "/data/id",
            )
    attributes = data.get("attributes", {})
    relationships = data.get("relationships", {})
    for part, value in (("attributes", attributes), ("relationships", relationships)):
        if not isinstance(value, dict):
            raise _fail(400, "badRequest", f"`data.{part}` must be an object", f"/data/{part}")
    problems: list[dict[str, Any]] = []
    change = StepChange(
        attributes=_attributes(rtype, attributes, problems),
        relationships=_relationships(
            rtype, relationships, exists, problems, required_relationships
        ),
    )
    if record_id is None:
        # (Given but invalid, they have a problem reported already.)
        for name in sorted(REQUIRED_ATTRIBUTES - set(attributes)):
            problems.append(_invalid(f"{name} can't be blank", f"/data/attributes/{name}"))
        for name in sorted(required_relationships - set(relationships)):
            problems.append(_invalid(f"{name} can't be blank", f"/data/relationships/{name}"))
    if problems:
        raise WriteError(422, problems)
    return change


def _invalid(detail: str, pointer: str) -> dict[str, Any]:
    return _error(422, "validationError", detail, pointer)


def _as_id(value: Any) -> int | None:
    """An id as JSON:API clients send it: an integer, or a string of digits."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, str) and value.isascii() and value.isdigit():
        return int(value)
    return None


def _attributes(
    rtype: ResourceType, given: dict[str, Any], problems: list[dict[str, Any]]
) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name, value in given.items():
        pointer = f"/data/attributes/{name}"
        attribute = rtype.attribute(name)
        if attribute is None:
            problems.append(_invalid(f"{name} is not an attribute of {rtype.name}", pointer))
            continue
        if attribute.read_only:
            problems.append(_invalid(f"{name} is read-only", pointer))
            continue
        problem = _value_problem(rtype.name, name, attribute.kind, attribute.max_length, value)
        if problem is not None:
            problems.append(_invalid(f"{name} {problem}", pointer))
            continue
        out[name] = value
    return out


def _value_problem(
    type_name: str, name: str, kind: Kind, max_length: int | None, value: Any
) -> str | None:
    """Why `value` cannot be stored in the attribute, or None when it can."""
    if type_name == "sequenceStep" and name == "stepType":
        choices = ", ".join(f'"{t}"' for t in STEP_TYPES)
        return None if value in STEP_TYPES else f"must be one of {choices}"
    if value is None:
        return None  # every attribute is nullable (the OpenAPI file says so)
    if kind is Kind.INTEGER:
        if not isinstance(value, int) or isinstance(value, bool):
            return "must be an integer"
        return None if INT_MIN <= value <= INT_MAX else "is out of range (a 32-bit integer)"
    if kind is Kind.STRING:
        if not isinstance(value, str):
            return "must be a string"
        if max_length is not None and len(value) > max_length:
            return f"is too long (maximum is {max_length} characters)"
        return None
    if kind is Kind.DATE:
        try:
            ok = isinstance(value, str) and date.fromisoformat(value).isoformat() == value
        except ValueError:
            ok = False
        return None if ok else "must be a date (YYYY-MM-DD)"
    if kind is Kind.BOOLEAN:
        return None if isinstance(value, bool) else "must be true or false"
    return "cannot be written through the simulator"


def _relationships(
    rtype: ResourceType,
    given: dict[str, Any],
    exists: Callable[[str, int], bool],
    problems: list[dict[str, Any]],
    required: frozenset[str] = REQUIRED_RELATIONSHIPS,
) -> dict[str, int]:
    out: dict[str, int] = {}
    for name, value in given.items():
        pointer = f"/data/relationships/{name}"
        relationship = rtype.relationship(name)
        if relationship is None:
            problems.append(_invalid(f"{name} is not a relationship of {rtype.name}", pointer))
            continue
        if relationship.read_only:
            problems.append(_invalid(f"{name} is read-only", pointer))
            continue
        if relationship.shape is not Shape.TO_ONE:
            problems.append(_invalid(f"{name} cannot be written through the simulator", pointer))
            continue
        if not isinstance(value, dict) or "data" not in value:
            problems.append(_invalid(f"{name} must be an object with `data`", pointer))
            continue
        data = value["data"]
        pointer += "/data"
        if data is None:
            if name in required:
                problems.append(_invalid(f"{name} can't be blank", pointer))
            else:
                out[name] = 0
            continue
        target_id = _as_id(data.get("id")) if isinstance(data, dict) else None
        if not isinstance(data, dict) or data.get("type") != relationship.target:
            problems.append(
                _invalid(f"{name} must be null or a {relationship.target} identifier", pointer)
            )
        elif target_id is None:
            problems.append(_invalid(f"{name} needs an integer id", pointer + "/id"))
        elif not exists(relationship.target, target_id):
            problems.append(
                _invalid(f"{name}: {relationship.target} {target_id} does not exist", pointer)
            )
        else:
            out[name] = target_id
    return out
