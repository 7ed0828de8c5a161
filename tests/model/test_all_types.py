"""Every collection the bundled OpenAPI file lists with a GET list operation is a typed resource type."""

from __future__ import annotations

from exporter.model import schema


def _listed_collections() -> set[str]:
    """Computed here from `paths`, independently of `schema.readable_types`."""
    paths = schema.openapi_document()["paths"]
    return {
        path[1:]
        for path, operations in paths.items()
        if path.startswith("/") and "/" not in path[1:] and "get" in operations
    }


def test_readable_types_are_exactly_the_listed_collections() -> None:
    listed = _listed_collections()
    assert len(listed) == 47
    types = schema.readable_types()
    assert len(types) == len(set(types)) == 47
    assert {schema.resource_type(t).collection for t in types} == listed


def test_the_nine_step_world_types_come_first_in_their_order() -> None:
    types = schema.readable_types()
    assert types[: len(schema.RESOURCE_TYPES)] == schema.RESOURCE_TYPES
    assert types[0] == "sequenceStep"
    assert list(types[9:]) == sorted(types[9:])


def test_every_type_loads_and_collections_round_trip() -> None:
    for name in schema.readable_types():
        rtype = schema.resource_type(name)
        assert rtype.name == name
        assert rtype.attributes, name
        found = schema.by_collection(rtype.collection)
        assert found is not None and found.name == name
    assert schema.by_collection("nothingHere") is None


def test_types_without_relationships_load_with_none() -> None:
    for name in ("auditLog", "duty", "profile"):
        assert schema.resource_type(name).relationships == ()


def test_audit_log_ids_are_uuids() -> None:
    kinds = {name: schema.resource_type(name).id_kind for name in schema.readable_types()}
    assert {n for n, k in kinds.items() if k is schema.Kind.STRING} == {"auditLog"}
