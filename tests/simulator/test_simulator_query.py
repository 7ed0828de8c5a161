"""The pure parts: query parsing from plain dicts, cursor tokens, key comparison; plus serving from a thread."""

from __future__ import annotations

import itertools
import urllib.error
import urllib.request

import pytest
from hypothesis import given
from hypothesis import strategies as st

from exporter.model.schema import resource_type
from exporter.simulator import Simulator, SimulatorConfig, serve_in_thread
from exporter.simulator.paging import (
    Cursor,
    CursorError,
    compare_keys,
    decode_cursor,
    encode_cursor,
)
from exporter.simulator.query import Bound, Condition, QueryError, SortKey, parse_query

STEP = resource_type("sequenceStep")
RELATIONS = ("sequence", "creator")


def parse(params: dict[str, str]) -> object:
    return parse_query(STEP, params, relations=RELATIONS)


def test_defaults() -> None:
    query = parse_query(STEP, {})
    assert query.page_size == 50
    assert query.sort == (SortKey("id"),)
    assert not query.count and not query.authorization_meta and query.after is None


def test_filters_parse_into_conditions() -> None:
    query = parse_query(
        STEP,
        {
            "filter[stepType]": "call,task",
            "filter[id]": "neginf..9",
            "filter[updatedAt]": "2024-01-01..inf",
            "filter[sequence][id]": "3,4",
        },
        relations=RELATIONS,
    )
    assert query.condition("stepType") == Condition("stepType", values=frozenset({"call", "task"}))
    assert query.condition("id") == Condition("id", upper=Bound(9, True))
    updated = query.condition("updatedAt")
    assert updated is not None and updated.lower == Bound(1704067200.0, True)
    assert updated.upper is None
    assert [(f.relationship, f.ids) for f in query.relation_filters] == [("sequence", {3, 4})]


def test_new_filter_syntax_combines_bounds() -> None:
    query = parse_query(
        STEP, {"newFilterSyntax": "true", "filter[order][gt]": "2", "filter[order][lte]": "7"}
    )
    condition = query.condition("order")
    assert condition == Condition("order", lower=Bound(2, False), upper=Bound(7, True))
    assert [v for v in range(10) if condition.accepts(v)] == [3, 4, 5, 6, 7]
    assert not condition.accepts(None)


def test_sort_gets_an_id_tie_breaker_in_the_last_direction() -> None:
    assert parse_query(STEP, {"sort": "-updatedAt"}).sort_spec == ("-updatedAt", "-id")
    assert parse_query(STEP, {"sort": "stepType,-order"}).sort_spec == ("stepType", "-order", "-id")
    assert parse_query(STEP, {"sort": "id,order"}).sort_spec == ("id",)


@pytest.mark.parametrize(
    ("params", "detail"),
    [
        ({"filter[taskNote]": "x"}, r"^taskNote is not a filterable attribute of sequenceStep \("),
        ({"filter[id]": ""}, r"^filter\[id\] needs a value$"),
        ({"filter[id]": "1,x"}, r"^filter\[id\]: 'x' is not a valid value$"),
        ({"filter[order][gte]": "1"}, r"operator filters need newFilterSyntax=true"),
        ({"sort": "order,order"}, r"^sort names order twice$"),
        ({"page[size]": "1001"}, r"^page\[size\] must be between 1 and 1000, not 1001$"),
        ({"page[after]": "%%%"}, r"^page\[after\] is not a valid cursor$"),
        ({"include": "sequence.creator"}, r"sequence\.creator is not a relationship"),
        ({"fields[sequenceStep]": "nope"}, r"nope not fields of sequenceStep"),
        ({"provideAuthorizationMeta": "yes"}, r"must be true or false, not 'yes'$"),
    ],
)
def test_refusals(params: dict[str, str], detail: str) -> None:
    """Each refusal is a 400 whose JSON:API error detail says what was wrong with the query."""
    with pytest.raises(QueryError, match=detail) as raised:
        parse(params)
    assert raised.value.status == 400
    assert raised.value.document()["errors"][0]["detail"] == str(raised.value)


@pytest.mark.slow
@given(st.lists(st.tuples(st.integers(-3, 3), st.integers(0, 1000)), max_size=40), st.booleans())
def test_compare_keys_agrees_with_sorting(rows: list[tuple[int, int]], descending: bool) -> None:
    ordered = sorted(rows, reverse=descending)
    flags = (descending, descending)
    for a, b in itertools.pairwise(ordered):
        assert compare_keys(a, b, flags) <= 0


@pytest.mark.slow
@given(
    st.lists(
        st.one_of(
            st.none(),
            st.integers(
                -(2**63), 2**63 - 1
            ),  # record values are 64-bit st.text(), st.floats(allow_nan=False, allow_infinity=False)
        ),
        max_size=4,
    )
)
def test_cursor_round_trip(values: list[object]) -> None:
    spec = tuple(f"k{i}" for i in range(len(values)))
    cursor = Cursor(spec, tuple(values))  # type: ignore[arg-type]
    token = encode_cursor(cursor)
    assert "=" not in token and "+" not in token and "/" not in token
    assert decode_cursor(token, spec) == cursor
    with pytest.raises(CursorError, match="issued for a different sort order"):
        decode_cursor(token, (*spec, "other"))


def test_serve_in_thread() -> None:
    sim = Simulator(SimulatorConfig(steps=20, seed=1))
    with serve_in_thread(sim) as root:
        request = urllib.request.Request(
            root + "/api/v2/users", headers={"Authorization": "Bearer sim-token"}
        )
        with urllib.request.urlopen(request, timeout=10) as response:
            assert response.status == 200
    assert sim.counters.requests == 1
    with pytest.raises(urllib.error.URLError, match="Connection refused"):
        urllib.request.urlopen(root + "/api/v2/users", timeout=2)
