"""The `exporter` command group: every command registered, and one error line for every expected failure."""

from __future__ import annotations

import sys
from collections.abc import Sequence
from typing import Any

import click

from exporter import __version__
from exporter.commands.compact import compact_command
from exporter.commands.exits import errors_as_json, fail
from exporter.commands.export import export
from exporter.commands.fleet import fleet_command
from exporter.commands.restore import restore_command
from exporter.commands.simulate import simulate
from exporter.commands.status import status_command
from exporter.commands.values import usage_error_line
from exporter.commands.verify import verify_command
from exporter.core.arrowpool import choose_arrow_pool
from exporter.core.errors import ExitCode, ExporterError


class ExporterGroup(click.Group):
    """The command group, with one error line for every expected failure.

    click's own usage errors (a bad flag, environment value or config value) become one line
    naming where the value came from, exit 2; an `ExporterError` raised while options are read
    (a config file that cannot be read) is its one line and exit code."""

    def main(  # type: ignore[override]
        self, args: Sequence[str] | None = None, prog_name: str | None = None, **extra: Any
    ) -> Any:
        choose_arrow_pool()  # before any command imports pyarrow
        errors_as_json(False)
        argv = list(sys.argv[1:] if args is None else args)
        try:
            return super().main(argv, prog_name, standalone_mode=False, **extra)
        except click.exceptions.Abort:
            click.echo("stopped: interrupted", err=True)
            sys.exit(int(ExitCode.INTERRUPTED))
        except click.exceptions.NoArgsIsHelpError as exc:
            exc.show()  # no command given: the help, as click shows it
            sys.exit(exc.exit_code)
        except click.ClickException as exc:
            click.echo(f"error: {usage_error_line(exc, argv)}", err=True)
            usage = isinstance(exc, click.UsageError) or exc.exit_code == ExitCode.USAGE
            sys.exit(int(ExitCode.USAGE) if usage else exc.exit_code)
        except ExporterError as exc:
            fail(exc)


@click.group(
    cls=ExporterGroup,
    context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100},
)
@click.version_option(__version__, prog_name="exporter")
def main() -> None:
    """Bulk exporter and backup tool for the Outreach.io API."""


main.add_command(export)
main.add_command(simulate)
main.add_command(verify_command)
main.add_command(status_command)
main.add_command(compact_command)
main.add_command(fleet_command)
main.add_command(restore_command)

__all__ = ["ExitCode", "main"]
