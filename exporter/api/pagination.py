"""Cursor paging over JSON:API collections: first-page URLs, the `links.next` chain (`paginate`), and `filter[id]` lists cut to the URL length.

The rules, in order, for a `links.next` (`next_link`, a pure function of values):
1. absent, null or empty: the last page.
2. not a string: the response is malformed.
3. it must be a printable, parseable URL without credentials (`user:pw@`): anything else is
   refused on one line (aiohttp would refuse to send it with a bearer token anyway).
   Resolved against the current URL (a relative link is allowed), it must have the same scheme,
   host and port as the configured base URL; anything else is refused, so the bearer token is
   never sent to another origin.
4. equal to the current page's URL (compared decoded, with the parameters in any order): a
   loop, refused.

`ChainGuard` watches one whole chain: a `links.next` back to any page the chain already read (a
cycle A -> B -> A of any length) is refused too, and so is a chain that keeps handing out new
cursors while bringing nothing new, page after page.

`paginate` is the one loop over a chain: it fetches a page (taking a page credit first, when
given some), hands it to the caller, and, once the caller says how many new records the page
brought, follows the checked `links.next` under the chain's guard. The caller owns what a page
means (normalizing, deduplicating, splitting a partition) and may end the chain early (`break`).
"""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import Awaitable, Callable, Iterable, Iterator, Sequence
from functools import cached_property
from typing import Any, Generic, Protocol, TypeVar, overload
from urllib.parse import parse_qsl, unquote, urlencode, urljoin, urlsplit

from exporter.api.urls import origin
from exporter.core.errors import ResponseError, redact_url


def same_page(a: str, b: str) -> bool:
    """Whether two URLs ask for the same page: same origin and path, same parameters."""
    if a == b:
        return True
    pa, pb = urlsplit(a), urlsplit(b)
    return (
        origin(a) == origin(b)
        and unquote(pa.path) == unquote(pb.path)
        and sorted(parse_qsl(pa.query, keep_blank_values=True))
        == sorted(parse_qsl(pb.query, keep_blank_values=True))
    )


def _page_key(url: str) -> bytes:
    """A digest of what `same_page` compares, so a chain remembers its pages in 16 bytes each."""
    parts = urlsplit(url)
    canonical = repr(
        (
            origin(url),
            unquote(parts.path),
            sorted(parse_qsl(parts.query, keep_blank_values=True)),
        )
    )
    return hashlib.blake2b(canonical.encode(), digest_size=16).digest()


STALL_PAGES = 20  # pages in a row that bring nothing new before a chain counts as looping


class ChainGuard:
    """Refuses a `links.next` chain that cycles back to a page it read, or that stalls: pages
    that bring no new record, `STALL_PAGES` times in a row, while always offering a next page."""

    def __init__(self, first_url: str) -> None:
        self._pages = {_page_key(first_url)}
        self._stalled = 0

    def follow(self, current_url: str, next_url: str, new_records: int) -> None:
        """Record the page just read (`new_records` it brought) before following `next_url`."""
        self._stalled = 0 if new_records else self._stalled + 1
        if self._stalled >= STALL_PAGES:
            raise ResponseError(
                f"{STALL_PAGES} pages in a row brought no new record, yet links.next goes on: "
                "the API is looping",
                url=current_url,
            )
        key = _page_key(next_url)
        if key in self._pages:
            raise ResponseError(
                f"links.next leads back to a page this chain already read "
                f"(after {len(self._pages)} pages): the API is looping",
                url=current_url,
            )
        self._pages.add(key)


def collection_url(base_url: str, collection: str, params: Iterable[tuple[str, str]]) -> str:
    """`base_url/collection?params`, with JSON:API brackets left readable."""
    query = urlencode(list(params), safe="[],.:")
    return f"{base_url.rstrip('/')}/{collection}" + (f"?{query}" if query else "")


def wire_length(url: str) -> int:
    """The length of `url` as the client sends it: aiohttp (yarl) percent-encodes the brackets
    `collection_url` leaves readable, 2 more characters each (`[` -> `%5B`); digits, commas and
    the rest go as they are. `max_url_length` bounds this form, the one a server or proxy sees."""
    return len(url) + 2 * (url.count("[") + url.count("]"))


def next_link(document: dict[str, Any], current_url: str, base_url: str) -> str | None:
    """The next page's absolute URL, or None on the last page; ResponseError if it is not safe."""
    links = document.get("links")
    if links is None:
        return None
    if not isinstance(links, dict):
        raise ResponseError("the page's `links` is not an object", url=current_url)
    target = links.get("next")
    if target is None or target == "":
        return None
    if not isinstance(target, str):
        raise ResponseError("the page's `links.next` is not a string", url=current_url)
    if not target.isprintable():
        raise ResponseError(
            "the page's `links.next` contains a control character: not a usable URL",
            url=current_url,
        )
    try:
        absolute = urljoin(current_url, target)
        parts = urlsplit(absolute)
        _port = parts.port  # raises ValueError when out of range or not a number
    except ValueError:
        raise ResponseError("the page's `links.next` is not a valid URL", url=current_url) from None
    if parts.username is not None or parts.password is not None:
        raise ResponseError(
            "refusing to follow a links.next that carries credentials (user:password@): the "
            "API never sends them, and only the access token authenticates requests",
            url=current_url,
        )
    if origin(absolute) != origin(base_url):
        raise ResponseError(
            f"refusing to follow links.next to another origin ({redact_url(absolute)}); "
            "the access token is only ever sent to the base URL's scheme, host and port",
            url=current_url,
        )
    if same_page(absolute, current_url):
        raise ResponseError(
            "links.next equals the current page: the API is looping", url=current_url
        )
    return absolute


T = TypeVar("T")


class LinkedPage(Protocol):
    """What a page reader makes of a body (`fastpage.ParsedPage`): whatever it holds, and the
    page's `links` object."""

    @property
    def links(self) -> dict[str, Any] | None: ...


P = TypeVar("P", bound=LinkedPage)


class PageSource(Protocol):
    """Where pages come from: the `ApiClient` (its retries, budgets and origin checks)."""

    async def get_document(
        self, url: str, *, max_attempts: int | None = None
    ) -> dict[str, Any]: ...

    async def get_parsed(self, url: str, parse: Callable[[bytes, str], T]) -> T: ...


class Page(Generic[T]):
    """One page of a chain: its URL, what was read from it (`content`), and its next page."""

    def __init__(self, url: str, content: T, links_of: dict[str, Any], base_url: str) -> None:
        self.url = url
        self.content = content
        # Set by the caller before the chain moves on: the records this page brought that the
        # chain had not seen yet (`ChainGuard` counts pages that bring none).
        self.new_records: int | None = None
        self._links_of = links_of
        self._base_url = base_url

    @cached_property
    def next_url(self) -> str | None:
        """The next page's absolute URL, None on the last page; ResponseError if it is unsafe
        (`next_link`)."""
        return next_link(self._links_of, self.url, self._base_url)


class PageCursor(Generic[T]):
    """A `links.next` chain walked a page at a time: `async for page in paginate(...)`.

    Steps, per page:
    1. the previous page (if any) is left: unless it was the last, its `next_url` is followed
       under the chain's `ChainGuard`, with the `new_records` the caller set;
    2. nothing more when the chain ended or `stopped()` says so;
    3. a page credit is taken (when the chain has `credits`): it is the caller's once the page
       is handed over (the writer gives it back), and given back here if the page fails (the
       request, or its `links.next`, checked before the page is handed over);
    4. the page is fetched and handed over.
    Without credits the `links.next` is checked when the caller asks for `next_url` or when the
    chain moves on, so a page whose records the caller refuses is reported for those first.
    """

    def __init__(
        self,
        fetch: Callable[[str], Awaitable[tuple[T, dict[str, Any]]]],
        first_url: str,
        *,
        base_url: str,
        credits: asyncio.Semaphore | None = None,
        stopped: Callable[[], bool] | None = None,
    ) -> None:
        self._fetch = fetch
        self._base_url = base_url
        self._credits = credits
        self._stopped = stopped
        self._guard = ChainGuard(first_url)
        self._url: str | None = first_url
        self._page: Page[T] | None = None

    def __aiter__(self) -> PageCursor[T]:
        return self

    async def __anext__(self) -> Page[T]:
        page, self._page = self._page, None
        if page is not None:
            self._url = None  # whatever happens next, that page is not fetched again
            following = page.next_url
            if following is not None:
                if page.new_records is None:
                    raise RuntimeError("a page of a chain was left without its new_records")
                self._guard.follow(page.url, following, page.new_records)
            self._url = following
        url = self._url
        if url is None or (self._stopped is not None and self._stopped()):
            self._url = None
            raise StopAsyncIteration
        credits = self._credits
        if credits is None:
            page = await self._page_at(url)
        else:
            await credits.acquire()
            try:
                page = await self._page_at(url)
                _ = page.next_url
            except BaseException:
                credits.release()
                raise
        self._page = page
        return page

    async def _page_at(self, url: str) -> Page[T]:
        content, links_of = await self._fetch(url)
        return Page(url, content, links_of, self._base_url)


@overload
def paginate(
    source: PageSource,
    first_url: str,
    *,
    base_url: str,
    reader: None = None,
    credits: asyncio.Semaphore | None = None,
    stopped: Callable[[], bool] | None = None,
) -> PageCursor[dict[str, Any]]: ...


@overload
def paginate(
    source: PageSource,
    first_url: str,
    *,
    base_url: str,
    reader: Callable[[str], Callable[[bytes, str], P]],
    credits: asyncio.Semaphore | None = None,
    stopped: Callable[[], bool] | None = None,
) -> PageCursor[P]: ...


def paginate(
    source: PageSource,
    first_url: str,
    *,
    base_url: str,
    reader: Callable[[str], Callable[[bytes, str], Any]] | None = None,
    credits: asyncio.Semaphore | None = None,
    stopped: Callable[[], bool] | None = None,
) -> PageCursor[Any]:
    """The pages of the chain starting at `first_url`: JSON:API documents, or with `reader`
    (given each page's URL, it returns the parser of its body, e.g. `fastpage.PageReader`)
    what the reader made of each body, parsed off the event loop."""

    async def fetch_document(url: str) -> tuple[dict[str, Any], dict[str, Any]]:
        document = await source.get_document(url)
        return document, document

    async def fetch_parsed(url: str) -> tuple[Any, dict[str, Any]]:
        assert reader is not None
        parsed = await source.get_parsed(url, reader(url))
        return parsed, {"links": parsed.links}

    fetch = fetch_document if reader is None else fetch_parsed
    return PageCursor(fetch, first_url, base_url=base_url, credits=credits, stopped=stopped)


def ids_that_fit(ids: Sequence[int], start: int, *, room: int, most: int) -> int:
    """How many of `ids[start:]` one `filter[id]=a,b,c` list takes: at most `most`, each id
    costing its digits and one byte for its comma, all within `room` bytes (what the URL
    length leaves: `max_url_length - len(url without the ids)`). 0 when the first alone is
    too long."""
    end = min(len(ids), start + most)
    stop = start
    used = 0
    while stop < end:
        cost = len(str(ids[stop])) + 1
        if used + cost > room:
            break
        used += cost
        stop += 1
    return stop - start


def id_batches(ids: Sequence[int], *, room: int, most: int) -> Iterator[list[int]]:
    """`ids`, in order, cut into `filter[id]` lists by `ids_that_fit`; an id too long for any
    list goes alone."""
    start = 0
    while start < len(ids):
        count = max(1, ids_that_fit(ids, start, room=room, most=most))
        yield list(ids[start : start + count])
        start += count
