"""The fleet file: [defaults] and [[account]] tables read into `fleet.Account`s, every key checked, credentials kept as references."""

from __future__ import annotations

import os
import re
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

import click

from exporter.commands.options import ACCOUNT_OPTIONS, OPTIONS
from exporter.commands.values import toml_value
from exporter.core.config import DEFAULT_BASE_URL, read_toml
from exporter.core.errors import UsageError, redact_url
from exporter.core.secrets import CREDENTIAL_RULE, header_safe
from exporter.fleet.fleet import Account, Credentials

ACCOUNT_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")

# Keys that would hold a secret's value; the fleet file names where secrets are instead.
INLINE_SECRETS = {
    "token": "token_env or token_file",
    "access_token": "token_env or token_file",
    "client_secret": "client_secret_env or client_secret_file",
    "refresh_token": "refresh_token_env or refresh_token_file",
    "password": "a *_env or *_file reference",
}
OAUTH_ONLY_KEYS = (
    "client_secret_env",
    "client_secret_file",
    "refresh_token_env",
    "refresh_token_file",
    "redirect_uri",
)
CREDENTIAL_KEYS = ("token_env", "token_file", "client_id", *OAUTH_ONLY_KEYS)

# Export options an account (or [defaults]) may set: the option table's, checked by its types.
OPTION_KEYS = ACCOUNT_OPTIONS
# `repair = true`: as `export --repair` (damaged files set aside and fetched again; with
# `incremental = true`, a lost checkpoint rebuilt from the manifest).
ACCOUNT_KEYS = ("name", "base_url", "out", *CREDENTIAL_KEYS, *OPTION_KEYS, "repair")
DEFAULT_KEYS = tuple(k for k in ACCOUNT_KEYS if k != "name")


def load_fleet(path: Path) -> list[Account]:
    return parse_fleet(read_toml(path, "fleet file"), str(path))


def parse_fleet(data: Mapping[str, Any], source: str = "fleet file") -> list[Account]:
    """The accounts of a parsed fleet file, each with [defaults] under its own keys."""
    unknown = sorted(set(data) - {"defaults", "account"})
    if unknown:
        raise UsageError(
            f"{source}: unknown top-level key(s) {', '.join(unknown)}; "
            "expected a [defaults] table and [[account]] tables"
        )
    defaults = data.get("defaults", {})
    if not isinstance(defaults, dict):
        raise UsageError(f"{source}: [defaults] must be a table")
    _check_keys(defaults, DEFAULT_KEYS, f"{source}: [defaults]")
    tables = data.get("account", [])
    if not isinstance(tables, list) or not tables:
        raise UsageError(f"{source}: no accounts; add [[account]] tables with name, out, ...")
    accounts: list[Account] = []
    for number, table in enumerate(tables, 1):
        if not isinstance(table, dict):
            raise UsageError(f"{source}: account {number} must be a table")
        name = table.get("name")
        if not isinstance(name, str) or not ACCOUNT_NAME.fullmatch(name):
            raise UsageError(
                f"{source}: account {number} needs a name of letters, digits, '.', '_' or '-' "
                "(at most 64)"
            )
        where = f"{source}: account {name!r}"
        _check_keys(table, ACCOUNT_KEYS, where)
        accounts.append(_account(name, {**defaults, **table}, where))
    _check_distinct(accounts, source)
    return accounts


def _check_keys(table: Mapping[str, Any], allowed: Iterable[str], where: str) -> None:
    """Refuse inline secrets first (naming the key, never its value), then unknown keys."""
    for key in table:
        if key in INLINE_SECRETS:
            raise UsageError(
                f"{where}: {key} would put a secret in the fleet file; refused. Name where it "
                f"is instead, with {INLINE_SECRETS[key]}"
            )
    unknown = sorted(set(table) - set(allowed))
    if unknown:
        raise UsageError(
            f"{where}: unknown key(s) {', '.join(unknown)}; known: {', '.join(sorted(allowed))}"
        )


def _account(name: str, merged: dict[str, Any], where: str) -> Account:
    def text(key: str) -> str | None:
        value = merged.get(key)
        if value is None:
            return None
        if not isinstance(value, str) or not value:
            raise UsageError(f"{where}: {key} must be a non-empty string")
        # {name} makes one [defaults] path serve every account, e.g. "/backups/{name}".
        return value.replace("{name}", name)

    try:  # the option table's type, with the fleet file's message (not folded to one line)
        base_url = OPTIONS["base_url"].value_type.convert(
            text("base_url") or DEFAULT_BASE_URL, None, None
        )
    except click.BadParameter as exc:
        raise UsageError(f"{where}: base_url: {exc.message}") from None
    out = text("out")
    if out is None:
        raise UsageError(f"{where}: out is missing (the account's output directory)")
    out = _option("out", out, where)
    references = {key: text(key) for key in CREDENTIAL_KEYS}
    for key, value in references.items():
        if key.endswith("_env") and value is not None and not ENV_NAME.fullmatch(value):
            # Not echoed: a value that is no variable name may be the secret itself.
            raise UsageError(
                f"{where}: {key} must be the name of an environment variable "
                "(letters, digits and _), not the secret itself"
            )
    for key in ("client_id", "redirect_uri"):
        if references[key] is not None and not header_safe(references[key] or ""):
            raise UsageError(f"{where}: {key} must be {CREDENTIAL_RULE}")
    credentials = Credentials(**references)
    _check_credentials(credentials, where)
    options = {key: _option(key, merged[key], where) for key in OPTION_KEYS if key in merged}
    repair = _option("repair", merged.get("repair", False), where)
    return Account(
        name=name,
        base_url=base_url,
        out=out,
        credentials=credentials,
        options=options,
        repair=bool(repair),
    )


def _check_credentials(c: Credentials, where: str) -> None:
    oauth_only = [k for k in OAUTH_ONLY_KEYS if getattr(c, k) is not None]
    if not c.oauth:
        if oauth_only:
            raise UsageError(f"{where}: {', '.join(oauth_only)} need client_id (OAuth)")
        if (c.token_env is None) == (c.token_file is None):
            raise UsageError(
                f"{where}: give the token by reference with one of token_env or token_file, "
                "or OAuth (client_id, client_secret_env, refresh_token_env, redirect_uri, "
                "token_file)"
            )
        return
    if c.token_env is not None:
        raise UsageError(f"{where}: token_env is for a static token; with OAuth leave it out")
    missing = []
    for label, refs in (
        ("client_secret_env or client_secret_file", (c.client_secret_env, c.client_secret_file)),
        ("refresh_token_env or refresh_token_file", (c.refresh_token_env, c.refresh_token_file)),
    ):
        given = sum(ref is not None for ref in refs)
        if given == 0:
            missing.append(label)
        elif given == 2:
            raise UsageError(f"{where}: give one of {label}, not both")
    if c.redirect_uri is None:
        missing.append("redirect_uri")
    if c.token_file is None:
        # Every run of the account must find the refresh token the last one rotated in, on
        # whichever worker it runs: a per-machine default would lose it.
        missing.append("token_file (where the rotated refresh token is kept; every worker's path)")
    if missing:
        raise UsageError(f"{where}: OAuth needs {', '.join(missing)}")


def _option(key: str, value: Any, where: str) -> Any:
    """A key the option table declares, checked as `export --config` checks it."""
    spec = OPTIONS[key]
    return toml_value(spec.value_type, value, f"{where}: {key}", is_flag=spec.is_flag)


def canonical_location(location: str, where: str = "") -> tuple[str, ...]:
    """Where a backup (or a token store) is, spelled one way, so that two spellings of one place
    compare equal: a local path resolved (`~`, `.`, `..`, symbolic links, trailing slashes),
    `file://` URIs as their path, other URIs as (scheme, bucket, prefix segments) with the
    bucket's case, credentials, port, query, `.` and empty segments left out."""
    try:
        parts = urlsplit(location)
        scheme = parts.scheme.lower()
        if not scheme or len(scheme) == 1:  # a path (C: on Windows)
            return ("file", *Path(os.path.realpath(os.path.expanduser(location))).parts)
        if scheme == "file":
            return ("file", *Path(os.path.realpath(unquote(parts.path) or "/")).parts)
        bucket = (parts.hostname or "").lower()
    except ValueError as exc:
        raise UsageError(f"{where}{redact_url(location)!r} is not a path or a URI: {exc}") from None
    segments: list[str] = []
    for segment in unquote(parts.path).split("/"):
        if segment == "..":
            if segments:
                segments.pop()
        elif segment not in ("", "."):
            segments.append(segment)
    return (scheme, bucket, *segments)


def _check_distinct(accounts: list[Account], source: str) -> None:
    """Two accounts in one directory (or one inside the other's), or rotating one refresh-token
    store, would break both; the same place spelled two ways is still the same place."""
    names: set[str] = set()
    for account in accounts:
        if account.name in names:
            raise UsageError(f"{source}: two accounts share name {account.name!r}")
        names.add(account.name)
    outs: dict[tuple[str, ...], Account] = {}
    for account in accounts:
        where = f"{source}: account {account.name!r}: out "
        location = canonical_location(account.out, where)
        other = outs.get(location)
        if other is not None:
            raise UsageError(
                f"{source}: accounts {other.name!r} and {account.name!r} share one backup: "
                f"out {redact_url(other.out)!r} and {redact_url(account.out)!r} are the same place"
            )
        outs[location] = account
    for location, account in outs.items():
        for depth in range(1, len(location)):
            outer = outs.get(location[:depth])
            if outer is not None:
                raise UsageError(
                    f"{source}: account {account.name!r}'s out {redact_url(account.out)!r} lies "
                    f"inside account {outer.name!r}'s out {redact_url(outer.out)!r}; give each "
                    "account a place of its own"
                )
    stores: dict[tuple[str, ...], Account] = {}
    for account in accounts:
        if not account.credentials.oauth or account.credentials.token_file is None:
            continue
        token_file = account.credentials.token_file
        store = canonical_location(token_file, f"{source}: account {account.name!r}: token_file ")
        other = stores.get(store)
        if other is not None:
            raise UsageError(
                f"{source}: accounts {other.name!r} and {account.name!r} share token_file "
                f"{token_file!r}: each OAuth account rotates its own refresh token"
            )
        stores[store] = account
        for depth in range(1, len(store)):
            holder = outs.get(store[:depth])
            if holder is not None:
                raise UsageError(
                    f"{source}: account {account.name!r}'s token_file {token_file!r} is inside "
                    f"account {holder.name!r}'s out: backups get copied and shared, and the "
                    "refresh token must not travel with them; keep it elsewhere"
                )
