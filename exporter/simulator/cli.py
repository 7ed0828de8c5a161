"""The `exporter simulate` command (placeholder until the full flag set lands)."""

from __future__ import annotations

import click


@click.command()
def simulate() -> None:
    """Serve the Outreach API simulator."""
