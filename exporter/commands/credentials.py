"""Credentials from the command line: the credential options as settings, checked together, and the token source they make."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, TypedDict

from exporter.core.config import ExportSettings, default_token_file
from exporter.core.errors import UsageError
from exporter.core.secrets import Secret

if TYPE_CHECKING:
    from exporter.api.auth import TokenSource


class CredentialOptions(TypedDict):
    """The credential options as a command receives them (`options.CREDENTIALS`)."""

    token: str | None
    client_id: str | None
    client_secret: str | None
    refresh_token: str | None
    redirect_uri: str | None
    token_file: Path | None


class CredentialSettings(TypedDict):
    """The `ExportSettings` fields the credential options fill (secrets wrapped)."""

    token: Secret | None
    client_id: str | None
    client_secret: Secret | None
    refresh_token: Secret | None
    redirect_uri: str | None
    token_file: Path | None


def credential_settings(options: CredentialOptions) -> CredentialSettings:
    """The credential options' values as settings: an empty secret is no secret."""
    return CredentialSettings(
        token=secret(options["token"]),
        client_id=options["client_id"],
        client_secret=secret(options["client_secret"]),
        refresh_token=secret(options["refresh_token"]),
        redirect_uri=options["redirect_uri"],
        token_file=options["token_file"],
    )


def secret(value: str | None) -> Secret | None:
    return Secret(value) if value else None


def command_token_source(settings: ExportSettings, *, has_demo: bool = False) -> TokenSource:
    """`export`'s and `restore`'s token source: the credential flags checked together (every
    OAuth flag, --refresh-token only until --token-file holds a rotated one; a token file
    outside --out; some credential at all), each refusal naming the flags (and `--demo` for a
    command that has it), then `auth.token_source`."""
    from exporter.api.auth import RefreshTokenStore, token_source  # aiohttp: only to run

    if settings.oauth:
        token_file = settings.token_file or default_token_file()
        saved = settings.refresh_token is None and RefreshTokenStore(token_file).load()
        missing = [
            flag
            for flag, value in (
                ("--client-id", settings.client_id),
                ("--client-secret", settings.client_secret),
                ("--redirect-uri", settings.redirect_uri),
                ("--refresh-token", settings.refresh_token or saved),
            )
            if not value
        ]
        if missing:
            first = (
                f" (a first run: --token-file {token_file} holds no saved refresh token yet)"
                if "--refresh-token" in missing
                else ""
            )
            raise UsageError(f"OAuth needs {', '.join(missing)}{first}")
        out = Path(str(settings.out)).expanduser().absolute()
        if "://" not in str(settings.out) and out in token_file.expanduser().absolute().parents:
            raise UsageError(
                f"--token-file {token_file} is inside --out: backups get copied and shared, and "
                "the refresh token must not travel with them; keep it elsewhere"
            )
    elif settings.token is None:
        raise UsageError(
            "no credentials: pass --token (or set OUTREACH_TOKEN), or the OAuth flags "
            "--client-id, --client-secret, --refresh-token and --redirect-uri"
            + ("; or try --demo to export from the built-in simulator" if has_demo else "")
        )
    return token_source(settings)
