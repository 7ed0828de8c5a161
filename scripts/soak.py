"""Fault soak: many exports from a simulator with ~20% faulty answers of every kind, each compared with the ground truth.

python3 -m scripts.soak --runs 20 --steps 1500 --fault-share 0.2
"""

from __future__ import annotations

import argparse
import asyncio
import random
import shutil
import sys
import tempfile
import time
from pathlib import Path

from exporter.api.auth import StaticToken
from exporter.api.client import ClientSettings
from exporter.core.config import ExportSettings, RateLimit, RetryPolicy
from exporter.core.errors import ExporterError
from exporter.core.secrets import Secret
from exporter.export.run import Export
from exporter.model.schema import resource_type
from exporter.simulator import Faults, Simulator, SimulatorConfig, serve

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from tests.helpers.truth import (
    STEP_RELATIONSHIP_COLUMNS,
    assert_rows_equal,
    expected_related,
    expected_row,
    read_rows,
)

TOKEN = "soak-token"  # the simulator's static token, not a secret


def faults(share: float, seed: int) -> Faults:
    """About `share` of answers faulty, spread over every kind the simulator has."""
    part = share / 6
    return Faults(
        error_rate=part,
        reset_rate=part,
        truncate_rate=part,
        malformed_rate=part,
        html_rate=part,
        slow_body_s=0.05,
        slow_body_rate=part,
        big_page_502_above=400,  # and every page bigger than 400 records: 502
        seed=seed,
    )


def check(sim: Simulator, out: Path) -> int:
    steps = list(sim.truth.records("sequenceStep"))
    assert_rows_equal(
        read_rows(out / "sequenceSteps"),
        [expected_row(r, STEP_RELATIONSHIP_COLUMNS) for r in steps],
    )
    records = len(steps)
    for target, rows in expected_related(sim, steps).items():
        directory = out / resource_type(target).collection
        assert_rows_equal(read_rows(directory), sorted(rows, key=lambda r: r["id"]))
        records += len(rows)
    return records


async def soak(args: argparse.Namespace) -> int:
    # Waits shorter than an API needs: the simulator's faults pass at once.
    retry = RetryPolicy(args.max_attempts, args.backoff_base, ClientSettings.backoff_max)
    rng = random.Random(args.seed)
    totals = {"runs": 0, "records": 0, "requests": 0, "retries": 0, "smaller": 0, "failures": 0}
    server_requests = 0
    started = time.monotonic()
    work = Path(tempfile.mkdtemp(prefix="soak-"))
    try:
        for run in range(1, args.runs + 1):
            seed = rng.randrange(1 << 30)
            sim = Simulator(
                SimulatorConfig(
                    steps=args.steps,
                    seed=seed,
                    static_token=TOKEN,
                    faults=faults(args.fault_share, seed),
                )
            )
            out = work / f"run-{run}"
            async with serve(sim, host="127.0.0.1", port=0) as root:
                settings = ExportSettings(
                    out=out,
                    base_url=root + "/api/v2",
                    token=Secret(TOKEN),
                    rate_limit=RateLimit(100_000, 1.0),
                    concurrency=rng.choice([2, 4, 8]),
                    page_size=rng.choice([100, 500, 1000]),
                    retry=retry,
                )
                job = Export(settings, StaticToken(Secret(TOKEN)))
                try:
                    await job.run()
                    records = check(sim, out)
                    outcome = f"exact, {records:,} records"
                    totals["records"] += records
                except (ExporterError, AssertionError) as exc:
                    totals["failures"] += 1
                    outcome = f"FAILED: {str(exc)[:200]}"
                server_requests += sim.counters.requests
            stats = job.client.stats if job.client else None
            if stats is not None:
                totals["requests"] += stats.requests
                totals["retries"] += stats.retries
                totals["smaller"] += stats.smaller_pages
            totals["runs"] += 1
            print(
                f"run {run}: seed {seed}, concurrency {settings.concurrency}, page "
                f"{settings.page_size}: {outcome}; "
                + (f"{stats.requests} requests, {stats.retries} retries" if stats else ""),
                flush=True,
            )
            shutil.rmtree(out, ignore_errors=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    seconds = time.monotonic() - started
    print(
        f"{totals['runs']} runs, {totals['failures']} failed; {totals['records']:,} records "
        f"compared; {totals['requests']:,} requests ({server_requests:,} seen by the simulator), "
        f"{totals['retries']:,} retries, {totals['smaller']:,} smaller-page retries; "
        f"{seconds:.1f}s"
    )
    return 1 if totals["failures"] else 0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--steps", type=int, default=1500)
    parser.add_argument("--fault-share", type=float, default=0.2)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--backoff-base", type=float, default=0.02)
    parser.add_argument("--max-attempts", type=int, default=10)
    args = parser.parse_args()
    raise SystemExit(asyncio.run(soak(args)))


if __name__ == "__main__":
    main()
