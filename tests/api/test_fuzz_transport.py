"""Fuzzing every answer shape through the client and the page parsing: an ExporterError of one line, never a traceback."""

from __future__ import annotations

import asyncio
import gzip
import json
import threading
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import orjson
import pytest
from aiohttp import web
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from exporter.api.auth import StaticToken
from exporter.api.client import ApiClient, ClientSettings
from exporter.api.documents import page_records
from exporter.api.pagination import ChainGuard, next_link
from exporter.core.errors import ExporterError
from exporter.core.secrets import Secret
from exporter.model.fastpage import PageReader
from exporter.model.normalize import Normalizer

TOKEN = "fuzz-token-5e1d"


@dataclass
class Answer:
    status: int = 200
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes = b"{}"


@dataclass
class Server:
    root: str
    answer: Answer


@pytest.fixture(scope="module")
def server() -> Iterator[Server]:
    """A loopback server in its own thread that answers every request with `server.answer`."""
    ready = threading.Event()
    state: dict[str, Any] = {}
    box = Server(root="", answer=Answer())

    async def handle(request: web.Request) -> web.StreamResponse:
        answer = box.answer
        return web.Response(status=answer.status, body=answer.body, headers=answer.headers)

    async def main() -> None:
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", handle)
        runner = web.AppRunner(app, access_log=None, handle_signals=False)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        box.root = f"http://127.0.0.1:{runner.addresses[0][1]}"
        stop = asyncio.Event()
        state["loop"], state["stop"] = asyncio.get_running_loop(), stop
        ready.set()
        await stop.wait()
        await runner.cleanup()

    thread = threading.Thread(target=lambda: asyncio.run(main()), daemon=True)
    thread.start()
    ready.wait(10)
    yield box
    state["loop"].call_soon_threadsafe(state["stop"].set)
    thread.join(10)


ASCII = st.text(st.characters(min_codepoint=0x20, max_codepoint=0x7E), max_size=40)
NUMBERISH = st.one_of(
    ASCII,
    st.sampled_from(["nan", "inf", "-inf", "1e309", "-1", "0", "1e9", "99999999999999999999"]),
    st.integers(-(10**30), 10**30).map(str),
    st.floats(allow_nan=True).map(repr),
)
HEADERS = st.fixed_dictionaries(
    {},
    optional={
        "Date": st.one_of(ASCII, st.just("Thu, 01 Jan 9999 00:00:00 GMT")),
        "X-RateLimit-Limit": NUMBERISH,
        "X-RateLimit-Remaining": NUMBERISH,
        "X-RateLimit-Reset": NUMBERISH,
        "Retry-After": st.one_of(NUMBERISH, st.just("Wed, 21 Oct 2015 07:28:00 GMT")),
        "Content-Type": st.one_of(
            ASCII, st.sampled_from(["application/vnd.api+json", "text/html", "application/json"])
        ),
        "Content-Encoding": st.sampled_from(["gzip", "deflate", "br", "identity", "x-bogus"]),
        "Location": st.one_of(ASCII, st.just("http://127.0.0.2:9/x"), st.just("/api/v2/x")),
    },
)
JSON_LEAF = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**70), 2**70),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=20),
)
JSON = st.recursive(
    JSON_LEAF,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=10), inner, max_size=4)
    ),
    max_leaves=20,
)
IDS = st.one_of(st.integers(-(2**70), 2**70), st.text(max_size=8), st.none(), st.floats())
RECORD = st.fixed_dictionaries(
    {
        "type": st.one_of(st.just("sequenceStep"), st.text(max_size=12), JSON_LEAF),
        "id": IDS,
    },
    optional={
        "attributes": st.one_of(
            st.dictionaries(
                st.sampled_from(["order", "stepType", "createdAt", "updatedAt", "taskNote", "x"]),
                JSON,
                max_size=4,
            ),
            JSON,
        ),
        "relationships": st.one_of(
            st.dictionaries(
                st.sampled_from(["sequence", "creator", "sequenceTemplates", "y"]),
                st.one_of(
                    JSON,
                    st.fixed_dictionaries(
                        {"data": st.one_of(JSON, st.fixed_dictionaries({"type": JSON, "id": IDS}))}
                    ),
                ),
                max_size=3,
            ),
            JSON,
        ),
        "links": JSON,
    },
)
DOCUMENT = st.fixed_dictionaries(
    {},
    optional={
        "data": st.one_of(st.lists(RECORD, max_size=4), JSON),
        "links": st.one_of(
            st.fixed_dictionaries({}, optional={"next": st.one_of(JSON, ASCII)}), JSON
        ),
        "errors": st.one_of(
            st.lists(
                st.fixed_dictionaries(
                    {}, optional={"id": JSON, "title": JSON, "detail": JSON, "details": JSON}
                ),
                max_size=2,
            ),
            JSON,
        ),
        "meta": JSON,
        "included": JSON,
    },
)


def deep(depth: int) -> bytes:
    return b'{"data":' + b"[" * depth + b"]" * depth + b"}"


BODIES = st.one_of(
    st.binary(max_size=200),
    DOCUMENT.map(lambda d: json.dumps(d).encode()),  # big integers too
    st.integers(1, 5000).map(deep),
    st.sampled_from(
        [
            b'{"data":[{"type":"sequenceStep","id":1e400}]}',
            b'{"data":[{"type":"sequenceStep","id":123456789012345678901234567890}]}',
            b'{"data":[],"links":{"next":"http://u:p@127.0.0.1:1/x"}}',
            b"",
            b"null",
            b"[]",
        ]
    ),
)
STATUS = st.one_of(
    st.sampled_from([200, 201, 204, 301, 302, 303, 304, 307, 308, 400, 401, 403, 404, 408]),
    st.sampled_from([422, 425, 429, 500, 502, 503, 504, 599]),
    st.integers(200, 599),
)


def encode(body: bytes, headers: dict[str, str], honest: bool) -> bytes:
    encoding = headers.get("Content-Encoding")
    if not honest or encoding not in ("gzip", "deflate"):
        return body
    return gzip.compress(body) if encoding == "gzip" else zlib.compress(body)


async def fetch(root: str, how: str) -> None:
    base = root + "/api/v2"
    url = base + "/sequenceSteps?page[size]=50"
    config = ClientSettings(
        base_url=base,
        max_attempts=2,
        backoff_base=0.001,
        backoff_max=0.002,
        max_rate_limit_waits=1,
        request_deadline=5,
        rate_period=1.0,
    )
    async with ApiClient(config, StaticToken(Secret(TOKEN))) as client:
        if how == "document":
            document = await client.get_document(url)
            records = page_records(document, url)
            link = next_link(document, url, base)
        else:
            page = await client.get_parsed(url, PageReader(Normalizer("sequenceStep"), url))
            records = list(range(page.batch.table.num_rows)) if hasattr(page.batch, "table") else []
            link = next_link({"links": page.links}, url, base)
        if link is not None:
            ChainGuard(url).follow(url, link, len(records))


@pytest.mark.slow
@settings(
    max_examples=100,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    status=STATUS,
    headers=HEADERS,
    body=BODIES,
    honest=st.booleans(),
    how=st.sampled_from(["document", "page"]),
)
def test_any_answer_is_data_or_one_clean_error_line(
    server: Server, status: int, headers: dict[str, str], body: bytes, honest: bool, how: str
) -> None:
    server.answer = Answer(status, headers, encode(body, headers, honest))

    async def run() -> None:
        try:
            await asyncio.wait_for(fetch(server.root, how), 3)
        except ExporterError as error:
            text = str(error)
            assert text and text.isprintable() and len(text) < 2000, text
            assert TOKEN not in text
        except TimeoutError:
            # Only an API that asked to be waited for may hold a request: a 429, a Retry-After,
            # or rate-limit headers saying its window is spent (a wait of at most an hour).
            told = {"Retry-After", "X-RateLimit-Remaining", "X-RateLimit-Reset"} & set(headers)
            assert status == 429 or told, (status, headers)

    asyncio.run(run())


@pytest.mark.parametrize("encoding", ["gzip", "x-gzip", "deflate", "raw deflate", "identity"])
def test_every_encoding_a_server_may_use_is_inflated(server: Server, encoding: str) -> None:
    document = {"data": [{"type": "sequenceStep", "id": i} for i in range(2000)], "links": {}}
    raw = orjson.dumps(document)
    if encoding in ("gzip", "x-gzip"):
        body = gzip.compress(raw)
    elif encoding == "deflate":
        body = zlib.compress(raw)
    elif encoding == "raw deflate":
        packer = zlib.compressobj(6, zlib.DEFLATED, -zlib.MAX_WBITS)
        body = packer.compress(raw) + packer.flush()
    else:
        body = raw
    name = "deflate" if encoding == "raw deflate" else encoding
    server.answer = Answer(
        200, {"Content-Encoding": name, "Content-Type": "application/vnd.api+json"}, body
    )

    async def run() -> dict[str, Any]:
        base = server.root + "/api/v2"
        config = ClientSettings(base_url=base, max_attempts=1)
        async with ApiClient(config, StaticToken(Secret(TOKEN))) as client:
            return await client.get_document(base + "/sequenceSteps")

    assert asyncio.run(run()) == document
