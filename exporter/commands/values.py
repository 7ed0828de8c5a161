"""Option values: strict value types (bounded, finite, header-safe), TOML values checked by the same types, and one-line usage errors."""

# One strict validation for every way a value arrives (a flag, an OUTREACH_* variable, a TOML
# config file, a fleet file):
# 1. The value types below (and core.bounds') are bounded and finite: no NaN, no infinity, no 20-digit count that
#    overflows a checkpoint later; a number of seconds has a ceiling as well as a floor.
# 2. A TOML value is checked for its exact TOML type first (`page_size = 5.7` and
#    `concurrency = true` are refused, not rounded or read as 1), then converted by the same
#    click type a flag goes through (`toml_value`), the option table's (commands/options.py).
#    Config and fleet files both use it.
# 3. Every refusal is one line that names where the value came from (`usage_error_line`).

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any, TypeVar

import click

from exporter.backup.location import check_location
from exporter.core.config import (
    Concurrency,
    RateLimit,
    check_base_url,
    parse_concurrency,
    parse_rate_limit,
)
from exporter.core.errors import UsageError
from exporter.core.secrets import CREDENTIAL_RULE, header_safe

T = TypeVar("T")


class ParsedType(click.ParamType[T]):
    """A value read from text by `parse` (its ValueError is the refusal); one already read
    (a `kind`, e.g. a default given as the value itself) passes as it is."""

    kind: type[T]

    def parse(self, text: str) -> T:
        raise NotImplementedError

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> T:
        if isinstance(value, self.kind):
            return value
        try:
            return self.parse(str(value))
        except ValueError as exc:
            self.fail(str(exc), param, ctx)


class RateLimitType(ParsedType[RateLimit]):
    name = "N/SECONDS"
    kind = RateLimit

    def parse(self, text: str) -> RateLimit:
        return parse_rate_limit(text)


class ConcurrencyType(ParsedType[Concurrency]):
    """`auto`, `auto:N` or `N` (`config.parse_concurrency`); in TOML a whole number or a string."""

    name = "auto|N"
    kind = Concurrency

    def parse(self, text: str) -> Concurrency:
        return parse_concurrency(text)


class BaseUrlType(click.ParamType[str]):
    name = "URL"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> str:
        try:
            return check_base_url(str(value))
        except ValueError as exc:
            self.fail(str(exc), param, ctx)


class RelationshipsType(click.ParamType[str]):
    """`all`, `none`, or a comma list of relationship names (checked here, kept as text)."""

    name = "LIST"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> str:
        from exporter.export.links import parse_selection

        if not any(part.strip() for part in str(value).split(",")):
            # An empty list is refused, not read as `all` (or as nothing): say which.
            self.fail("empty; say all, none, or a comma list of relationships", param, ctx)
        try:
            parse_selection(str(value))
        except UsageError as exc:
            self.fail(str(exc).removeprefix("--relationships: "), param, ctx)
        return str(value)


class ResourcesType(click.ParamType[str]):
    """`all` or a comma list of collection names (checked here, kept as text)."""

    name = "LIST"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> str:
        from exporter.export.selection import parse_resources

        try:
            parse_resources(str(value))
        except UsageError as exc:
            self.fail(str(exc).removeprefix("--resources: "), param, ctx)
        return str(value)


class LocationType(click.ParamType[str]):
    """A directory or a URI to write a backup to (`location.check_location`)."""

    name = "DIR|URI"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> str:
        text = os.fspath(value) if isinstance(value, Path) else str(value)
        try:
            check_location(text)
        except ValueError as exc:
            self.fail(str(exc), param, ctx)
        return text


class IdList(click.ParamType[tuple[int, ...]]):
    """A comma list of step ids, each from 1 to `most`."""

    name = "ID,ID,..."

    def __init__(self, most: int) -> None:
        self.most = most

    def convert(
        self, value: Any, param: click.Parameter | None, ctx: click.Context | None
    ) -> tuple[int, ...]:
        if isinstance(value, tuple):
            return value
        parts = [p.strip() for p in str(value).split(",") if p.strip()]
        if not parts or not all(p.isascii() and p.isdigit() for p in parts):
            self.fail(
                f"{str(value)[:60]!r} is not a comma list of step ids, e.g. 1,2,3", param, ctx
            )
        ids = tuple(int(p) for p in parts if len(p) <= 19)
        if len(ids) < len(parts) or not all(1 <= i <= self.most for i in ids):
            self.fail(f"a step id is a number from 1 to {self.most}", param, ctx)
        return ids


class CredentialType(click.ParamType[str]):
    """A token, secret, client id or redirect URI: `header_safe`, and never shown in an error."""

    name = "TEXT"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> str:
        text = str(value)
        if not header_safe(text):
            self.fail(f"must be {CREDENTIAL_RULE}; the value is not shown", param, ctx)
        return text


def toml_value(
    type_: click.ParamType[Any], value: Any, where: str, *, is_flag: bool = False
) -> Any:
    """A value read from a TOML file, checked for its exact TOML type and then converted by the
    flag's own click type; `where` names the file and key in the one-line error, followed by
    the value as written (`c.toml: page_size = "abc": ...`), unless it is a credential's."""
    expected: tuple[type, ...]
    if is_flag or isinstance(type_, click.types.BoolParamType):
        expected, wanted = (bool,), "true or false"
    elif isinstance(type_, click.types.IntParamType):
        expected, wanted = (int,), "a whole number"
    elif isinstance(type_, ConcurrencyType):
        expected, wanted = (int, str), 'a whole number or "auto"'
    elif isinstance(type_, click.types.FloatParamType):
        expected, wanted = (int, float), "a number"
    else:
        expected, wanted = (str,), "a string"
    shown = f"{where} = {_toml_text(value, isinstance(type_, CredentialType))}"
    if not isinstance(value, expected) or (bool not in expected and isinstance(value, bool)):
        raise UsageError(f"{shown}: must be {wanted}, not a TOML {_toml_type(value)}")
    try:
        return type_.convert(value, None, None)
    except click.BadParameter as exc:
        raise UsageError(f"{shown}: {_one_line(exc.message)}") from None


def _toml_text(value: Any, secret: bool) -> str:
    """A TOML value as it would be written, short and on one line; a credential's never."""
    if secret:
        return "(a credential, not shown)"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return _shown_text(value, quote=True)
    if isinstance(value, int | float):
        return _shown_text(str(value))
    if isinstance(value, list):
        return "[...]"
    if isinstance(value, dict):
        return "{...}"
    return _shown_text(str(value))


def _shown_text(text: str, *, quote: bool = False) -> str:
    """A value the user wrote, shown in an error: at most 40 characters, on one line (quoted as
    TOML writes a string with `quote`, or when it holds a control character)."""
    short = text[:40] + ("..." if len(text) > 40 else "")
    if quote or not short.isprintable():
        return json.dumps(short, ensure_ascii=False)
    return short


def _toml_type(value: Any) -> str:
    for kind, name in (
        (bool, "boolean"),
        (int, "integer"),
        (float, "float"),
        (str, "string"),
        (list, "array"),
        (dict, "table"),
    ):
        if isinstance(value, kind):
            return name
    return "date or time"


def toml_defaults(
    table: dict[str, Any], params: Sequence[click.Parameter], source: str
) -> dict[str, Any]:
    """A config file's table as click's default_map: every key an option of the command,
    every value checked (`toml_value`) before click sees it."""
    by_name = {p.name: p for p in params if p.name and isinstance(p, click.Option)}
    unknown = sorted(k for k in table if k.replace("-", "_") not in by_name)
    if unknown:
        raise UsageError(
            f"{source}: unknown setting(s) {', '.join(unknown)}; "
            f"known: {', '.join(sorted(by_name))}"
        )
    defaults: dict[str, Any] = {}
    for key, value in table.items():
        param = by_name[key.replace("-", "_")]
        assert isinstance(param, click.Option) and param.name
        defaults[param.name] = toml_value(
            param.type, value, f"{source}: {key}", is_flag=param.is_flag
        )
    return defaults


def usage_error_line(exc: click.ClickException, args: Sequence[str]) -> str:
    """One line for a click usage error, naming where a bad value came from (the flag, the
    OUTREACH_* variable, the config file) and where help is."""
    message = _one_line(exc.format_message())
    ctx = getattr(exc, "ctx", None)
    param = getattr(exc, "param", None)
    missing = isinstance(exc, click.MissingParameter)
    if isinstance(exc, click.BadParameter) and param is not None and not missing:
        message = f"{_param_source(param, ctx, args)}: {_one_line(exc.message)}"
    if ctx is not None:
        message += f" (see '{ctx.command_path} --help')"
    return message


def _param_source(param: click.Parameter, ctx: click.Context | None, args: Sequence[str]) -> str:
    if not isinstance(param, click.Option):
        return param.human_readable_name
    flag = max(param.opts, key=len)
    given = any(a == o or a.startswith(o + "=") for a in args for o in param.opts)
    if given:
        return flag
    envvars = [param.envvar] if isinstance(param.envvar, str) else list(param.envvar or ())
    for name in envvars:
        value = os.environ.get(name)
        if value:  # click reads an empty variable as unset
            secret = isinstance(param.type, CredentialType)
            shown = "(a credential, not shown)" if secret else _shown_text(value)
            return f"{name}={shown} ({flag})"
    if ctx is not None and param.name in (ctx.default_map or {}):
        return f"{flag} (from the config file)"
    return flag


def _one_line(text: str) -> str:
    return " ".join(text.split())
