"""Rate benchmark: exports against a simulator subprocess with a small rate window; achieved requests/s vs allowed, 429s.

python3 -m scripts.rate_bench --rate-limit 50/2 --steps 3000 --page-size 20 --runs 2
"""

from __future__ import annotations

import argparse
import asyncio
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from exporter.api.auth import StaticToken
from exporter.core.config import ExportSettings, parse_rate_limit
from exporter.core.secrets import Secret
from exporter.export.run import Export

TOKEN = "bench-token"  # the simulator's static token, not a secret


def start_simulator(steps: int, rate_limit: str) -> tuple[subprocess.Popen[str], str]:
    command = [
        sys.executable,
        *("-m", "exporter", "simulate", "--port", "0", "--steps", str(steps)),
        *("--token", TOKEN, "--rate-limit", rate_limit),
    ]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, text=True)
    assert process.stdout is not None
    line = process.stdout.readline()
    match = re.search(r"(http://\S+/api/v2)", line)
    if match is None:
        process.kill()
        raise SystemExit(f"simulator did not start: {line!r}")
    return process, match.group(1)


async def one_export(base_url: str, out: Path, args: argparse.Namespace) -> dict[str, float]:
    settings = ExportSettings(
        out=out,
        base_url=base_url,
        token=Secret(TOKEN),
        rate_limit=parse_rate_limit(args.rate_limit),
        page_size=args.page_size,
        concurrency=args.concurrency,
        relationships=args.relationships,
    )
    job = Export(settings, StaticToken(Secret(TOKEN)))
    started = time.monotonic()
    await job.run()
    elapsed = time.monotonic() - started
    assert job.client is not None
    stats = job.client.stats
    return {
        "seconds": elapsed,
        "requests": stats.requests,
        "rate_limited": stats.rate_limited,
        "pauses": stats.rate_pauses,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rate-limit", default="50/2")
    parser.add_argument("--steps", type=int, default=3000)
    parser.add_argument("--page-size", type=int, default=20)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--relationships", default="none")
    parser.add_argument("--runs", type=int, default=2)
    args = parser.parse_args()
    limit = parse_rate_limit(args.rate_limit)
    allowed = limit.requests / limit.seconds
    process, base_url = start_simulator(args.steps, args.rate_limit)
    work = Path(tempfile.mkdtemp(prefix="rate-bench-"))
    try:
        print(f"simulator {base_url}, window {args.rate_limit} = {allowed:.2f} requests/s allowed")
        for run in range(1, args.runs + 1):
            figures = asyncio.run(one_export(base_url, work / f"run-{run}", args))
            rate = figures["requests"] / figures["seconds"]
            print(
                f"run {run}: {figures['requests']:.0f} requests in {figures['seconds']:.2f}s = "
                f"{rate:.2f}/s, {100 * rate / allowed:.1f}% of allowed; "
                f"429s {figures['rate_limited']:.0f}, pauses on the API's window "
                f"{figures['pauses']:.0f}"
            )
    finally:
        process.terminate()
        process.wait(timeout=10)
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
