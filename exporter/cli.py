"""Command-line interface: a thin click layer over the export, verify, status, restore and simulate commands."""

from __future__ import annotations

import click

from exporter import __version__


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, prog_name="exporter")
def main() -> None:
    """Bulk exporter and backup tool for the Outreach.io API."""


def _register_subcommands() -> None:
    from exporter.simulator.cli import simulate

    main.add_command(simulate)


_register_subcommands()
