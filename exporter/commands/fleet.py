"""`exporter fleet`: the fleet file's accounts exported here or on a Dask cluster, a table of outcomes."""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path
from typing import TYPE_CHECKING

import click

from exporter.commands.exits import fail
from exporter.commands.options import options
from exporter.core.errors import ExitCode, ExporterError, UsageError

if TYPE_CHECKING:
    from exporter.fleet.fleet import AccountResult


def summary_table(results: list[AccountResult]) -> str:
    rows = [
        (r.account, f"{r.total:,}", f"{r.requests:,}", f"{r.seconds:.1f}s", r.outcome)
        for r in results
    ]
    failures = sum(not r.ok for r in results)
    rows.append(
        (
            "total",
            f"{sum(r.total for r in results):,}",
            f"{sum(r.requests for r in results):,}",
            "",
            f"{len(results) - failures} ok, {failures} failed",
        )
    )
    header = ("account", "records", "requests", "duration", "outcome")
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(4)]
    lines = []
    for row in [header, *rows]:
        name, *numbers, outcome = row
        cells = [
            name.ljust(widths[0]),
            *(n.rjust(w) for n, w in zip(numbers, widths[1:], strict=True)),
        ]
        lines.append("  ".join([*cells, outcome]))
    return "\n".join(lines)


def _progress(result: AccountResult) -> None:
    click.echo(
        f"{result.account}: {result.outcome} ({result.total:,} records, {result.seconds:.1f}s"
        + (f", on {result.process})" if result.process else ")"),
        err=True,
    )


@click.command("fleet")
@options("config_path", "executor", "scheduler", "parallel", "retries")
def fleet_command(
    config_path: Path, executor: str, scheduler: str | None, parallel: int, retries: int
) -> None:
    """Export many accounts concurrently, each with its own credentials, output and rate budget."""
    from exporter.commands.fleet_file import load_fleet
    from exporter.fleet.fleet import run_dask, run_local

    try:
        accounts = load_fleet(config_path)
        if executor == "dask":
            if not scheduler:
                raise UsageError("--executor dask needs --scheduler ADDRESS (tcp://host:8786)")
            results = run_dask(accounts, scheduler, retries, _progress)
        else:
            if scheduler:
                raise UsageError("--scheduler is for --executor dask")
            results = asyncio.run(run_local(accounts, parallel, _progress))
    except ExporterError as exc:
        fail(exc)
    click.echo(summary_table(results))
    failures = [r.account for r in results if not r.ok]
    if failures:
        stopped = all(r.outcome.startswith("stopped") for r in results if not r.ok)
        click.echo(
            f"{'stopped' if stopped else 'error'}: {len(failures)} of {len(results)} "
            f"account(s) did not finish: {', '.join(failures)} (see the table); an unfinished "
            "export resumes when the fleet runs again",
            err=True,
        )
        sys.exit(int(ExitCode.INTERRUPTED if stopped else ExitCode.FAILED))
