"""How a command ends on an expected failure: one line on stderr (a JSON line with --log-format json) and the error's exit code."""

from __future__ import annotations

import sys
from typing import NoReturn

import click
import orjson

from exporter.core.errors import ExitCode, ExporterError

_JSON_ERRORS = False  # --log-format json: errors are JSON lines too


def fail(error: ExporterError) -> NoReturn:
    """One `error:` line (`stopped:` for an interrupted run) on stderr, then the error's exit
    code: every command ends an expected failure here."""
    prefix = "stopped" if error.exit_code is ExitCode.INTERRUPTED else "error"
    if _JSON_ERRORS:
        line = orjson.dumps(
            {
                "level": "error",
                "event": prefix,
                "message": str(error),
                "exit_code": int(error.exit_code),
            }
        ).decode()
        click.echo(line, err=True)
    else:
        click.echo(f"{prefix}: {error}", err=True)
    sys.exit(int(error.exit_code))


def errors_as_json(on: bool) -> None:
    """From now on, `fail` writes its line as JSON (`--log-format json`) or as text."""
    global _JSON_ERRORS
    _JSON_ERRORS = on
