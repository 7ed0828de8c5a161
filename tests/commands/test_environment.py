"""Every option of every command has one OUTREACH_* variable, shown in its `--help`, that takes effect (or is refused naming itself); the few flags never read from a variable say why."""

from __future__ import annotations

import os
from pathlib import Path

import click
import pytest
from click.core import ParameterSource

from exporter.commands.main import main
from exporter.commands.options import NOT_FROM_ENV
from exporter.commands.values import ConcurrencyType, CredentialType
from exporter.core.config import Concurrency, RateLimit
from exporter.simulator.faults import TokenFault
from tests.helpers.checks import assert_refused
from tests.helpers.commands import invoke

COMMANDS = sorted(main.commands)

# Values of the options whose type alone does not say what a good value is; the rest are
# derived from the type (`sample`).
SAMPLES: dict[str, tuple[str, object]] = {
    "out": ("elsewhere", "elsewhere"),
    "base_url": ("http://127.0.0.1:9/api/v2", "http://127.0.0.1:9/api/v2"),
    "rate_limit": ("5/7", RateLimit(5, 7.0)),
    "relationships": ("none", "none"),
    "resources": ("stages,roles", "stages,roles"),
    "ids": ("3,4", (3, 4)),
    "shown": ("3", "3"),
}
# The simulator's own flags (exporter/simulator/cli.py) whose types are its own.
SIMULATOR_SAMPLES: dict[str, tuple[str, object]] = {
    "rate_limit": ("5/7", (5, 7.0)),
    "sizes": ("prospect=5 account=2", (("prospect", 5), ("account", 2))),
    "denied_scopes": ("users.read calls.read", ("users.read", "calls.read")),
    "token_faults": ("500,slow", (TokenFault("500"), TokenFault("slow"))),
}


def walk() -> list[tuple[str, click.Option]]:
    return [
        (name, param)
        for name in COMMANDS
        for param in main.commands[name].params
        if isinstance(param, click.Option) and param.name != "help"
    ]


def option_id(item: tuple[str, click.Option]) -> str:
    return f"{item[0]}-{item[1].name}"


def envvars(param: click.Option) -> list[str]:
    return [param.envvar] if isinstance(param.envvar, str) else list(param.envvar or ())


def sample(command: str, param: click.Option, tmp_path: Path) -> tuple[str, object]:
    """A good value for `param` other than its default, as text, and as the command gets it."""
    assert param.name
    type_ = param.type
    if command == "simulate" and param.name in SIMULATOR_SAMPLES:
        return SIMULATOR_SAMPLES[param.name]
    if param.name in SAMPLES:
        return SAMPLES[param.name]
    if param.is_flag:
        return "1", True
    if isinstance(type_, click.Choice):
        choice = next(c for c in reversed(type_.choices) if c != param.default)
        return str(choice), choice
    if isinstance(type_, ConcurrencyType):
        return "auto:5", Concurrency(ceiling=5)
    if isinstance(type_, click.IntRange):
        number = (type_.min or 0) + 1
        return str(number), number
    if isinstance(type_, click.FloatRange):
        number = (type_.min or 0.0) + 0.5
        return str(number), number
    if isinstance(type_, click.Path):
        path = tmp_path / f"{param.name}.file"
        return str(path), path if type_.type is Path else str(path)
    return "sample-value", "sample-value"


def required_args(command: str, param: click.Option, tmp_path: Path) -> list[str]:
    """What `command` needs besides `param` to parse."""
    if command == "export":
        return [] if param.name == "out" else ["--out", str(tmp_path / "o")]
    if command == "fleet":
        return [] if param.name == "config_path" else ["--config", str(tmp_path / "fleet.toml")]
    if command == "simulate":
        return []
    return [str(tmp_path / "backup")]


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    for name in list(os.environ):
        if name.startswith("OUTREACH_") or name == "DASK_SCHEDULER_ADDRESS":
            monkeypatch.delenv(name)
    return monkeypatch


@pytest.mark.parametrize("item", walk(), ids=option_id)
def test_every_option_has_a_variable_or_says_why_not(item: tuple[str, click.Option]) -> None:
    command, param = item
    names = envvars(param)
    if not names:
        assert NOT_FROM_ENV in (param.help or ""), f"{command} --{param.name}: no variable"
        assert param.is_flag, "only a flag may be kept from the environment"
        return
    assert names[0].startswith("OUTREACH_"), names
    assert names[0].startswith("OUTREACH_SIMULATE_") == (command == "simulate"), names


@pytest.mark.parametrize("command", COMMANDS)
def test_help_shows_every_variable(command: str) -> None:
    code, help_text, _ = invoke([command, "--help"])
    assert code == 0
    words = " ".join(help_text.split())
    for param in main.commands[command].params:
        if isinstance(param, click.Option):
            for name in envvars(param):
                assert name in words, f"{command} --help does not show {name}"


def test_one_variable_means_one_thing_wherever_it_is_read() -> None:
    """A variable two commands read is the same option in both (same type and default)."""
    seen: dict[str, click.Option] = {}
    for _command, param in walk():
        for name in envvars(param):
            other = seen.setdefault(name, param)
            assert (other.name, other.default) == (param.name, param.default), name


@pytest.mark.parametrize("item", walk(), ids=option_id)
def test_every_variable_takes_effect(
    item: tuple[str, click.Option], tmp_path: Path, clean_env: pytest.MonkeyPatch
) -> None:
    """Parsed by click as the command parses it: the variable's value is the option's, and
    click says it came from the environment."""
    command, param = item
    assert param.name
    for name in envvars(param):
        if param.name == "config":
            (tmp_path / "c.toml").write_text("page_size = 7\n")
            text, expected = str(tmp_path / "c.toml"), None
        else:
            text, expected = sample(command, param, tmp_path)
        clean_env.setenv(name, text)
        args = required_args(command, param, tmp_path)
        with main.commands[command].make_context(command, args) as ctx:
            if param.name == "config":
                assert ctx.params["page_size"] == 7  # the file named by the variable was read
            else:
                assert ctx.params[param.name] == expected, name
                assert ctx.get_parameter_source(param.name) is ParameterSource.ENVIRONMENT
        clean_env.delenv(name)


def refusable(item: tuple[str, click.Option]) -> bool:
    plain = type(item[1].type) in (click.types.StringParamType, click.Path)
    return bool(envvars(item[1])) and not plain


@pytest.mark.parametrize("item", [i for i in walk() if refusable(i)], ids=option_id)
def test_a_bad_variable_is_refused_naming_itself(
    item: tuple[str, click.Option], tmp_path: Path
) -> None:
    """`OUTREACH_PAGE_SIZE=abc: ...`: the variable and its value (a credential's never)."""
    command, param = item
    bad = "ab c\x01" if isinstance(param.type, CredentialType) else "abc,\u00a7"
    if param.name == "out":
        bad = "mock:///p"
    name, flag = envvars(param)[0], max(param.opts, key=len)
    code, _, stderr = invoke([command, *required_args(command, param, tmp_path)], {name: bad})
    if isinstance(param.type, CredentialType):
        assert_refused(code, stderr, f"error: {name}=(a credential, not shown) ({flag}): ")
        assert "ab c" not in stderr
    else:
        assert_refused(code, stderr, f"error: {name}={bad} ({flag}): ")
    assert not (tmp_path / "o").exists()


def test_a_bad_config_value_names_the_file_and_key(tmp_path: Path) -> None:
    config = tmp_path / "config.toml"
    config.write_text('page_size = "abc"\n')
    code, _, stderr = invoke(["export", "--config", str(config), "--out", str(tmp_path / "o")])
    assert_refused(code, stderr, f'error: {config}: page_size = "abc": must be a whole number')


def test_a_bad_config_value_from_the_variable_names_the_file(tmp_path: Path) -> None:
    config = tmp_path / "config.toml"
    config.write_text("concurrency = 500\n")
    code, _, stderr = invoke(
        ["export", "--out", str(tmp_path / "o")], {"OUTREACH_CONFIG": str(config)}
    )
    assert_refused(code, stderr, f"error: {config}: concurrency = 500: ", "1 <= N <= 64")


def test_a_bad_flag_is_named_as_before(tmp_path: Path) -> None:
    code, _, stderr = invoke(["export", "--out", str(tmp_path / "o"), "--page-size", "abc"])
    assert_refused(code, stderr, "error: --page-size: 'abc' is not a whole number")


@pytest.mark.slow
def test_quiet_verbose_and_the_demo_from_variables(tmp_path: Path) -> None:
    """A whole run configured by variables only: the quiet one prints nothing but its result,
    the verbose one logs its requests."""
    base = {"OUTREACH_DEMO": "1", "OUTREACH_DEMO_STEPS": "40"}
    env = {**base, "OUTREACH_OUT": str(tmp_path / "q"), "OUTREACH_QUIET": "1"}
    code, stdout, stderr = invoke(["export"], env)
    assert code == 0, stderr
    assert stderr == ""
    assert stdout.startswith("exported ") and "sequenceStep 40," in stdout
    env = {**base, "OUTREACH_OUT": str(tmp_path / "v"), "OUTREACH_VERBOSE": "true"}
    code, stdout, stderr = invoke(["export"], env)
    assert code == 0, stderr
    assert "GET " in stderr and "/api/v2/sequenceSteps" in stderr
    assert "sequenceStep 40," in stdout
