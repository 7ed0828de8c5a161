"""Unit tests of the paging rules: which links.next the client follows."""

from __future__ import annotations

from urllib.parse import urlsplit

import pytest
from hypothesis import given
from hypothesis import strategies as st

from exporter.api.documents import page_records
from exporter.api.pagination import STALL_PAGES, ChainGuard, collection_url, next_link
from exporter.api.urls import origin, with_query_value
from exporter.core.errors import ResponseError

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
    with pytest.raises(ResponseError, match=r"the page's `links\.next` is not a string"):
        next_link({"links": {"next": 5}}, CURRENT, BASE)
    with pytest.raises(ResponseError, match=r"the page's `links` is not an object"):
        next_link({"links": []}, CURRENT, BASE)
    with pytest.raises(ResponseError, match=r"the response has no `data` array"):
        page_records({"data": {"id": 1}}, CURRENT)
    with pytest.raises(ResponseError, match=r"the response is not a JSON:API document"):
        page_records(["x"], CURRENT)


def test_urls_keep_brackets_readable() -> None:
    url = collection_url(BASE, "sequenceSteps", [("filter[id]", "1..5"), ("sort", "id")])
    assert url == BASE + "/sequenceSteps?filter[id]=1..5&sort=id"
    assert with_query_value(url, "sort", "-id").endswith("filter[id]=1..5&sort=-id")


def page(n: int) -> str:
    return f"{BASE}/sequenceSteps?page[size]=2&page[after]=c{n}"


def test_chain_guard_refuses_a_cycle_of_any_length() -> None:
    guard = ChainGuard(CURRENT)
    guard.follow(CURRENT, page(1), 2)
    guard.follow(page(1), page(2), 2)
    guard.follow(page(2), page(3), 2)
    with pytest.raises(ResponseError, match="leads back to a page this chain already read"):
        guard.follow(page(3), page(1), 2)  # 1 -> 2 -> 3 -> 1
    back_to_start = ChainGuard(CURRENT)
    back_to_start.follow(CURRENT, page(1), 2)
    # the same page, its parameters in another order and percent-encoded
    with pytest.raises(ResponseError, match="looping"):
        back_to_start.follow(page(1), f"{BASE}/sequenceSteps?page%5Bsize%5D=2", 2)


def test_chain_guard_refuses_a_chain_that_brings_nothing_new() -> None:
    guard = ChainGuard(CURRENT)
    for n in range(1, STALL_PAGES):
        guard.follow(page(n - 1), page(n), 0)  # fresh cursors, nothing new: tolerated a while
    with pytest.raises(ResponseError, match=f"{STALL_PAGES} pages in a row brought no new record"):
        guard.follow(page(STALL_PAGES - 1), page(STALL_PAGES), 0)


def test_chain_guard_lets_a_long_honest_chain_through() -> None:
    guard = ChainGuard(CURRENT)
    for n in range(1, 5000):
        # a few empty pages now and then are not a stall
        guard.follow(page(n - 1), page(n), 0 if n % 7 == 0 else 2)


@pytest.mark.parametrize(
    ("target", "reason"),
    [
        ("http://alice:hunter2@127.0.0.1:8123/api/v2/sequenceSteps?page[after]=x", "credentials"),
        ("http://alice@127.0.0.1:8123/api/v2/sequenceSteps?page[after]=x", "credentials"),
        ("//alice:hunter2@127.0.0.1:8123/api/v2/sequenceSteps?page[after]=y", "credentials"),
        ("http://[::1/api/v2/sequenceSteps", "not a valid URL"),
        ("http://127.0.0.1:99999/api/v2/sequenceSteps", "not a valid URL"),
        ("http://127.0.0.1:8123/api/v2/sequenceSteps?page[after]=\x00x", "control character"),
        ("http://127.0.0.1:8123/api/v2/seq\u202euenceSteps", "control character"),
    ],
)
def test_next_links_with_credentials_or_unparseable_are_refused_on_one_line(
    target: str, reason: str
) -> None:
    """Bug caught: `user:pw@` in a same-origin next link was followed (aiohttp then refuses to
    combine it with the Authorization header: a traceback); `[::1` raised a bare ValueError."""
    with pytest.raises(ResponseError, match=reason) as caught:
        next_link({"links": {"next": target}}, CURRENT, BASE)
    message = str(caught.value)
    assert message.isprintable() and "hunter2" not in message and "alice" not in message


@given(st.text(max_size=200))
def test_any_next_link_is_followed_or_refused_cleanly(target: str) -> None:
    try:
        followed = next_link({"links": {"next": target}}, CURRENT, BASE)
    except ResponseError as error:
        assert str(error).isprintable()
        return
    if followed is not None:
        assert origin(followed) == origin(BASE)
        assert urlsplit(followed).username is None and followed.isprintable()
