"""A fuzzing pass over every input the command line reads: flags, OUTREACH_* values, config files and fleet files; never a traceback."""

# Each case runs the command in this process (click's CliRunner) against a simulator on a
# loopback port: whatever the input, the command ends with a documented exit code, without a
# traceback, and a failure is one `error:` (or `stopped:`) line. Every base URL the cases can
# reach is on loopback (the simulator, or a closed port), and S3 goes to a closed loopback port.

from __future__ import annotations

import datetime
import math
import os
import traceback
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import click
import orjson
import pytest
from click.testing import CliRunner, Result
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from exporter.commands.main import main
from exporter.commands.values import usage_error_line
from exporter.simulator import Simulator, SimulatorConfig, serve_in_thread
from tests.helpers.sim import TOKEN

pytestmark = pytest.mark.slow  # hypothesis drives hundreds of inputs through the CLI: seconds each

DOCUMENTED_EXIT_CODES = {0, 1, 2, 3, 4, 5, 6, 7, 130}
CLOSED = "http://127.0.0.1:9/api/v2"
FUZZ = settings(
    max_examples=int(os.environ.get("FUZZ_EXAMPLES", "80")),
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
    # The same cases on every run; for a hunt: FUZZ_EXAMPLES=2000 FUZZ_RANDOM=1.
    derandomize=not os.environ.get("FUZZ_RANDOM"),
)


@pytest.fixture(scope="module")
def api() -> Iterator[str]:
    sim = Simulator(SimulatorConfig(steps=40, seed=5, static_token=TOKEN))
    with serve_in_thread(sim) as root:
        yield root + "/api/v2"


@pytest.fixture(scope="module")
def backup(api: str, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A finished backup with an incremental run on top, for verify, status, compact and
    restore to read (compact's output lands in it; restore only plans unless --apply)."""
    out = tmp_path_factory.mktemp("backup")
    for extra in ([], ["--incremental"]):
        result = run(["export", "--out", str(out), "--token", TOKEN, "--base-url", api, *extra])
        assert result.exit_code == 0, result.stderr
    return out


@pytest.fixture
def sandbox(tmp_path: Path) -> Iterator[Path]:
    """A working directory of its own: a relative --out lands here, never in the repository."""
    before = Path.cwd()
    os.chdir(tmp_path)
    try:
        yield tmp_path
    finally:
        os.chdir(before)


def environment(extra: dict[str, str] | None = None) -> dict[str, str | None]:
    unset: dict[str, str | None] = {
        k: None for k in os.environ if k.startswith(("OUTREACH_", "AWS_"))
    }
    return {
        **unset,
        "AWS_ENDPOINT_URL": "http://127.0.0.1:9",
        "AWS_ACCESS_KEY_ID": "fuzz",
        "AWS_SECRET_ACCESS_KEY": "fuzz",
        "AWS_EC2_METADATA_DISABLED": "true",
        "XDG_CONFIG_HOME": str(Path.cwd() / "config-home"),
        "XDG_STATE_HOME": str(Path.cwd() / "state-home"),
        **(extra or {}),
    }


def run(args: list[str], env: dict[str, str] | None = None) -> Result:
    return CliRunner().invoke(main, args, env=environment(env))


def assert_well_behaved(result: Result, args: Any) -> None:
    """The promise: a documented exit code, no traceback, one error line for a failure."""
    exc = result.exception
    if exc is not None and not isinstance(exc, SystemExit):
        trace = "".join(traceback.format_exception(exc))
        raise AssertionError(f"{args!r} raised {type(exc).__name__}:\n{trace}")
    event(f"exit {result.exit_code}")  # --hypothesis-show-statistics: how deep the cases got
    output = result.stdout + result.stderr
    assert result.exit_code in DOCUMENTED_EXIT_CODES, (args, result.exit_code, output)
    assert "Traceback" not in output, (args, output)
    if result.exit_code != 0:
        errors = [
            line for line in result.stderr.splitlines() if line.startswith(("error:", "stopped:"))
        ]
        assert len(errors) == 1, (args, result.stderr)


# -- values -----------------------------------------------------------------------------------

HOSTILE_TEXT = [
    "", " ", "0", "-1", "1", "7", "5.7", "1e400", "-1e400", "nan", "NaN", "inf", "-inf",
    "99999999999999999999", "-99999999999999999999", "1_000", "0x10", "1/0", "1/inf",
    "0/1", "10/3600", "100000/1", "1/nan", "all", "none", "sequence,creator", "users,,",
    "prospects", "true", "false", "yes", "\x00", "a\nb", "\r\n", "é", "\u202e", "%s%n",
    "{name}", "../..", ".", "/", "/dev/zero", "/dev/null", "/proc/self/mem", "~", "s3://",
    "s3://b/p", "s3://k:s@b/p", "file:///", "file://", "ab://x", "http://127.0.0.1:9/api/v2",
    "http://user:pw@127.0.0.1:9/", "https://[::1", "http://127.0.0.1:99999/", "ftp://x",
    "a" * 300, "10000/3600", "text", "json", "local", "dask", "tcp://127.0.0.1:9",
]  # fmt: skip
texts = st.one_of(
    st.sampled_from(HOSTILE_TEXT),
    st.text(st.characters(codec="utf-8", exclude_categories=("Cs",)), max_size=12),
    st.integers(-(10**30), 10**30).map(str),
    st.floats(allow_nan=True, allow_infinity=True).map(repr),
)
locations = st.sampled_from(
    ["out", "./out/", "out/sub", "", " ", ".", "/dev/null", "/proc", "s3://", "s3://b/p",
     "file:///nonexistent-dir-x", "a\nb", "out/../out2", "missing/x"]
)  # fmt: skip
base_urls = st.sampled_from(
    [CLOSED, "ftp://x", "http://", "http://u:p@127.0.0.1/", "https://[::1", "nan", ""]
)


# Locations every command refuses in one line: `export --out`, a fleet's out, and the DIR of
# verify, status, compact and restore (all through `options.LocationType`).
REFUSED_LOCATIONS = ["~no-such-user-x/o", "s3://[::1/p", "mock:///p"]


# Options that name a file or directory this tool writes (a token store, a journal, compact's
# target): only places inside the sandbox, however odd their names; never /dev/null or "/".
DIRS = ("", ".", "~")
WRITTEN = ["", ".", "a\nb", "missing/x", "out", "t.json", "deep/er/t.json", "é", " ", "~"]


def option_args(command: click.Command, draw: st.DrawFn, api: str) -> list[str]:
    """A random set of the command's options, each with a hostile value or its default."""
    options = [p for p in command.params if isinstance(p, click.Option) and p.opts[0] != "--help"]
    options = [p for p in options if p.name not in ("demo", "executor", "scheduler")]
    chosen = draw(st.lists(st.sampled_from(options), max_size=6, unique_by=lambda p: p.name))
    args: list[str] = []
    for param in chosen:
        flag = max(param.opts, key=len)
        if param.is_flag:
            args.append(flag)
        elif param.name == "base_url":
            args += [flag, draw(st.one_of(base_urls, st.just(api)))]
        elif param.name == "token":
            args += [flag, draw(st.sampled_from([TOKEN, TOKEN, "wrong", "", "a\r\nb", "t" * 5000]))]
        elif param.name == "config":
            args += [flag, draw(st.sampled_from(["/dev/zero", "missing.toml", ".", "/dev/null"]))]
        elif param.name == "journal":
            # A journal that is a directory ("", ".", "~") still escapes exporter/journal.py
            # replay as a traceback: tests/commands/test_inputs.py holds it as a strict xfail.
            args += [flag, draw(st.sampled_from([w for w in WRITTEN if w.strip() not in DIRS]))]
        elif param.name in ("token_file", "into", "request_log"):
            args += [flag, draw(st.sampled_from(WRITTEN))]
        elif isinstance(param.default, str | int | float):
            args += [flag, draw(st.one_of(st.just(str(param.default)), texts))]
        else:
            args += [flag, draw(texts)]
    # A command line (like an environment) cannot hold a NUL: the kernel ends a string there.
    return [arg.replace("\x00", "") for arg in args]


# -- flags ------------------------------------------------------------------------------------


@FUZZ
@given(data=st.data())
def test_export_flags(sandbox: Path, api: str, data: st.DataObject) -> None:
    command = main.commands["export"]
    out = data.draw(st.one_of(locations, st.sampled_from(REFUSED_LOCATIONS)))
    args = ["export", "--out", out, "--token", TOKEN, *option_args(command, data.draw, api)]
    if "--base-url" not in args:
        args += ["--base-url", api]  # never the real API
    assert_well_behaved(run(args), args)


@FUZZ
@given(data=st.data())
@pytest.mark.parametrize("name", ["verify", "status", "compact", "restore"])
def test_backup_command_flags(
    sandbox: Path, api: str, backup: Path, name: str, data: st.DataObject
) -> None:
    command = main.commands[name]
    where = data.draw(
        st.one_of(st.just(str(backup)), locations, st.sampled_from(REFUSED_LOCATIONS))
    )
    args = [name, where, *option_args(command, data.draw, api)]
    if name == "restore" and "--base-url" not in args:
        args += ["--base-url", api]
    assert_well_behaved(run(args), args)


@FUZZ
@given(data=st.data())
def test_fleet_flags(sandbox: Path, api: str, data: st.DataObject) -> None:
    (sandbox / "fleet.toml").write_text(
        f'[[account]]\nname = "a"\nout = "o"\nbase_url = "{api}"\ntoken_env = "FUZZ_T"\n'
    )
    command = main.commands["fleet"]
    extra = [p for p in option_args(command, data.draw, api) if p != "--config"]
    args = ["fleet", "--config", data.draw(st.sampled_from(["fleet.toml", "/dev/zero", ""]))]
    assert_well_behaved(run([*args, *extra], env={"FUZZ_T": TOKEN}), args + extra)


@FUZZ
@given(data=st.data())
def test_simulate_flags_parse_or_fail_in_one_line(data: st.DataObject) -> None:
    """`simulate` serves until stopped: only its flags are read here (click's parse)."""
    command = main.commands["simulate"]
    args = option_args(command, data.draw, CLOSED)
    try:
        command.make_context("simulate", list(args))
    except click.ClickException as exc:
        assert isinstance(exc, click.UsageError), (args, exc)  # exit 2
        assert "\n" not in usage_error_line(exc, args), (args, exc)


# -- OUTREACH_* variables -----------------------------------------------------------------------

VARIABLES = sorted(
    {
        p.envvar
        for command in main.commands.values()
        for p in command.params
        if isinstance(p.envvar, str) and p.envvar.startswith("OUTREACH_")
    }
)


@FUZZ
@given(values=st.dictionaries(st.sampled_from(VARIABLES), texts, max_size=5))
def test_environment_values(sandbox: Path, api: str, values: dict[str, str]) -> None:
    values = {k: v.replace("\x00", "") for k, v in values.items()}  # no NUL in a real environment
    values.pop("OUTREACH_BASE_URL", None)
    args = ["export", "--base-url", api] + ([] if "OUTREACH_OUT" in values else ["--out", "o"])
    assert_well_behaved(run(args, env={"OUTREACH_TOKEN": TOKEN, **values}), (args, values))


# -- config files -----------------------------------------------------------------------------


def toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        return ("-inf" if value < 0 else "inf") if math.isinf(value) else repr(value)
    if isinstance(value, int):
        return str(value)
    if isinstance(value, str):
        return orjson.dumps(value).decode()
    if isinstance(value, datetime.date | datetime.time):
        return value.isoformat()
    if isinstance(value, list):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    assert isinstance(value, dict)
    return (
        "{"
        + ", ".join(f"{orjson.dumps(k).decode()} = {toml_value(v)}" for k, v in value.items())
        + "}"
    )


scalars = st.one_of(
    st.booleans(),
    st.integers(-(2**63), 2**63 - 1),
    st.sampled_from([0, 1, -1, 2**63 - 1, 10**12]),
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from(HOSTILE_TEXT),
    st.text(max_size=8),
    st.dates(),
    st.datetimes(),
    st.times(),
)
values = st.one_of(
    scalars,
    st.lists(scalars, max_size=3),
    st.dictionaries(st.text(max_size=4), scalars, max_size=2),
)
EXPORT_KEYS = sorted(
    p.name for p in main.commands["export"].params if p.name and p.name != "config"
)


@FUZZ
@given(
    table=st.dictionaries(
        st.one_of(st.sampled_from(EXPORT_KEYS), st.text(max_size=6)), values, max_size=6
    ),
    wrapped=st.booleans(),
    stray=st.booleans(),
)
def test_config_files(
    sandbox: Path, api: str, table: dict[str, Any], wrapped: bool, stray: bool
) -> None:
    table.pop("demo", None)
    if table.get("base_url") not in (None, CLOSED):
        table["base_url"] = api
    lines = [f"{orjson.dumps(k).decode()} = {toml_value(v)}" for k, v in table.items()]
    text = ("stray = 1\n" if stray else "") + ("[export]\n" if wrapped else "") + "\n".join(lines)
    (sandbox / "c.toml").write_text(text + "\n", encoding="utf-8")
    args = ["export", "--config", "c.toml", "--base-url", api]
    if "out" not in table:
        args += ["--out", "o"]
    assert_well_behaved(run(args), text)


@FUZZ
@given(content=st.binary(max_size=200))
def test_config_files_of_any_bytes(sandbox: Path, api: str, content: bytes) -> None:
    (sandbox / "c.toml").write_bytes(content)
    for args in (
        ["export", "--config", "c.toml", "--out", "o", "--base-url", api],
        ["fleet", "--config", "c.toml"],
    ):
        assert_well_behaved(run(args), (args, content))


# -- fleet files ------------------------------------------------------------------------------

FLEET_KEYS = [
    "name", "out", "base_url", "token_env", "token_file", "client_id", "client_secret_env",
    "client_secret_file", "refresh_token_env", "refresh_token_file", "redirect_uri",
    "page_size", "concurrency", "rate_limit", "relationships", "max_url_length", "incremental",
    "overlap", "detect_deletes", "commit_interval", "file_rows", "read_timeout", "token",
]  # fmt: skip


@FUZZ
@given(
    defaults=st.dictionaries(st.sampled_from(FLEET_KEYS), values, max_size=4),
    accounts=st.lists(
        st.dictionaries(
            st.one_of(st.sampled_from(FLEET_KEYS), st.text(max_size=4)), values, max_size=6
        ),
        max_size=3,
    ),
)
def test_fleet_files(
    sandbox: Path, api: str, defaults: dict[str, Any], accounts: list[dict[str, Any]]
) -> None:
    for table in (defaults, *accounts):
        if "base_url" in table:
            table["base_url"] = api  # never anything but the loopback simulator
    lines = ["[defaults]", f'base_url = "{api}"']
    lines += [
        f"{orjson.dumps(k).decode()} = {toml_value(v)}"
        for k, v in defaults.items()
        if k != "base_url"
    ]
    for account in accounts:
        lines += ["[[account]]"] + [
            f"{orjson.dumps(k).decode()} = {toml_value(v)}" for k, v in account.items()
        ]
    text = "\n".join(lines) + "\n"
    (sandbox / "fleet.toml").write_text(text, encoding="utf-8")
    assert_well_behaved(run(["fleet", "--config", "fleet.toml"], env={"FUZZ_T": TOKEN}), text)
