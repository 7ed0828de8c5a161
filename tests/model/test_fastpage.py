"""The fast page reader gives exactly the slow path's table, or declines; never anything else."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from exporter.core.errors import ResponseError
from exporter.model.fastpage import PagePaths, PageReader, read_page, wire_layout
from exporter.model.normalize import Normalizer
from exporter.model.schema import RESOURCE_TYPES, Shape, resource_type
from exporter.simulator import Simulator, SimulatorConfig

SIM = Simulator(SimulatorConfig(steps=400, seed=5))


def slow(body: bytes, type_name: str) -> Any:
    return Normalizer(type_name).to_batch(orjson.loads(body)["data"]).table


# The step world's types the fast path reads (user has an `object` attribute).
FAST_TYPES = tuple(t for t in RESOURCE_TYPES if wire_layout(t) is not None)


@pytest.mark.slow
@pytest.mark.parametrize("type_name", FAST_TYPES)
def test_simulator_pages_read_the_same_both_ways(type_name: str) -> None:
    records = list(SIM.truth.records(type_name))[:300]
    for option in (0, orjson.OPT_INDENT_2):  # one line, and pretty-printed over many lines
        body = orjson.dumps(
            {"data": records, "links": {"next": "http://127.0.0.1/x"}}, option=option
        )
        page = read_page(body, type_name)
        assert page is not None
        assert page.batch.table.equals(slow(body, type_name))
        assert page.batch.ids == [int(r["id"]) for r in records]
        assert page.links == {"next": "http://127.0.0.1/x"}


def test_types_with_object_attributes_take_the_slow_path() -> None:
    body = orjson.dumps({"data": list(SIM.truth.records("user"))})
    assert read_page(body, "user") is None


_mutations = st.sampled_from(
    [
        ("type", "sequenceState"),
        ("id", "17"),
        ("id", -4),
        ("id", 2.5),
        ("attributes.order", 2.5),
        ("attributes.order", "3"),
        ("attributes.taskNote", 5),
        ("attributes.createdAt", "yesterday"),
        ("attributes.date", "2020-13-45"),
        ("attributes.brandNew", 1),
        ("attributes", None),
        ("relationships.sequence", {}),
        ("relationships.sequence", {"data": {"type": "sequence", "id": "x"}}),
        ("relationships.sequence", {"data": {"type": "user", "id": 5}}),
        ("relationships.sequence", {"data": {"id": 5}}),
        ("relationships.creator", {"data": {"type": "sequence", "id": 5}}),
        ("relationships.sequenceTemplates", {"data": [{"type": "mailing", "id": 4}]}),
        ("relationships.sequenceTemplates", {"data": []}),
        ("relationships.sequenceTemplates", {"data": None}),
        ("relationships.newRelation", {"data": None}),
        ("meta", {"canWrite": True}),
        ("links", {"self": "http://127.0.0.1/x"}),
        ("relationships.sequenceTemplates.links", {"related": "http://127.0.0.1/t"}),
        ("relationships.sequence.links", {"related": "http://127.0.0.1/s"}),
        ("relationships.sequence.meta", {"note": "x"}),
        ("relationships.calls.data", [{"type": "call", "id": 3}]),
        ("relationships", None),
        ("attributes.order", None),
    ]
)


def _apply(record: dict[str, Any], path: str, value: Any) -> dict[str, Any]:
    record = orjson.loads(orjson.dumps(record))
    keys = path.split(".")
    target = record
    for key in keys[:-1]:
        target = target.setdefault(key, {}) or {}
    target[keys[-1]] = value
    return record


def _string_ids(records: list[Any]) -> bool:
    """Whether a record's or an identifier's id is a JSON string (the slow path reads "17" as
    17; the fast path reads ids as integers and leaves such a page to it)."""
    for record in records:
        if isinstance(record.get("id"), str):
            return True
        for member in (record.get("relationships") or {}).values():
            data = member.get("data") if isinstance(member, dict) else None
            for identifier in data if isinstance(data, list) else [data]:
                if isinstance(identifier, dict) and isinstance(identifier.get("id"), str):
                    return True
    return False


@pytest.mark.slow
@settings(max_examples=80, deadline=None)
@given(
    st.lists(
        st.tuples(st.integers(0, 30), st.lists(_mutations, max_size=2)), min_size=1, max_size=6
    )
)
def test_irregular_pages_are_declined_or_read_identically(
    plan: list[tuple[int, list[tuple[str, Any]]]],
) -> None:
    """The fast path declines a page only when the slow path has to decide: it raises, keeps a
    value in `_extra`, or reads an id sent as a string; every other page is read fast, into the
    slow path's table. Bug caught: `read_page` always returns None (every page declined: the
    export stays right and gets 2.5 times slower, which no output comparison sees)."""
    steps = list(SIM.truth.records("sequenceStep"))
    records = []
    for index, mutations in plan:
        record = steps[index]
        for path, value in mutations:
            record = _apply(record, path, value)
        records.append(record)
    body = orjson.dumps({"data": records})
    try:
        expected = slow(body, "sequenceStep")
    except ResponseError:
        assert read_page(body, "sequenceStep") is None
        return
    page = read_page(body, "sequenceStep")
    if expected.column("_extra").null_count == len(records) and not _string_ids(records):
        assert page is not None, [m for _, mutations in plan for m in mutations]
    if page is not None:
        assert page.batch.table.equals(expected)


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("sequence", {"data": {"type": "user", "id": 5}}),
        ("sequence", {"data": {"id": 5}}),
        (
            "sequenceTemplates",
            {"data": [{"type": "sequenceTemplate", "id": 3}, {"type": "user", "id": 4}]},
        ),
    ],
)
def test_a_relationship_to_the_wrong_type_reads_as_the_slow_path_does(
    name: str, value: Any
) -> None:
    """The relationship as sent is kept in `_extra`, by the slow path (the fast path declines
    or agrees); the same page without it is read fast. Bug caught by the second half:
    `read_page` always returns None."""
    records = list(SIM.truth.records("sequenceStep"))[:20]
    regular = read_page(orjson.dumps({"data": records}), "sequenceStep")
    assert regular is not None
    records[3] = _apply(records[3], f"relationships.{name}", value)
    body = orjson.dumps({"data": records})
    expected = slow(body, "sequenceStep")
    assert expected.column("_extra")[3].as_py() is not None
    page = read_page(body, "sequenceStep")
    assert page is None or page.batch.table.equals(expected)


def test_every_readable_type_has_a_wire_layout_or_declines() -> None:
    """Bug caught: a kind without a wire type (`Kind.INTEGER_LISTS`, a prospect's
    contactHistogram) made `wire_layout("prospect")` raise KeyError instead of reading pages."""
    from exporter.model.schema import Kind, readable_types, resource_type

    for name in readable_types():
        layout = wire_layout(name)
        has_object = any(a.kind is Kind.OBJECT for a in resource_type(name).attributes)
        assert (layout is None) == has_object, name


# Every member JSON:API allows beside what the exporter reads, none of which changes a row: the
# fast path must read pages with any of them, on any records, into the slow path's table.


def _relationships(record: dict[str, Any], shape: Shape) -> list[dict[str, Any]]:
    members = record["relationships"]
    return [
        members[rel.name]
        for rel in resource_type(record["type"]).relationships
        if rel.shape is shape and rel.name in members
    ]


def _self_link(record: dict[str, Any]) -> None:
    record["links"] = {"self": f"http://127.0.0.1/api/v2/x/{record['id']}"}


def _record_meta(record: dict[str, Any]) -> None:
    record["meta"] = {"canWrite": record["id"] % 2 == 0, "canDelete": False}


def _to_many_links(record: dict[str, Any]) -> None:
    for member in _relationships(record, Shape.TO_MANY):
        member["links"] = {"related": f"http://127.0.0.1/api/v2/y?filter[x][id]={record['id']}"}


def _to_one_links(record: dict[str, Any]) -> None:
    for member in _relationships(record, Shape.TO_ONE):
        member["links"] = {"related": "http://127.0.0.1/api/v2/z"}


def _relationship_meta(record: dict[str, Any]) -> None:
    for member in [*_relationships(record, Shape.TO_ONE), *_relationships(record, Shape.TO_MANY)]:
        member["meta"] = {"count": 1, "note": "about the relationship, not its records"}


def _links_only_data(record: dict[str, Any]) -> None:
    for rel in resource_type(record["type"]).relationships:
        if rel.shape is Shape.LINKS and rel.name in record["relationships"]:
            record["relationships"][rel.name]["data"] = [{"type": rel.target, "id": 7}]


def _identifier_meta(record: dict[str, Any]) -> None:
    for member in _relationships(record, Shape.TO_ONE):
        if member["data"] is not None:
            member["data"]["meta"] = {"primary": True}
    for member in _relationships(record, Shape.TO_MANY):
        for identifier in member["data"]:
            identifier["meta"] = {"primary": False}


RECORD_EXTRAS: dict[str, Callable[[dict[str, Any]], None]] = {
    "links.self": _self_link,
    "meta": _record_meta,
    "to-many data and links": _to_many_links,
    "to-one data and links": _to_one_links,
    "relationship meta": _relationship_meta,
    "links-only relationship with data": _links_only_data,
    "identifier meta": _identifier_meta,
}
PAGE_EXTRAS: dict[str, tuple[str, Any]] = {
    "page meta": ("meta", {"count": 5, "count_truncated": False}),
    "empty included": ("included", []),
    "jsonapi": ("jsonapi", {"version": "1.0"}),
    "links.prev": ("links", {"prev": None, "next": "http://127.0.0.1/x"}),
}


def _page_with(
    type_name: str, record_extras: list[str], page_extras: list[str], on: list[bool]
) -> tuple[bytes, list[dict[str, Any]]]:
    """A page of `type_name` whose records (those `on` says, cycled) carry `record_extras`."""
    records = orjson.loads(orjson.dumps(list(SIM.truth.records(type_name))[:40]))
    for index, record in enumerate(records):
        if on[index % len(on)]:
            for name in record_extras:
                RECORD_EXTRAS[name](record)
    document: dict[str, Any] = {"data": records, "links": {"next": "http://127.0.0.1/x"}}
    for name in page_extras:
        key, value = PAGE_EXTRAS[name]
        document[key] = value
    return orjson.dumps(document), records


def _assert_read_fast_as_the_slow_path(body: bytes, type_name: str) -> None:
    page = read_page(body, type_name)
    assert page is not None  # the fast path holds
    document = orjson.loads(body)
    expected = slow(body, type_name)
    assert expected.column("_extra").null_count == len(expected)  # nothing was left aside
    assert page.batch.table.equals(expected)
    assert page.batch.ids == [r["id"] for r in document["data"]]
    assert page.batch.extra_values == 0
    assert page.links == document.get("links")
    assert page.meta == document.get("meta")


@pytest.mark.parametrize("shape", [*RECORD_EXTRAS, *PAGE_EXTRAS, "all of them"])
def test_every_shape_the_api_may_send_is_read_fast(shape: str) -> None:
    """Each member alone, on every record of a step page, then all at once. Bug caught:
    `read_page` always returns None (so does a fast path that gives up on a relationship with
    both `data` and `links`, as it did)."""
    everything = shape == "all of them"
    record_extras = list(RECORD_EXTRAS) if everything else [shape] * (shape in RECORD_EXTRAS)
    page_extras = list(PAGE_EXTRAS) if everything else [shape] * (shape in PAGE_EXTRAS)
    body, _records = _page_with("sequenceStep", record_extras, page_extras, [True])
    _assert_read_fast_as_the_slow_path(body, "sequenceStep")


@pytest.mark.slow
@settings(max_examples=60, deadline=None)
@given(
    type_name=st.sampled_from(FAST_TYPES),
    record_extras=st.lists(st.sampled_from(list(RECORD_EXTRAS)), unique=True),
    page_extras=st.lists(st.sampled_from(list(PAGE_EXTRAS)), unique=True),
    on=st.lists(st.booleans(), min_size=1, max_size=5),
)
def test_any_combination_of_shapes_on_any_records_is_read_fast(
    type_name: str, record_extras: list[str], page_extras: list[str], on: list[bool]
) -> None:
    """Any members together, on some records and not others (the reader then meets a member
    in one record and not the next), for every type the fast path reads."""
    body, _records = _page_with(type_name, record_extras, page_extras, on)
    _assert_read_fast_as_the_slow_path(body, type_name)


def test_the_page_reader_counts_each_page_by_the_path_that_read_it() -> None:
    """`PagePaths` counts what `PageReader` did: a regular page fast, a page with a value the
    slow path keeps in `_extra` slow, a page that fails to read not at all."""
    paths = PagePaths()
    reader = PageReader(Normalizer("sequenceStep"), "http://127.0.0.1/x", paths)
    body, records = _page_with("sequenceStep", list(RECORD_EXTRAS), list(PAGE_EXTRAS), [True])
    assert reader(body, "application/vnd.api+json").fast
    records[0]["attributes"]["brandNew"] = 1  # an unknown attribute: kept in _extra
    parsed = reader(orjson.dumps({"data": records}), "application/vnd.api+json")
    assert not parsed.fast and parsed.batch.extra_values == 1
    records[0]["type"] = "sequenceState"
    with pytest.raises(ResponseError, match="sequenceState"):
        reader(orjson.dumps({"data": records}), "application/vnd.api+json")
    assert paths.to_json() == {"fast": 1, "slow": 1}
