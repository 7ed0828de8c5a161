"""Shared helpers for the simulator tests: a running simulator with a client, walks, schema checks."""

from __future__ import annotations

import copy
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import aiohttp
import orjson
from openapi_schema_validator import OAS30Validator, oas30_format_checker

from exporter.model import schema
from exporter.model.schema import Kind, WireForm
from exporter.simulator import Simulator, SimulatorConfig, serve

TOKEN = "sim-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


@dataclass
class Reply:
    status: int
    headers: dict[str, str]
    raw: bytes

    @property
    def json(self) -> Any:
        return orjson.loads(self.raw)


@dataclass
class Running:
    sim: Simulator
    root: str
    session: aiohttp.ClientSession

    @property
    def api(self) -> str:
        return self.root + "/api/v2"

    async def get(self, path: str, params: dict[str, str] | None = None, **kw: Any) -> Reply:
        url = path if path.startswith("http") else self.api + path
        async with self.session.get(url, params=params, **kw) as response:
            return Reply(response.status, dict(response.headers), await response.read())

    async def send(
        self,
        method: str,
        path: str,
        document: Any = None,
        *,
        raw: bytes | None = None,
        content_type: str | None = "application/vnd.api+json",
        **kw: Any,
    ) -> Reply:
        """A write: `document` serialized (or `raw` bytes as they are) with a JSON:API type."""
        url = path if path.startswith("http") else self.api + path
        headers = dict(kw.pop("headers", {}))
        if content_type is not None:
            headers["Content-Type"] = content_type
        body = raw if raw is not None else orjson.dumps(document)
        async with self.session.request(method, url, data=body, headers=headers, **kw) as response:
            return Reply(response.status, dict(response.headers), await response.read())

    async def walk(self, path: str, params: dict[str, str] | None = None) -> list[dict[str, Any]]:
        """Every record of a cursor walk, following links.next to the end."""
        records: list[dict[str, Any]] = []
        reply = await self.get(path, params)
        while True:
            assert reply.status == 200, reply.raw[:500]
            document = reply.json
            records.extend(document["data"])
            next_url = document["links"].get("next")
            if not next_url:
                return records
            reply = await self.get(next_url)


@asynccontextmanager
async def running(
    cfg: SimulatorConfig | None = None, *, sim: Simulator | None = None, auth: bool = True
) -> AsyncIterator[Running]:
    sim = sim if sim is not None else Simulator(cfg or SimulatorConfig(steps=200, seed=7))
    async with serve(sim) as root:
        headers = AUTH if auth else {}
        async with aiohttp.ClientSession(headers=headers) as session:
            yield Running(sim, root, session)


def wire_schema(attribute: schema.Attribute) -> dict[str, Any]:
    """The OpenAPI schema of an attribute as `schema.WIRE_SHAPES` says the API sends it."""
    wire = attribute.wire
    assert wire is not None
    kinds = {Kind.INTEGER: {"type": "integer"}, Kind.STRING: {"type": "string"}}
    member = {
        "type": "object",
        "properties": {name: kinds[kind] for name, kind in wire.fields},
        "required": [name for name, _ in wire.fields],
        "additionalProperties": not wire.fields,
    }
    if wire.form is WireForm.OBJECT_LIST:
        return {"type": "array", "nullable": True, "items": member}
    if wire.form is WireForm.INTEGER_LISTS:
        pair = {"type": "array", "items": {"type": "integer"}}
        return {"type": "array", "nullable": True, "items": pair}
    return {**member, "nullable": True}


def _validator(name: str) -> OAS30Validator:
    """The OpenAPI schema `name`; an attributes schema with the shapes the live API sends where
    the file is vague (`schema.WIRE_SHAPES`: a user's `duties` is a list of objects)."""
    spec = schema.openapi_document()["components"]["schemas"][name]
    if name in schema.readable_types():
        spec = copy.deepcopy(spec)
        for attribute in schema.resource_type(name).attributes:
            if attribute.wire is not None:
                spec["properties"][attribute.name] = wire_schema(attribute)
    return OAS30Validator(spec, format_checker=oas30_format_checker)


_VALIDATORS: dict[str, OAS30Validator] = {}


def validate_resource(resource: dict[str, Any]) -> None:
    """A resource object checked against the OpenAPI schemas of its type (and nothing extra)."""
    type_name = resource["type"]
    assert type_name in schema.RESOURCE_TYPES
    assert isinstance(resource["id"], int)
    for suffix, part in (("", "attributes"), ("Relationships", "relationships")):
        key = type_name + suffix
        if key not in _VALIDATORS:
            _VALIDATORS[key] = _validator(key)
        _VALIDATORS[key].validate(resource[part])
    rtype = schema.resource_type(type_name)
    assert set(resource["attributes"]) == {a.name for a in rtype.attributes}
    assert set(resource["relationships"]) == {r.name for r in rtype.relationships}
