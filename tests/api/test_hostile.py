"""Hostile and broken answers, end to end: a tampering proxy in front of the simulator serves crafted pages."""

from __future__ import annotations

import copy
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import orjson
import pytest
from aiohttp import web

from exporter.api.pagination import STALL_PAGES
from exporter.core.errors import ApiError, ResponseError
from tests.helpers.runs import fast_retries, run_export
from tests.helpers.sim import TOKEN, StartSimulator
from tests.helpers.tampering_proxy import Crafted, Proxy, Tamper, proxy_for, site
from tests.helpers.truth import assert_rows_equal, expected_steps, read_rows


@dataclass
class Trap:
    """A server that must never be asked anything: it records who knocked and with what."""

    url: str
    requests: list[dict[str, str]] = field(default_factory=list)


@asynccontextmanager
async def trap_on(host: str) -> AsyncIterator[Trap]:
    trap = Trap(url="")

    async def handle(request: web.Request) -> web.StreamResponse:
        trap.requests.append(dict(request.headers))
        return web.json_response({"data": [], "links": {}})

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", handle)
    async with site(app, host) as root:
        trap.url = root
        yield trap


def _query(url: str) -> dict[str, str]:
    return dict(parse_qsl(urlsplit(url).query))


def is_data_page(url: str) -> bool:
    """A page of steps: the crawl's opening page (id-sorted, `count=true`) or a partition's
    `filter[id]` page; not the one-record largest-id probe."""
    query = _query(url)
    opening = query.get("sort") == "id" and query.get("count") == "true"
    return ("filter[id]" in query or opening) and query.get("page[size]") != "1"


def first_page(url: str) -> bool:
    return is_data_page(url) and "page[after]" not in _query(url)


def second_page(url: str) -> bool:
    return is_data_page(url) and "page[after]" in _query(url)


def document(status: int, doc: dict[str, Any]) -> Crafted:
    return Crafted(status, orjson.dumps(doc))


def once(tamper: Tamper, times: int = 1) -> Tamper:
    """`tamper` for its first `times` hits only (a passing fault)."""
    left = [times]

    def wrapped(url: str, doc: dict[str, Any]) -> Crafted | None:
        if left[0] <= 0:
            return None
        crafted = tamper(url, doc)
        if crafted is not None:
            left[0] -= 1
        return crafted

    return wrapped


SMALL = {"page_size": 50, "concurrency": 1, "initial_partitions": 1}


@pytest.fixture
async def proxied(start_simulator: StartSimulator) -> AsyncIterator[tuple[Any, Proxy]]:
    running = await start_simulator(steps=200, seed=17)
    async with proxy_for(running.root_url) as proxy:
        yield running, proxy


@pytest.mark.parametrize("where", ["host", "port", "scheme"])
async def test_next_link_to_another_origin_is_refused_and_gets_no_token(
    proxied: tuple[Any, Proxy], tmp_path: Path, where: str
) -> None:
    running, proxy = proxied
    host = "127.0.0.2" if where == "host" else "127.0.0.1"
    async with trap_on(host) as trap:
        trap_root = proxy.root.replace("http://", "https://") if where == "scheme" else trap.url

        def foreign(url: str, doc: dict[str, Any]) -> Crafted | None:
            if not first_page(url) or not doc["links"].get("next"):
                return None
            doc["links"]["next"] = doc["links"]["next"].replace(proxy.root, trap_root)
            return document(200, doc)

        proxy.tamper = foreign
        with pytest.raises(ResponseError, match="another origin") as caught:
            await run_export(proxy.base_url, tmp_path, **SMALL)
        assert TOKEN not in str(caught.value)
        assert trap.requests == []  # never asked, so never sent the token
        assert not any(u.startswith(trap_root) for u in proxy.seen)
    # the checkpoint is intact: once the API behaves, the same export resumes to the exact result
    proxy.tamper = None
    await run_export(proxy.base_url, tmp_path, **SMALL)
    assert_rows_equal(read_rows(tmp_path / "sequenceSteps"), expected_steps(running.sim))


async def test_next_link_equal_to_the_current_page_is_a_loop(
    proxied: tuple[Any, Proxy], tmp_path: Path
) -> None:
    _running, proxy = proxied

    def loop(url: str, doc: dict[str, Any]) -> Crafted | None:
        if not second_page(url):
            return None
        doc["links"]["next"] = url
        return document(200, doc)

    proxy.tamper = loop
    with pytest.raises(ResponseError, match="looping"):
        await run_export(proxy.base_url, tmp_path, **SMALL)
    assert sum(1 for u in proxy.seen if second_page(u)) == 1  # not asked again and again


async def test_next_link_back_to_an_earlier_page_is_a_loop_and_the_export_resumes(
    proxied: tuple[Any, Proxy], tmp_path: Path
) -> None:
    running, proxy = proxied
    chain: list[str] = []

    def cycle(url: str, doc: dict[str, Any]) -> Crafted | None:
        if not is_data_page(url):
            return None
        chain.append(url)
        if url == chain[min(2, len(chain) - 1)] and len(chain) >= 3:
            doc["links"]["next"] = chain[1]  # page 3 leads back to page 2, every time
            return document(200, doc)
        return None

    proxy.tamper = cycle
    with pytest.raises(ResponseError, match="leads back to a page this chain already read"):
        await run_export(proxy.base_url, tmp_path, **SMALL)
    assert len(chain) == 3  # page 2 was not asked for a second time
    proxy.tamper = None  # the checkpoint is intact: the same export resumes to the exact result
    await run_export(proxy.base_url, tmp_path, **SMALL)
    assert_rows_equal(read_rows(tmp_path / "sequenceSteps"), expected_steps(running.sim))


async def test_pages_that_only_repeat_records_are_a_loop_and_the_export_resumes(
    proxied: tuple[Any, Proxy], tmp_path: Path
) -> None:
    """Fresh cursors every time, but the records of the first page again and again."""
    running, proxy = proxied
    first: list[dict[str, Any]] = []
    served: list[str] = []

    def repeat(url: str, doc: dict[str, Any]) -> Crafted | None:
        if not is_data_page(url):
            return None
        served.append(url)
        if not first:
            first.extend(copy.deepcopy(doc["data"]))
            return None
        doc["data"] = copy.deepcopy(first)
        return document(200, doc)

    proxy.tamper = repeat
    with pytest.raises(ResponseError, match=f"{STALL_PAGES} pages in a row brought no new"):
        await run_export(proxy.base_url, tmp_path, **{**SMALL, "page_size": 5})
    # The opening page, the partition's first page (records it had not seen), then STALL_PAGES
    # pages that brought nothing new: 200 steps in pages of 5, it stopped well before 40.
    assert len(served) == 2 + STALL_PAGES
    proxy.tamper = None
    await run_export(proxy.base_url, tmp_path, **{**SMALL, "page_size": 5})
    assert_rows_equal(read_rows(tmp_path / "sequenceSteps"), expected_steps(running.sim))


def _set_record(field_name: str, value: Any) -> Tamper:
    def tamper(url: str, doc: dict[str, Any]) -> Crafted | None:
        if not second_page(url):
            return None
        doc["data"][1][field_name] = value
        return document(200, doc)

    return tamper


@pytest.mark.slow
@pytest.mark.parametrize(
    ("field_name", "value", "match"),
    [
        ("type", "sequenceState", "of type 'sequenceState'"),
        ("type", "../../../../tmp/evil", "of type"),
        ("id", "../../../../tmp/evil", "non-integer id"),
        ("id", 1.5, "non-integer id"),
        ("id", "12abc", "non-integer id"),
        ("id", True, "non-integer id"),
        ("id", -4, "out-of-range id"),
        ("id", 2**63, "non-integer id|out-of-range id"),
        ("id", None, "non-integer id"),
    ],
)
async def test_bad_type_or_id_stops_the_export_and_writes_nothing_unsafe(
    proxied: tuple[Any, Proxy], tmp_path: Path, field_name: str, value: Any, match: str
) -> None:
    _running, proxy = proxied
    proxy.tamper = _set_record(field_name, value)
    out = tmp_path / "out"
    with pytest.raises(ResponseError, match=match):
        await run_export(proxy.base_url, out, **SMALL)
    assert [p.name for p in tmp_path.iterdir()] == ["out"]
    for path in out.rglob("*"):
        assert path.resolve().is_relative_to(out.resolve())
        assert "evil" not in path.name


async def test_wrong_content_type_is_retried_then_refused_clearly(
    proxied: tuple[Any, Proxy], tmp_path: Path
) -> None:
    running, proxy = proxied

    def as_text(url: str, doc: dict[str, Any]) -> Crafted | None:
        if not second_page(url):
            return None
        return Crafted(200, orjson.dumps(doc), content_type="text/plain")

    proxy.tamper = once(as_text, 2)  # a passing fault: retried, then fine
    await run_export(proxy.base_url, tmp_path / "a", retry=fast_retries(3), **SMALL)
    assert_rows_equal(read_rows(tmp_path / "a" / "sequenceSteps"), expected_steps(running.sim))

    proxy.tamper = as_text  # for good: one clear error naming the page
    with pytest.raises(ApiError) as caught:
        await run_export(proxy.base_url, tmp_path / "b", retry=fast_retries(3), **SMALL)
    text = str(caught.value)
    assert "a text/plain body where JSON was expected" in text
    assert "gave up after 3 attempts" in text and f"url {proxy.base_url}/sequenceSteps?" in text


@pytest.mark.parametrize("status", [200, 502, 503])
async def test_html_error_page_is_retried(
    proxied: tuple[Any, Proxy], tmp_path: Path, status: int
) -> None:
    running, proxy = proxied
    page = b"<html><body><h1>Bad Gateway</h1>nginx</body></html>"

    def html(url: str, doc: dict[str, Any]) -> Crafted | None:
        return Crafted(status, page, "text/html") if second_page(url) else None

    proxy.tamper = once(html, 3)
    job, _result = await run_export(proxy.base_url, tmp_path, retry=fast_retries(), **SMALL)
    assert_rows_equal(read_rows(tmp_path / "sequenceSteps"), expected_steps(running.sim))
    assert job.client is not None and job.client.stats.retries >= 1


async def test_errors_document_spelled_details(proxied: tuple[Any, Proxy], tmp_path: Path) -> None:
    _running, proxy = proxied

    def refuse(url: str, doc: dict[str, Any]) -> Crafted | None:
        if not second_page(url):
            return None
        error = {"id": "invalidCursor", "title": "Bad Request", "details": "cursor went stale"}
        return document(400, {"errors": [error]})

    proxy.tamper = refuse
    with pytest.raises(ApiError) as caught:
        await run_export(proxy.base_url, tmp_path, **SMALL)
    text = str(caught.value)
    assert "cursor went stale" in text and "error id 'invalidCursor'" in text
    assert "status 400" in text and f"url {proxy.base_url}/sequenceSteps?" in text


async def test_an_echoed_token_is_scrubbed_from_the_error(
    proxied: tuple[Any, Proxy], tmp_path: Path
) -> None:
    _running, proxy = proxied

    def echo(url: str, doc: dict[str, Any]) -> Crafted | None:
        if not second_page(url):
            return None
        error = {"id": "forbidden", "detail": f"token {TOKEN} may not read this"}
        return document(400, {"errors": [error]})

    proxy.tamper = echo
    with pytest.raises(ApiError) as caught:
        await run_export(proxy.base_url, tmp_path, **SMALL)
    assert TOKEN not in str(caught.value) and "token *** may not read this" in str(caught.value)


async def test_relationship_with_neither_data_nor_links(
    proxied: tuple[Any, Proxy], tmp_path: Path
) -> None:
    running, proxy = proxied
    changed: dict[int, dict[str, Any]] = {}

    def hollow(url: str, doc: dict[str, Any]) -> Crafted | None:
        if not is_data_page(url):
            return None
        for record in doc["data"][::7]:
            record["relationships"]["sequence"] = {}
            record["relationships"]["sequenceTemplates"] = {"meta": {"count": 0}}
            record["relationships"]["mailings"] = {}
            changed[int(record["id"])] = record
        return document(200, doc)

    proxy.tamper = hollow
    await run_export(proxy.base_url, tmp_path, **SMALL)
    rows = read_rows(tmp_path / "sequenceSteps")
    assert changed
    expected = []
    for row in expected_steps(running.sim):
        if row["id"] in changed:
            row = {**row, "sequenceId": None, "sequenceTemplateIds": None}
        expected.append(row)
    assert_rows_equal(rows, expected)


async def test_unknown_attributes_are_kept(proxied: tuple[Any, Proxy], tmp_path: Path) -> None:
    running, proxy = proxied
    added: dict[int, Any] = {}

    def extend(url: str, doc: dict[str, Any]) -> Crafted | None:
        if not is_data_page(url):
            return None
        for n, record in enumerate(doc["data"]):
            value = {"nested": [n, "ü"], "flag": n % 2 == 0}
            record["attributes"]["brandNewField"] = value
            added[int(record["id"])] = value
        return document(200, doc)

    proxy.tamper = extend
    await run_export(proxy.base_url, tmp_path, **SMALL)
    rows = read_rows(tmp_path / "sequenceSteps")
    assert len(rows) == len(added) == 200
    for row in rows:
        assert orjson.loads(row["_extra"]) == {"brandNewField": added[row["id"]]}
    stripped = [{**r, "_extra": None} for r in rows]
    assert_rows_equal(stripped, expected_steps(running.sim))


async def test_the_same_record_on_two_pages_is_written_once(
    proxied: tuple[Any, Proxy], tmp_path: Path
) -> None:
    running, proxy = proxied
    last_of_page: list[dict[str, Any]] = []

    def repeat(url: str, doc: dict[str, Any]) -> Crafted | None:
        if not is_data_page(url):
            return None
        if last_of_page:
            doc["data"].insert(0, copy.deepcopy(last_of_page[-1]))
        if doc["data"]:
            last_of_page.append(doc["data"][-1])
        return document(200, doc)

    proxy.tamper = repeat
    job, _result = await run_export(proxy.base_url, tmp_path, **SMALL)
    assert len(last_of_page) >= 3
    assert_rows_equal(read_rows(tmp_path / "sequenceSteps"), expected_steps(running.sim))
    # Every page after the first repeats one record: the one repeated from the opening page into
    # the partition past it is out of that partition's range, the others are duplicates.
    stats = job.crawl_stats["sequenceStep"]
    assert (stats.duplicates, stats.out_of_range) == (len(last_of_page) - 2, 1)
