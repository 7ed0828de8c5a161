"""The option table: every option of every command comes from it, and the fleet file's keys are checked by the same types and bounds as the flags."""

from __future__ import annotations

import re
import tomllib
from typing import Any

import click
import pytest

from exporter.commands.fleet_file import parse_fleet
from exporter.commands.main import main
from exporter.commands.options import (
    ACCOUNT_OPTIONS,
    CREDENTIALS,
    OPTIONS,
    RESTORE_VARIANTS,
    OptionSpec,
)
from exporter.commands.values import toml_defaults
from exporter.core.errors import UsageError

# The simulator is a test server with its own flags (exporter/simulator/cli.py).
COMMANDS = sorted(name for name in main.commands if name != "simulate")


def declared(spec: OptionSpec) -> dict[str, Any]:
    """The click option `spec` declares, as click describes it."""

    def body(**_options: Any) -> None:
        """A command holding only this option."""

    (option,) = click.command()(spec.decorator()(body)).params
    return option.to_info_dict()


@pytest.mark.parametrize("name", COMMANDS)
def test_every_option_of_a_command_is_the_tables(name: str) -> None:
    command = main.commands[name]
    variants = RESTORE_VARIANTS if name == "restore" else {}
    options = [p for p in command.params if isinstance(p, click.Option) and p.name != "help"]
    assert options, name
    for param in options:
        assert param.name in OPTIONS, f"{name}: --{param.name} is not in the option table"
        spec = variants.get(param.name) or OPTIONS[param.name]
        assert param.to_info_dict() == declared(spec), f"{name}: {param.name}"


def test_every_table_option_is_named_as_its_key_and_used() -> None:
    used = {p.name for command in main.commands.values() for p in command.params}
    for key, spec in OPTIONS.items():
        (option,) = click.command()(spec.decorator()(lambda **_: None)).params
        assert option.name == key
        assert key in used, f"{key} is declared but no command takes it"


def test_options_two_commands_take_are_one_declaration() -> None:
    export = {p.name: p for p in main.commands["export"].params}
    restore = {p.name: p for p in main.commands["restore"].params}
    for key in ("base_url", *CREDENTIALS, "rate_limit"):
        assert export[key].type is restore[key].type is OPTIONS[key].type
        assert export[key].envvar == restore[key].envvar == OPTIONS[key].envvar


def test_fleet_keys_are_checked_by_the_flags_types() -> None:
    export = {p.name: p for p in main.commands["export"].params}
    for key in (*ACCOUNT_OPTIONS, "out", "base_url", "repair"):
        spec = OPTIONS[key]
        if spec.is_flag:
            assert export[key].is_flag
        else:
            assert export[key].type is spec.value_type


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("page_size", "5000"),
        ("concurrency", "0"),
        ("max_url_length", "100"),
        ("overlap", "-1.0"),
        ("commit_interval", "1e9"),
        ("rate_limit", '"0/1"'),
        ("relationships", '"nope"'),
        ("incremental", "1"),
        ("out", '"mock://x"'),
    ],
)
def test_a_fleet_file_and_a_config_file_refuse_a_value_alike(key: str, value: str) -> None:
    """One bound, one message: the fleet file's account and `export --config` say the same."""
    fleet = (
        '[[account]]\nname = "a"\nout = "o"\ntoken_env = "T"\n'
        if key != "out"
        else '[[account]]\nname = "a"\ntoken_env = "T"\n'
    ) + f"{key} = {value}\n"
    with pytest.raises(UsageError, match=f"^fleet\\.toml: account 'a': {key} = ") as from_fleet:
        parse_fleet(tomllib.loads(fleet), "fleet.toml")
    params = main.commands["export"].params
    with pytest.raises(UsageError, match=f"^config file c\\.toml: {key} = ") as from_config:
        toml_defaults(tomllib.loads(f"{key} = {value}\n"), params, "config file c.toml")
    fleet_says = str(from_fleet.value).removeprefix(f"fleet.toml: account 'a': {key}")
    config_says = str(from_config.value).removeprefix(f"config file c.toml: {key}")
    assert fleet_says == config_says
    assert re.fullmatch(r" = \S+: .{10,}", config_says), config_says  # the value, then why
