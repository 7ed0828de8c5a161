"""Command-line pieces shared by several commands: credential options, value types, and how a report is shown."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from exporter.config import RateLimit, check_base_url, parse_rate_limit

F = Callable[..., Any]


class RateLimitType(click.ParamType[RateLimit]):
    name = "N/SECONDS"

    def convert(
        self, value: Any, param: click.Parameter | None, ctx: click.Context | None
    ) -> RateLimit:
        if isinstance(value, RateLimit):
            return value
        try:
            return parse_rate_limit(str(value))
        except ValueError as exc:
            self.fail(str(exc), param, ctx)


class BaseUrlType(click.ParamType[str]):
    name = "URL"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> str:
        try:
            return check_base_url(str(value))
        except ValueError as exc:
            self.fail(str(exc), param, ctx)


def credential_options(command: F) -> F:
    """--token, or the OAuth refresh-token grant (--client-id, --client-secret, --refresh-token,
    --redirect-uri, --token-file); each also from its OUTREACH_* variable."""
    options = [
        click.option(
            "--token", envvar="OUTREACH_TOKEN", help="Static access token.  [env: OUTREACH_TOKEN]"
        ),
        click.option(
            "--client-id",
            envvar="OUTREACH_CLIENT_ID",
            help="OAuth client id.  [env: OUTREACH_CLIENT_ID]",
        ),
        click.option(
            "--client-secret",
            envvar="OUTREACH_CLIENT_SECRET",
            help="OAuth client secret.  [env: OUTREACH_CLIENT_SECRET]",
        ),
        click.option(
            "--refresh-token",
            envvar="OUTREACH_REFRESH_TOKEN",
            help="OAuth refresh token (first run; later runs use the rotated one saved in "
            "--token-file).  [env: OUTREACH_REFRESH_TOKEN]",
        ),
        click.option(
            "--redirect-uri",
            envvar="OUTREACH_REDIRECT_URI",
            help="OAuth redirect URI registered for the app.  [env: OUTREACH_REDIRECT_URI]",
        ),
        click.option(
            "--token-file",
            type=click.Path(dir_okay=False, path_type=Path),
            envvar="OUTREACH_TOKEN_FILE",
            help="Where the newest refresh token is kept (mode 0600).  "
            "[default: ~/.config/outreach-exporter/refresh-token.json; env: OUTREACH_TOKEN_FILE]",
        ),
    ]
    for option in reversed(options):
        command = option(command)
    return command


def show_report(report: Any, as_json: bool, render: Callable[[Any], list[str]]) -> None:
    """A command's report: indented JSON with --json, else its rendered lines."""
    import orjson

    if as_json:
        click.echo(orjson.dumps(report.to_json(), option=orjson.OPT_INDENT_2).decode())
    else:
        for line in render(report):
            click.echo(line)


def exit_on_error(error: Any) -> None:
    """One `error:` line on stderr and the error's exit code (for an expected failure)."""
    click.echo(f"error: {error}", err=True)
    raise SystemExit(int(error.exit_code))
