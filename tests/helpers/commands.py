"""The command line run in this process (click's CliRunner): `status` and `verify` reports, any command's exit code and output."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import orjson
from click.testing import CliRunner

from exporter.commands.main import main


def status_json(out: Path) -> dict[str, Any]:
    result = CliRunner().invoke(main, ["status", str(out), "--json"])
    assert result.exit_code == 0, (result.output, result.exception)
    report: dict[str, Any] = orjson.loads(result.stdout)
    return report


def status_text(out: Path) -> list[str]:
    result = CliRunner().invoke(main, ["status", str(out)])
    assert result.exit_code == 0, (result.output, result.exception)
    return result.stdout.splitlines()


def verify_json(out: Path) -> tuple[int, dict[str, Any]]:
    result = CliRunner().invoke(main, ["verify", str(out), "--json"])
    assert result.exception is None or isinstance(result.exception, SystemExit), result.output
    report: dict[str, Any] = orjson.loads(result.stdout)
    return result.exit_code, report


def verify_text(out: Path) -> tuple[int, list[str]]:
    result = CliRunner().invoke(main, ["verify", str(out)])
    assert result.exception is None or isinstance(result.exception, SystemExit), result.output
    return result.exit_code, result.stdout.splitlines()


def invoke(args: list[str], env: dict[str, str] | None = None) -> tuple[int, str, str]:
    """The command line in this process (click's CliRunner): exit code, stdout, stderr."""
    from click.testing import CliRunner

    from exporter.commands.main import main

    clean = {k: None for k in os.environ if k.startswith("OUTREACH_")}
    result = CliRunner().invoke(main, args, env={**clean, **(env or {})})
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise result.exception
    return result.exit_code, result.stdout, result.stderr
