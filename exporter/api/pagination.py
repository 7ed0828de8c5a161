"""Cursor paging over JSON:API collections: building first-page URLs and deciding whether to follow `links.next`.

Pure functions of values. The rules, in order, for a `links.next`:
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
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from typing import Any
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
