"""Benchmark: records/s the simulator serves for sequenceSteps in 1000-record pages, one server core.

Starts `exporter simulate` as a subprocess (the server), then walks every step from this process
with aiohttp: `--partitions` concurrent id-range walks (filter[id]=a..b, sort by id), each following
links.next. The first pass renders every record (cold), the second serves what the record cache
kept (warm: all of it when the steps fit `--cache-mib`, else the part that fit).

    python3 scripts/bench_simulator.py --steps 200000
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import subprocess
import sys
import time
from collections.abc import Iterator

import aiohttp
import orjson

TOKEN = "bench-token"


@contextlib.contextmanager
def simulator(
    steps: int, seed: int, cache_mib: int
) -> Iterator[tuple[str, subprocess.Popen[str], float]]:
    command = [
        sys.executable, "-m", "exporter", "simulate", "--port", "0", "--steps", str(steps),
        "--seed", str(seed), "--token", TOKEN, "--rate-limit", "1000000000/3600",
        "--cache-mib", str(cache_mib),
    ]  # fmt: skip
    started = time.perf_counter()
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    process = subprocess.Popen(command, stdout=subprocess.PIPE, text=True, env=env)
    try:
        assert process.stdout is not None
        line = process.stdout.readline()
        ready = time.perf_counter() - started
        base = next(word for word in line.split() if word.startswith("http://"))
        yield base, process, ready
    finally:
        process.terminate()
        process.wait(timeout=30)


def rss_mib(pid: int) -> float:
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def next_link(body: bytes, parse: bool) -> tuple[int, str | None]:
    """(records on the page, links.next); without `parse`, only the links object is decoded."""
    if parse:
        document = orjson.loads(body)
        return len(document["data"]), document["links"].get("next")
    links_at = body.rindex(b',"links":')
    links = orjson.loads(body[links_at + 9 : body.index(b"}", links_at) + 1])
    return body.count(b'{"type":"sequenceStep","id":'), links.get("next")


async def walk(session: aiohttp.ClientSession, url: str, parse: bool) -> tuple[int, int]:
    records = 0
    size = 0
    next_url: str | None = url
    while next_url:
        async with session.get(next_url) as response:
            body = await response.read()
            assert response.status == 200, body[:200]
        size += len(body)
        count, next_url = next_link(body, parse)
        records += count
    return records, size


async def measure(
    base: str, steps_ids: tuple[int, int], partitions: int, page: int, parse: bool
) -> tuple[int, int, float]:
    low, high = steps_ids
    width = (high - low) // partitions + 1
    urls = [
        f"{base}/sequenceSteps?page[size]={page}&filter[id]={low + i * width}..{low + (i + 1) * width - 1}"
        for i in range(partitions)
    ]
    headers = {"Authorization": f"Bearer {TOKEN}"}
    async with aiohttp.ClientSession(headers=headers) as session:
        started = time.perf_counter()
        results = await asyncio.gather(*(walk(session, u, parse) for u in urls))
        elapsed = time.perf_counter() - started
    return sum(r for r, _ in results), sum(s for _, s in results), elapsed


async def id_range(base: str) -> tuple[int, int]:
    headers = {"Authorization": f"Bearer {TOKEN}"}
    async with aiohttp.ClientSession(headers=headers) as session:
        ids = []
        for sort in ("id", "-id"):
            async with session.get(
                f"{base}/sequenceSteps?page[size]=1&sort={sort}&fields[sequenceStep]="
            ) as r:
                ids.append((await r.json(content_type=None))["data"][0]["id"])
    return ids[0], ids[1]


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--steps", type=int, default=200_000)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--partitions", type=int, default=4)
    parser.add_argument("--page-size", type=int, default=1000)
    parser.add_argument("--cache-mib", type=int, default=512, help="the server's record cache")
    parser.add_argument(
        "--parse", action="store_true", help="decode every page fully (client-bound)"
    )
    args = parser.parse_args()
    with simulator(args.steps, args.seed, args.cache_mib) as (base, process, ready):
        print(
            f"steps={args.steps} ready in {ready:.1f}s, server RSS {rss_mib(process.pid):.0f} MiB"
        )
        bounds = asyncio.run(id_range(base))
        for label in ("cold", "warm"):
            records, size, elapsed = asyncio.run(
                measure(base, bounds, args.partitions, args.page_size, args.parse)
            )
            print(
                f"{label}: {records} records, {size / 2**20:.0f} MiB in {elapsed:.2f}s = "
                f"{records / elapsed:,.0f} records/s ({size / 2**20 / elapsed:.0f} MiB/s), "
                f"server RSS {rss_mib(process.pid):.0f} MiB"
            )


if __name__ == "__main__":
    main()
