"""`exporter verify DIR`: the backup checked against its manifest, the report as lines or JSON, its exit code."""

from __future__ import annotations

import click

from exporter.commands.display import show_report
from exporter.commands.exits import fail
from exporter.commands.options import options
from exporter.core.errors import ExporterError


@click.command("verify")
@click.argument("directory", metavar="DIR")
@options("as_json")
def verify_command(directory: str, as_json: bool) -> None:
    """Check every file in DIR against its manifest: sizes, sha256, rows, schemas, extra files.

    DIR is a path or a URI, as `export --out` takes (s3://bucket/prefix, file://...). Exit 0
    when everything matches, 6 when anything differs, 4 when nothing differs but some files
    cannot be read, 1 for an unfinished run whose committed files match, 2 when DIR holds no
    export.
    """
    from exporter.audit.verify import render, verify

    try:
        report = verify(directory)
    except ExporterError as exc:
        fail(exc)
    show_report(report, as_json, render)
    raise SystemExit(int(report.exit_code))
