"""`exporter compact DIR`: the backup's current state published, one count line per collection."""

from __future__ import annotations

import click

from exporter.commands.exits import fail
from exporter.commands.options import options
from exporter.core.errors import ExporterError, UsageError


@click.command("compact")
@click.argument("directory", metavar="DIR")
@options("into")
def compact_command(directory: str, into: str | None) -> None:
    """Write the newest version of every live record of a backup (full run, deltas, tombstones)."""
    from exporter.backup import manifest
    from exporter.backup.compact import CURRENT_PREFIX, POINTER_NAME, compact
    from exporter.backup.storage import Storage
    from exporter.model.schema import resource_type

    try:
        storage = Storage.open(directory, flag="DIR")
        target = None if into is None else Storage.open(into, flag="--into")
        if not storage.exists(manifest.MANIFEST_NAME):
            raise UsageError(f"{storage.display} holds no finished export to compact")
        rows = compact(storage, target)
    except ExporterError as exc:
        fail(exc)
    where = (
        storage.shown(CURRENT_PREFIX + POINTER_NAME)
        if target is None
        else target.shown(POINTER_NAME)
    )
    for type_name, count in rows.items():
        click.echo(f"{resource_type(type_name).collection}: {count:,} current records")
    click.echo(f"wrote {where}")
