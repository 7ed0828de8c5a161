"""Unit tests of the paging rules: which links.next the client follows."""

from __future__ import annotations

import pytest

from exporter.errors import ResponseError
from exporter.pagination import collection_url, next_link, page_records, with_query_value

BASE = "http://127.0.0.1:8123/api/v2"
CURRENT = BASE + "/sequenceSteps?page[size]=2"


def test_last_page_has_no_next() -> None:
    assert next_link({"links": {}}, CURRENT, BASE) is None
    assert next_link({"links": {"next": None}}, CURRENT, BASE) is None
    assert next_link({}, CURRENT, BASE) is None


def test_same_origin_next_is_followed_and_relative_resolved() -> None:
    target = BASE + "/sequenceSteps?page[after]=abc"
    assert next_link({"links": {"next": target}}, CURRENT, BASE) == target
    assert next_link({"links": {"next": "/api/v2/sequenceSteps?page[after]=x"}}, CURRENT, BASE) == (
        "http://127.0.0.1:8123/api/v2/sequenceSteps?page[after]=x"
    )


@pytest.mark.parametrize(
    "target",
    [
        "http://127.0.0.2:8123/api/v2/sequenceSteps?page[after]=x",  # other host
        "http://127.0.0.1:9999/api/v2/sequenceSteps?page[after]=x",  # other port
        "https://127.0.0.1:8123/api/v2/sequenceSteps?page[after]=x",  # other scheme
        "//evil.example/api/v2/sequenceSteps",  # scheme-relative to another host
    ],
)
def test_foreign_origin_is_refused(target: str) -> None:
    with pytest.raises(ResponseError, match="another origin"):
        next_link({"links": {"next": target}}, CURRENT, BASE)


def test_default_ports_are_the_same_origin() -> None:
    base = "https://api.outreach.io/api/v2"
    target = "https://api.outreach.io:443/api/v2/sequenceSteps?page[after]=x"
    assert next_link({"links": {"next": target}}, base + "/sequenceSteps", base) == target


def test_loop_is_refused() -> None:
    with pytest.raises(ResponseError, match="looping"):
        next_link({"links": {"next": CURRENT}}, CURRENT, BASE)


def test_malformed_links() -> None:
    with pytest.raises(ResponseError):
        next_link({"links": {"next": 5}}, CURRENT, BASE)
    with pytest.raises(ResponseError):
        next_link({"links": []}, CURRENT, BASE)
    with pytest.raises(ResponseError):
        page_records({"data": {"id": 1}}, CURRENT)
    with pytest.raises(ResponseError):
        page_records(["x"], CURRENT)


def test_urls_keep_brackets_readable() -> None:
    url = collection_url(BASE, "sequenceSteps", [("filter[id]", "1..5"), ("sort", "id")])
    assert url == BASE + "/sequenceSteps?filter[id]=1..5&sort=id"
    assert with_query_value(url, "sort", "-id").endswith("filter[id]=1..5&sort=-id")
