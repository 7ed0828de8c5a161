"""The benchmark's floor: the export's own GETs replayed and read into Arrow, nothing else done.

Run by scripts/bench.py in its own process (so its peak memory and CPU seconds are its own):

    python scripts/bench_floor.py ROOT URLS_FILE CONCURRENCY TOKEN

URLS_FILE holds the path and query of every GET the export sent, one a line, in the order the
simulator served them (its request log). They are fetched with aiohttp, at most CONCURRENCY in
flight, and every body is turned into an Arrow table by pyarrow's C++ JSON reader in a thread
pool, while the next request is already out; nothing is normalized, nothing is written. That is
the least any client must do with these pages, so it bounds the export from below in time: the
replay knows every URL up front (no page waits for the one before it, no probe for the id range).

A page is one JSON document, not NDJSON: it is read as one row whose `data` column holds the
records (block_size past the body's length). The schema inferred from a collection's first page
is given to the reader for the next pages of the same path (unknown fields still inferred), which
skips the inference (measured: 6.3 ms against 6.5 ms for a 1,000-step page of 1.5 MB; orjson into
Python objects took 11 to 28 ms); a page the schema does not fit is read again with inference.
Prints one JSON line: {"records": n, "requests": m}. Records of one-record probes
(`page[size]=1`) are not counted: the same records come again in the data pages.
"""

from __future__ import annotations

import asyncio
import io
import json
import os
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.json as pj


def is_probe(url: str) -> bool:
    """A one-record page (the export's count and id-range probes)."""
    return parse_qs(urlsplit(url).query).get("page[size]") == ["1"]


class ArrowPages:
    """Reads page bodies into Arrow tables, one schema remembered per collection path."""

    def __init__(self) -> None:
        self.schemas: dict[str, pa.Schema] = {}

    def read(self, body: bytes, path: str) -> pa.Table:
        """The page as a one-row table (its `data`, `links`, `meta` as columns)."""
        read_options = pj.ReadOptions(block_size=len(body) + 1, use_threads=False)
        schema = self.schemas.get(path)
        if schema is not None:
            with_schema = pj.ParseOptions(
                explicit_schema=schema, unexpected_field_behavior="infer", newlines_in_values=True
            )
            try:
                return pj.read_json(io.BytesIO(body), read_options, with_schema)
            except pa.ArrowInvalid:
                pass  # e.g. a column all null on the first page: infer this one anew
        table = pj.read_json(
            io.BytesIO(body), read_options, pj.ParseOptions(newlines_in_values=True)
        )
        self.schemas[path] = table.schema  # a dict store: atomic under the GIL
        return table


def record_count(table: pa.Table) -> int:
    """Records in a page table: the length of its `data` list (0 for a single-resource document)."""
    if "data" not in table.column_names:
        return 0
    data = table.column("data")
    if not pa.types.is_list(data.type):
        return 0
    return int(pc.sum(pc.list_value_length(data)).as_py() or 0)


async def replay(root: str, urls: list[str], concurrency: int, token: str) -> dict[str, int]:
    """Fetch every URL (below `root`), `concurrency` at once; read each body into Arrow."""
    import aiohttp

    headers = {"Authorization": f"Bearer {token}", "Accept": "application/vnd.api+json"}
    counts = {"records": 0, "requests": 0}
    queue = list(reversed(urls))
    pages = ArrowPages()
    loop = asyncio.get_running_loop()
    connector = aiohttp.TCPConnector(limit=concurrency)
    with ThreadPoolExecutor(max_workers=os.cpu_count() or 1) as pool:
        async with aiohttp.ClientSession(headers=headers, connector=connector) as session:

            async def read(body: bytes, url: str) -> None:
                table = await loop.run_in_executor(pool, pages.read, body, urlsplit(url).path)
                if not is_probe(url):
                    counts["records"] += record_count(table)

            async def worker() -> None:
                # Each worker keeps one body being read while its next request is out: the
                # connection is never idle for a parse, and at most two bodies per worker wait.
                reading: asyncio.Future[None] | None = None
                while queue:
                    url = queue.pop()
                    async with session.get(root + url) as response:
                        if response.status != 200:
                            raise SystemExit(f"floor: {url} answered {response.status}")
                        body = await response.read()
                    counts["requests"] += 1
                    if reading is not None:
                        await reading
                    reading = asyncio.ensure_future(read(body, url))
                if reading is not None:
                    await reading

            await asyncio.gather(*(worker() for _ in range(concurrency)))
    return counts


def main() -> None:
    root, urls_file, concurrency, token = sys.argv[1:5]
    urls = [line for line in Path(urls_file).read_text().splitlines() if line]
    print(json.dumps(asyncio.run(replay(root, urls, int(concurrency), token))))


if __name__ == "__main__":
    main()
