"""Unit tests of the one `links.next` loop (`paginate`) and of `filter[id]` lists cut to the URL length, on plain dicts."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from exporter.api.pagination import STALL_PAGES, id_batches, ids_that_fit, paginate
from exporter.core.errors import ResponseError, RetriableError

T = TypeVar("T")
BASE = "http://127.0.0.1:8123/api/v2"
FIRST = BASE + "/things?page[size]=2"


def page_url(n: int) -> str:
    return FIRST if n == 0 else f"{FIRST}&page[after]={n}"


class Pages:
    """A fake client: `pages[url]` is the document it answers (or an exception it raises)."""

    def __init__(self, pages: dict[str, Any]) -> None:
        self.pages = pages
        self.asked: list[str] = []

    def answer(self, url: str) -> Any:
        self.asked.append(url)
        answer = self.pages[url]
        if isinstance(answer, BaseException):
            raise answer
        return answer

    async def get_document(self, url: str, *, max_attempts: int | None = None) -> dict[str, Any]:
        answer = self.answer(url)
        assert isinstance(answer, dict)
        return answer

    async def get_parsed(self, url: str, parse: Callable[[bytes, str], T]) -> T:
        answer = self.answer(url)
        return parse(orjson.dumps(answer), "application/vnd.api+json")


def chain(count: int, *, records: int = 1) -> dict[str, Any]:
    """`count` pages, each of `records` new ids, linked by links.next."""
    pages: dict[str, Any] = {}
    for n in range(count):
        data = [{"id": n * records + i} for i in range(records)]
        following = page_url(n + 1) if n + 1 < count else None
        pages[page_url(n)] = {"data": data, "links": {"next": following}}
    return pages


async def test_a_chain_is_walked_page_by_page_in_order() -> None:
    source = Pages(chain(3, records=2))
    seen: list[int] = []
    async for page in paginate(source, FIRST, base_url=BASE):
        seen.extend(r["id"] for r in page.content["data"])
        page.new_records = len(page.content["data"])
    assert seen == [0, 1, 2, 3, 4, 5]
    assert source.asked == [page_url(0), page_url(1), page_url(2)]


async def test_the_caller_may_end_the_chain_and_nothing_more_is_asked() -> None:
    source = Pages(chain(5))
    async for page in paginate(source, FIRST, base_url=BASE):
        if page.url == page_url(1):
            break
        page.new_records = 1
    assert source.asked == [page_url(0), page_url(1)]


async def test_a_page_left_without_its_new_records_is_a_programming_error() -> None:
    cursor = paginate(Pages(chain(2)), FIRST, base_url=BASE)
    await anext(cursor)
    with pytest.raises(RuntimeError, match="new_records"):
        await anext(cursor)


async def test_the_last_page_needs_no_count() -> None:
    pages = [page async for page in paginate(Pages(chain(1)), FIRST, base_url=BASE)]
    assert [p.next_url for p in pages] == [None]


async def test_a_chain_that_brings_nothing_new_is_refused_after_stall_pages() -> None:
    source = Pages(chain(STALL_PAGES + 5))
    with pytest.raises(ResponseError, match="brought no new record"):
        async for page in paginate(source, FIRST, base_url=BASE):
            page.new_records = 0
    assert len(source.asked) == STALL_PAGES


async def test_a_cycle_is_refused_before_the_page_is_asked_again() -> None:
    pages = chain(3)
    pages[page_url(2)]["links"]["next"] = page_url(0)
    source = Pages(pages)
    with pytest.raises(ResponseError, match="already read"):
        async for page in paginate(source, FIRST, base_url=BASE):
            page.new_records = 1
    assert source.asked == [page_url(0), page_url(1), page_url(2)]


async def test_no_request_once_stopped() -> None:
    source = Pages(chain(4))
    stopping = asyncio.Event()
    async for page in paginate(source, FIRST, base_url=BASE, stopped=stopping.is_set):
        page.new_records = 1
        if page.url == page_url(1):
            stopping.set()
    assert source.asked == [page_url(0), page_url(1)]
    source.asked.clear()
    cursor = paginate(source, FIRST, base_url=BASE, stopped=stopping.is_set)
    assert [p async for p in cursor] == []
    assert source.asked == []


async def test_without_credits_a_pages_records_are_read_before_its_link_is_checked() -> None:
    pages = chain(2)
    pages[page_url(0)]["links"]["next"] = "http://elsewhere.example/things"
    cursor = paginate(Pages(pages), FIRST, base_url=BASE)
    page = await anext(cursor)  # handed over: its link is not judged yet
    assert page.content["data"] == [{"id": 0}]
    page.new_records = 1
    with pytest.raises(ResponseError, match="another origin"):
        await anext(cursor)


@dataclass
class Parsed:
    ids: list[int]
    links: dict[str, Any] | None


def reader(url: str) -> Callable[[bytes, str], Parsed]:
    def parse(body: bytes, content_type: str) -> Parsed:
        document = orjson.loads(body)
        return Parsed([r["id"] for r in document["data"]], document.get("links"))

    return parse


async def test_a_reader_makes_each_page_and_its_links_lead_on() -> None:
    source = Pages(chain(3))
    ids: list[int] = []
    async for page in paginate(source, FIRST, base_url=BASE, reader=reader):
        ids.extend(page.content.ids)
        page.new_records = len(page.content.ids)
    assert ids == [0, 1, 2]


async def test_a_credit_is_taken_per_page_and_is_the_callers_once_handed_over() -> None:
    credits = asyncio.Semaphore(10)
    async for page in paginate(Pages(chain(3)), FIRST, base_url=BASE, credits=credits):
        page.new_records = 1
    assert credits._value == 7  # the writer gives them back, not the chain


@pytest.mark.parametrize(
    "failure",
    [RetriableError("gone"), "http://elsewhere.example/things"],
    ids=["request", "links.next"],
)
async def test_a_failed_page_gives_its_credit_back(failure: Any) -> None:
    """The request's own failure, or the refusal of a next link to another origin."""
    pages = chain(2)
    if isinstance(failure, BaseException):
        pages[page_url(1)] = failure
    else:
        pages[page_url(1)]["links"]["next"] = failure
    credits = asyncio.Semaphore(10)
    expected = r"^gone" if isinstance(failure, BaseException) else r"to another origin"
    with pytest.raises((RetriableError, ResponseError), match=expected):
        async for page in paginate(Pages(pages), FIRST, base_url=BASE, credits=credits):
            page.new_records = 1
    assert credits._value == 9  # only the first page's, handed over


def test_ids_that_fit_counts_digits_and_a_comma_each() -> None:
    ids = [1, 22, 333, 4444]
    assert ids_that_fit(ids, 0, room=100, most=10) == 4
    assert ids_that_fit(ids, 0, room=2 + 3 + 4, most=10) == 3
    assert ids_that_fit(ids, 0, room=2 + 3 + 4 - 1, most=10) == 2
    assert ids_that_fit(ids, 1, room=100, most=2) == 2
    assert ids_that_fit(ids, 3, room=4, most=10) == 0  # 4444 and its comma need 5
    assert ids_that_fit(ids, 4, room=100, most=10) == 0


def test_id_batches_cut_by_size_and_room() -> None:
    assert list(id_batches([1, 2, 3, 4, 5], room=100, most=2)) == [[1, 2], [3, 4], [5]]
    assert list(id_batches([10, 20, 30], room=6, most=10)) == [[10, 20], [30]]
    assert list(id_batches([123456, 1], room=3, most=10)) == [[123456], [1]]
    assert list(id_batches([], room=10, most=10)) == []


@given(
    st.lists(st.integers(min_value=1, max_value=10**12), max_size=200),
    st.integers(min_value=1, max_value=80),
    st.integers(min_value=1, max_value=30),
)
def test_id_batches_keep_every_id_in_order_within_the_bounds(
    ids: list[int], room: int, most: int
) -> None:
    batches = list(id_batches(ids, room=room, most=most))
    assert [i for batch in batches for i in batch] == ids
    for batch in batches:
        assert 1 <= len(batch) <= most
        assert len(batch) == 1 or len(",".join(map(str, batch))) + 1 <= room
