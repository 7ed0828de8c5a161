"""Benchmark: export throughput, requests and peak memory against the simulator, beside a fetch-only floor.

Usage:
    python scripts/bench.py --steps 100000 --concurrency 1,4,16 --latency 0,0.3
    python scripts/bench.py --steps 10000,100000 --markdown BENCHMARKS.md

For each latency setting, one simulator runs in its own process (`exporter simulate`, loopback
only). For each concurrency, two clients run against it, each in its own process so that peak
memory (ru_maxrss from wait4) is theirs alone:
- the floor: the same id-range partitions and pages, fetched with aiohttp and parsed with orjson,
  nothing normalized, nothing written: what any client must at least spend;
- the export: `exporter export` writing Parquet, with its manifest read back for the row count.
Figures are printed as a table, with the export/floor ratio; nothing here is asserted.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

TOKEN = "bench-token"
UNLIMITED = "1000000000/3600"


@dataclass
class Measure:
    label: str
    records: int
    requests: int
    seconds: float
    peak_mib: float

    @property
    def rate(self) -> float:
        return self.records / self.seconds if self.seconds else 0.0


@contextlib.contextmanager
def simulator(
    steps: int, latency: float, extra: list[str]
) -> Iterator[tuple[str, subprocess.Popen[str]]]:
    command = [
        sys.executable,
        "-m",
        "exporter",
        "simulate",
        "--host",
        "127.0.0.1",
        "--port",
        "0",
        "--steps",
        str(steps),
        "--seed",
        "1",
        "--token",
        TOKEN,
        "--rate-limit",
        UNLIMITED,
        "--latency",
        str(latency),
        *extra,
    ]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, text=True)
    try:
        assert process.stdout is not None
        line = process.stdout.readline()
        url = next((w for w in line.split() if w.startswith("http://")), None)
        if url is None:
            raise SystemExit(f"simulator did not start: {line!r}")
        base = url.rstrip("/")
        if not base.endswith("/api/v2"):
            base += "/api/v2"
        yield base, process
    finally:
        process.terminate()
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(timeout=10)
        if process.poll() is None:
            process.kill()


def run_measured(command: list[str]) -> tuple[float, float, str]:
    """(wall seconds, peak RSS MiB, stdout) of a child process."""
    started = time.perf_counter()
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    _pid, status, usage = os.wait4(process.pid, 0)
    seconds = time.perf_counter() - started
    assert process.stdout is not None and process.stderr is not None
    out, err = process.stdout.read(), process.stderr.read()
    process.returncode = os.waitstatus_to_exitcode(status)
    if process.returncode != 0:
        raise SystemExit(
            f"{' '.join(command[:4])} failed ({process.returncode}): {err.strip()[-500:]}"
        )
    return seconds, usage.ru_maxrss / 1024, out


def measure_floor(base: str, concurrency: int, page_size: int) -> Measure:
    command = [
        sys.executable,
        __file__,
        "_floor",
        "--base-url",
        base,
        "--concurrency",
        str(concurrency),
        "--page-size",
        str(page_size),
    ]
    seconds, peak, out = run_measured(command)
    result = orjson.loads(out.strip().splitlines()[-1])
    return Measure(f"floor c={concurrency}", result["records"], result["requests"], seconds, peak)


def measure_export(base: str, concurrency: int, page_size: int, extra: list[str]) -> Measure:
    out_dir = Path(tempfile.mkdtemp(prefix="bench-export-"))
    try:
        command = [
            sys.executable,
            "-m",
            "exporter",
            "export",
            "--out",
            str(out_dir),
            "--base-url",
            base,
            "--token",
            TOKEN,
            "--concurrency",
            str(concurrency),
            "--page-size",
            str(page_size),
            "--rate-limit",
            UNLIMITED,
            *extra,
        ]
        seconds, peak, _out = run_measured(command)
        manifest = orjson.loads((out_dir / "_manifest.json").read_bytes())
        records = sum(r["rows"] for r in manifest["resources"].values())
        requests = int(manifest.get("stats", {}).get("requests", 0))
        return Measure(f"export c={concurrency}", records, requests, seconds, peak)
    finally:
        shutil.rmtree(out_dir, ignore_errors=True)


async def floor_walk(base: str, concurrency: int, page_size: int) -> dict[str, int]:
    """Fetch-only: the export's id-range partitions and pages, parsed and dropped."""
    import aiohttp

    headers = {"Authorization": f"Bearer {TOKEN}", "Accept": "application/vnd.api+json"}
    connector = aiohttp.TCPConnector(limit=concurrency)
    counts = {"records": 0, "requests": 0}
    async with aiohttp.ClientSession(headers=headers, connector=connector) as session:

        async def get(url: str) -> dict[str, Any]:
            counts["requests"] += 1
            async with session.get(url) as response:
                response.raise_for_status()
                document: dict[str, Any] = orjson.loads(await response.read())
                return document

        edge = base + "/sequenceSteps?sort={}&page[size]=1&fields[sequenceStep]="
        low = (await get(edge.format("id")))["data"]
        high = (await get(edge.format("-id")))["data"]
        if not low:
            return counts
        first, last = int(low[0]["id"]), int(high[0]["id"])
        parts = concurrency * 2
        span = last - first + 1
        edges = [first + span * i // parts for i in range(parts + 1)]
        queue: asyncio.Queue[tuple[int, int]] = asyncio.Queue()
        for i in range(parts):
            if edges[i + 1] > edges[i]:
                queue.put_nowait((edges[i], edges[i + 1] - 1))

        async def worker() -> None:
            while not queue.empty():
                a, b = queue.get_nowait()
                url: str | None = (
                    f"{base}/sequenceSteps?filter[id]={a}..{b}&sort=id&page[size]={page_size}"
                )
                while url:
                    document = await get(url)
                    counts["records"] += len(document["data"])
                    url = (document.get("links") or {}).get("next")

        await asyncio.gather(*(worker() for _ in range(concurrency)))
    return counts


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    memory = ""
    with contextlib.suppress(OSError):
        total_kb = int(Path("/proc/meminfo").read_text().split()[1])
        memory = f", {total_kb / 1024 / 1024:.0f} GiB"
    return f"{os.cpu_count()} cores ({cpu}){memory}, Python {platform.python_version()}"


def table(rows: list[dict[str, Any]]) -> str:
    header = "| steps | latency/page | concurrency | client | records/s | vs floor | records | requests | seconds | peak MiB |"
    lines = [header, "|" + "---|" * 10]
    for r in rows:
        lines.append(
            f"| {r['steps']:,} | {r['latency'] * 1000:.0f} ms | {r['concurrency']} | {r['client']} | "
            f"{r['rate']:,.0f} | {r['ratio']} | {r['records']:,} | {r['requests']:,} | "
            f"{r['seconds']:.2f} | {r['peak']:.0f} |"
        )
    return "\n".join(lines)


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "_floor":
        parser = argparse.ArgumentParser()
        parser.add_argument("_floor")
        parser.add_argument("--base-url", required=True)
        parser.add_argument("--concurrency", type=int, required=True)
        parser.add_argument("--page-size", type=int, default=1000)
        args = parser.parse_args()
        print(
            orjson.dumps(
                asyncio.run(floor_walk(args.base_url, args.concurrency, args.page_size))
            ).decode()
        )
        return

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", default="100000", help="comma list, e.g. 10000,100000")
    parser.add_argument("--concurrency", default="1,4,16", help="comma list")
    parser.add_argument("--latency", default="0,0.3", help="seconds per page, comma list")
    parser.add_argument("--page-size", type=int, default=1000)
    parser.add_argument("--export-arg", action="append", default=[], help="extra flag for export")
    parser.add_argument(
        "--simulator-arg", action="append", default=[], help="extra flag for simulate"
    )
    parser.add_argument("--markdown", type=Path, help="also write the table to this file")
    args = parser.parse_args()

    rows: list[dict[str, Any]] = []
    for steps in [int(s) for s in args.steps.split(",")]:
        for latency in [float(x) for x in args.latency.split(",")]:
            with simulator(steps, latency, args.simulator_arg) as (base, _process):
                for concurrency in [int(c) for c in args.concurrency.split(",")]:
                    floor = measure_floor(base, concurrency, args.page_size)
                    export = measure_export(base, concurrency, args.page_size, args.export_arg)
                    for m, ratio in (
                        (floor, "1.00"),
                        (export, f"{export.rate / floor.rate:.2f}" if floor.rate else "-"),
                    ):
                        row = {
                            "steps": steps,
                            "latency": latency,
                            "concurrency": concurrency,
                            "client": m.label.split()[0],
                            "rate": m.rate,
                            "ratio": ratio,
                            "records": m.records,
                            "requests": m.requests,
                            "seconds": m.seconds,
                            "peak": m.peak_mib,
                        }
                        rows.append(row)
                        print(
                            f"steps={steps} latency={latency}s c={concurrency} {m.label.split()[0]:6} "
                            f"{m.rate:10,.0f} rec/s  x{ratio}  {m.records:,} records  "
                            f"{m.requests:,} requests  {m.seconds:.2f}s  {m.peak_mib:.0f} MiB",
                            flush=True,
                        )
    report = table(rows)
    print()
    print(report)
    print(f"\nmachine: {machine()}")
    if args.markdown:
        args.markdown.write_text(f"{report}\n\nMachine: {machine()}\n")


if __name__ == "__main__":
    main()
