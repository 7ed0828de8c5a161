"""`exporter status DIR`: the backup's runs, totals and next export, as lines or JSON."""

from __future__ import annotations

import click

from exporter.commands.display import show_report
from exporter.commands.exits import fail
from exporter.commands.options import options
from exporter.core.errors import ExporterError, UsageError


@click.command("status")
@click.argument("directory", metavar="DIR")
@options("as_json", "shown")
def status_command(directory: str, as_json: bool, shown: str) -> None:
    """Show the runs in DIR (the newest 10 unless --runs says otherwise), the backup's totals and
    high-water marks, and what export would do next.

    DIR is a path or a URI, as `export --out` takes (s3://bucket/prefix, file://...).
    """
    from exporter.audit.status import status
    from exporter.audit.status_text import render

    if shown != "all" and not (shown.isdigit() and int(shown) >= 1):
        fail(UsageError(f"--runs {shown!r}: a number of runs (1 or more) or 'all'"))
    try:
        report = status(directory).newest(None if shown == "all" else int(shown))
    except ExporterError as exc:
        fail(exc)
    show_report(report, as_json, render)
