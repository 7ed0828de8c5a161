"""Credentials from the command line: the token source of `export` and `restore`, built from their credential options."""

from __future__ import annotations

from pathlib import Path

from exporter.api.auth import (
    OAuthCredentials,
    OAuthTokens,
    RefreshTokenStore,
    StaticToken,
    TokenSource,
)
from exporter.core.config import ExportSettings, default_token_file, token_url_for
from exporter.core.errors import UsageError
from exporter.core.secrets import Secret


def token_source(settings: ExportSettings) -> TokenSource:
    import aiohttp

    if settings.refresh_token is not None:
        missing = [
            flag
            for flag, value in (
                ("--client-id", settings.client_id),
                ("--client-secret", settings.client_secret),
                ("--redirect-uri", settings.redirect_uri),
            )
            if not value
        ]
        if missing:
            raise UsageError(f"OAuth needs {', '.join(missing)} as well as --refresh-token")
        assert settings.client_id and settings.client_secret and settings.redirect_uri
        credentials = OAuthCredentials(
            client_id=settings.client_id,
            client_secret=settings.client_secret,
            refresh_token=settings.refresh_token,
            redirect_uri=settings.redirect_uri,
            token_url=token_url_for(settings.base_url),
        )
        token_file = settings.token_file or default_token_file()
        out = Path(str(settings.out)).expanduser().absolute()
        if "://" not in str(settings.out) and out in token_file.expanduser().absolute().parents:
            raise UsageError(
                f"--token-file {token_file} is inside --out: backups get copied and shared, and "
                "the refresh token must not travel with them; keep it elsewhere"
            )
        store = RefreshTokenStore(token_file)
        return OAuthTokens(credentials, store, lambda: aiohttp.ClientSession())
    if settings.token is None:
        raise UsageError(
            "no credentials: pass --token (or set OUTREACH_TOKEN), or the OAuth flags "
            "--client-id, --client-secret, --refresh-token and --redirect-uri; "
            "or try --demo to export from the built-in simulator"
        )
    return StaticToken(settings.token)


def secret(value: str | None) -> Secret | None:
    return Secret(value) if value else None
