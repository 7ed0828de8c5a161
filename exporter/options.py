"""Command-line options shared by the commands that talk to the API (export, restore): credentials."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

F = Callable[..., Any]


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
