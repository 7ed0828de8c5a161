"""Every input the command line reads, strictly: bounded regular files, finite typed values, one-line errors naming the source."""

from __future__ import annotations

import os
import resource
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from exporter.core.errors import ExitCode
from tests.helpers.checks import assert_refused
from tests.helpers.commands import invoke
from tests.helpers.runs import run_exporter

HANG = 20  # seconds: far longer than any refusal takes; a read that blocks runs into it


def run_cli(
    *args: str, env: dict[str, str] | None = None, timeout: float = HANG
) -> subprocess.CompletedProcess[str]:
    """`python -m exporter ARGS` in a clean environment, its memory capped (a read of /dev/zero
    then fails instead of taking the machine's memory)."""

    def cap_memory() -> None:
        resource.setrlimit(resource.RLIMIT_AS, (4 << 30, 4 << 30))

    return run_exporter(*args, env=env, timeout=timeout, preexec_fn=cap_memory)


def assert_one_line(result: subprocess.CompletedProcess[str], code: int, *words: str) -> None:
    assert result.returncode == code, (result.returncode, result.stdout, result.stderr)
    assert "Traceback" not in result.stderr, result.stderr
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    for word in words:
        assert word in lines[0], (word, lines[0])


# -- item 6: configs and secrets are bounded regular files -------------------------------------


@pytest.fixture
def fifo(tmp_path: Path) -> Path:
    path = tmp_path / "fifo"
    os.mkfifo(path)
    return path


@pytest.mark.slow
def test_config_that_is_dev_zero_is_refused(tmp_path: Path) -> None:
    result = run_cli("export", "--config", "/dev/zero", "--out", str(tmp_path / "o"))
    assert_one_line(result, ExitCode.USAGE, "/dev/zero", "not a regular file")


@pytest.mark.slow
def test_config_that_is_a_fifo_is_refused_without_waiting(tmp_path: Path, fifo: Path) -> None:
    started = time.monotonic()
    result = run_cli("export", "--config", str(fifo), "--out", str(tmp_path / "o"))
    assert_one_line(result, ExitCode.USAGE, str(fifo), "FIFO")
    assert time.monotonic() - started < HANG / 2


@pytest.mark.slow
def test_config_that_is_too_big_is_refused(tmp_path: Path) -> None:
    big = tmp_path / "big.toml"
    big.write_text("# filler\n" * 200_000)  # 1.8 MB of valid TOML
    result = run_cli("export", "--config", str(big), "--out", str(tmp_path / "o"))
    assert_one_line(result, ExitCode.USAGE, str(big), "larger than")


@pytest.mark.slow
def test_fleet_file_that_is_dev_zero_is_refused() -> None:
    assert_one_line(run_cli("fleet", "--config", "/dev/zero"), ExitCode.USAGE, "not a regular file")


@pytest.mark.slow
def test_fleet_token_file_that_is_a_fifo_fails_that_account_only(
    tmp_path: Path, fifo: Path
) -> None:
    fleet = tmp_path / "fleet.toml"
    fleet.write_text(
        f'[[account]]\nname = "acme"\nout = "{tmp_path}/acme"\n'
        f'base_url = "http://127.0.0.1:9/api/v2"\ntoken_file = "{fifo}"\n'
    )
    result = run_cli("fleet", "--config", str(fleet))
    assert result.returncode == ExitCode.FAILED, (result.stdout, result.stderr)
    assert "Traceback" not in result.stderr
    [row] = [line for line in result.stdout.splitlines() if line.startswith("acme")]
    assert "FIFO" in row and "failed:" in row


@pytest.mark.slow
def test_fleet_token_file_that_is_dev_zero_fails_that_account_only(tmp_path: Path) -> None:
    fleet = tmp_path / "fleet.toml"
    fleet.write_text(
        f'[[account]]\nname = "acme"\nout = "{tmp_path}/acme"\n'
        'base_url = "http://127.0.0.1:9/api/v2"\ntoken_file = "/dev/zero"\n'
    )
    result = run_cli("fleet", "--config", str(fleet))
    assert result.returncode == ExitCode.FAILED, (result.stdout, result.stderr)
    assert "Traceback" not in result.stderr
    [row] = [line for line in result.stdout.splitlines() if line.startswith("acme")]
    assert "/dev/zero" in row and "not a regular file" in row


OAUTH = (
    "--client-id", "c", "--client-secret", "s-secret-91", "--refresh-token", "r-secret-92",
    "--redirect-uri", "http://127.0.0.1/cb", "--base-url", "http://127.0.0.1:9/api/v2",
)  # fmt: skip


@pytest.mark.slow
def test_refresh_token_store_that_is_a_fifo_is_refused(tmp_path: Path, fifo: Path) -> None:
    result = run_cli("export", "--out", str(tmp_path / "o"), *OAUTH, "--token-file", str(fifo))
    assert_one_line(result, ExitCode.USAGE, str(fifo), "FIFO")


@pytest.mark.slow
def test_refresh_token_store_that_is_not_utf8_is_refused(tmp_path: Path) -> None:
    store = tmp_path / "store.json"
    store.write_bytes(b'{"refresh_token": "\xff\xfe"}')
    result = run_cli("export", "--out", str(tmp_path / "o"), *OAUTH, "--token-file", str(store))
    assert_one_line(result, ExitCode.USAGE, str(store), "UTF-8")


# -- item 8: one strict validation for flags, environment, config files and fleet files ---------

BASE = ("--token", "t", "--base-url", "http://127.0.0.1:9/api/v2")


@pytest.mark.parametrize(
    ("flag", "value"),
    [
        ("--overlap", "inf"),
        ("--overlap", "nan"),
        ("--overlap", "1e400"),
        ("--overlap", "-1"),
        ("--overlap", "1e12"),
        ("--commit-interval", "inf"),
        ("--commit-interval", "nan"),
        ("--commit-interval", "1e9"),
        ("--read-timeout", "inf"),
        ("--read-timeout", "NaN"),
        ("--progress-interval", "nan"),
        ("--progress-interval", "inf"),
        ("--file-rows", "99999999999999999999"),
        ("--file-rows", "1_000"),
        ("--page-size", "5.7"),
        ("--concurrency", "0x10"),
        ("--rate-limit", "1/inf"),
        ("--rate-limit", "1/nan"),
        ("--rate-limit", "1/1e400"),
        ("--rate-limit", "99999999999999999999/1"),
        ("--rate-limit", "1_0/3600"),
        ("--demo-seed", "99999999999999999999999"),
        ("--out", ""),
        ("--out", "   "),
        ("--out", "a\nb"),
        ("--out", "~no-such-user-x/o"),
        ("--out", "s3://[::1/p"),
        ("--out", "mock:///p"),
    ],
)
def test_hostile_flag_values_are_refused_naming_the_flag(
    tmp_path: Path, flag: str, value: str
) -> None:
    args = ["export", "--out", str(tmp_path / "o"), *BASE, flag, value]
    code, _, stderr = invoke(args)
    assert_refused(code, stderr, flag)
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("OUTREACH_OVERLAP", "inf"),
        ("OUTREACH_COMMIT_INTERVAL", "nan"),
        ("OUTREACH_FILE_ROWS", "99999999999999999999"),
        ("OUTREACH_PAGE_SIZE", "zero"),
        ("OUTREACH_RATE_LIMIT", "10/inf"),
        ("OUTREACH_INCREMENTAL", "perhaps"),
        ("OUTREACH_OUT", ""),
    ],
)
def test_hostile_environment_values_are_refused_naming_the_variable(
    tmp_path: Path, variable: str, value: str
) -> None:
    args = ["export", *BASE] + ([] if variable == "OUTREACH_OUT" else ["--out", str(tmp_path)])
    code, _, stderr = invoke(args, env={variable: value})
    if variable == "OUTREACH_OUT":
        # click treats an empty variable as unset: the option is then missing.
        assert_refused(code, stderr, "--out")
    else:
        assert_refused(code, stderr, variable)


@pytest.mark.parametrize(
    ("toml", "words"),
    [
        ("[export]\npage_size = 5.7\n", ["page_size", "whole number", "float"]),
        ("[export]\nconcurrency = true\n", ["concurrency", "whole number", "boolean"]),
        ("[export]\noverlap = inf\n", ["overlap", "finite"]),
        ("[export]\noverlap = nan\n", ["overlap", "finite"]),
        ("[export]\ncommit_interval = inf\n", ["commit_interval"]),
        ("[export]\nfile_rows = 99999999999999999999\n", ["file_rows"]),
        ("[export]\nfile_rows = 9223372036854775807\n", ["file_rows", "range"]),
        ('[export]\nincremental = "yes"\n', ["incremental", "true or false"]),
        ("[export]\nout = 5\n", ["out", "string"]),
        ('[export]\nout = ""\n', ["out", "empty"]),
        ('[export]\nrate_limit = "10/inf"\n', ["rate_limit"]),
        ("[export]\nrate_limit = 10\n", ["rate_limit", "string"]),
        ("[export]\npage_size = [1]\n", ["page_size", "array"]),
        ("[export]\nread_timeout = 1979-05-27\n", ["read_timeout", "date"]),
        ("page_size = 5\n[export]\nconcurrency = 2\n", ["page_size", "outside the [export]"]),
        ('export = "x"\n', ["export must be a table"]),
    ],
)
def test_hostile_config_values_are_refused_naming_file_and_key(
    tmp_path: Path, toml: str, words: list[str]
) -> None:
    config = tmp_path / "c.toml"
    config.write_text(toml)
    code, _, stderr = invoke(["export", "--config", str(config), "--out", str(tmp_path), *BASE])
    assert_refused(code, stderr, str(config), *words)


def test_a_secret_in_a_config_file_of_the_wrong_type_is_not_echoed(tmp_path: Path) -> None:
    config = tmp_path / "c.toml"
    config.write_text('[export]\ntoken = ["sk-live-4417"]\n')
    code, _, stderr = invoke(["export", "--config", str(config), "--out", str(tmp_path)])
    assert_refused(code, stderr, "token", "string")
    assert "sk-live-4417" not in stderr


@pytest.mark.parametrize(
    ("toml", "args", "env", "named"),
    [
        ('demo = true\nbase_url = "http://127.0.0.1:9/api/v2"\n', [], {}, "config file"),
        ("demo = true\n", ["--base-url", "http://127.0.0.1:9/api/v2"], {}, "--base-url"),
        ("", ["--demo"], {"OUTREACH_BASE_URL": "http://127.0.0.1:9/api/v2"}, "OUTREACH_BASE_URL"),
    ],
)
def test_demo_beside_a_base_url_is_refused(
    tmp_path: Path, toml: str, args: list[str], env: dict[str, str], named: str
) -> None:
    config = tmp_path / "c.toml"
    config.write_text(toml)
    out = tmp_path / "o"
    code, _, stderr = invoke(["export", "--config", str(config), "--out", str(out), *args], env=env)
    assert_refused(code, stderr, "--demo", named)
    assert not out.exists()


@pytest.mark.slow
def test_a_bad_value_from_a_real_process_is_one_line(tmp_path: Path) -> None:
    result = run_cli("export", "--out", str(tmp_path), *BASE, "--overlap", "inf")
    assert_one_line(result, ExitCode.USAGE, "--overlap", "finite")
    result = run_cli("export", "--out", str(tmp_path), *BASE, env={"OUTREACH_OVERLAP": "nan"})
    assert_one_line(result, ExitCode.USAGE, "OUTREACH_OVERLAP", "--overlap")


@pytest.mark.parametrize(
    ("line", "words"),
    [
        ("overlap = inf", ["'acme'", "overlap", "finite"]),
        ("commit_interval = nan", ["'acme'", "commit_interval", "finite"]),
        ("page_size = 5.7", ["'acme'", "page_size", "whole number"]),
        ("concurrency = true", ["'acme'", "concurrency", "whole number"]),
        ("file_rows = 99999999999999999999", ["'acme'", "file_rows"]),
        ('rate_limit = "1/inf"', ["'acme'", "rate_limit"]),
        ('incremental = "true"', ["'acme'", "incremental", "true or false"]),
    ],
)
def test_hostile_fleet_values_are_refused_naming_account_and_key(
    line: str, words: list[str]
) -> None:
    import tomllib

    from exporter.commands.fleet_file import parse_fleet
    from exporter.core.errors import UsageError

    text = f'[[account]]\nname = "acme"\nout = "/o"\ntoken_env = "T"\n{line}\n'
    with pytest.raises(UsageError) as caught:
        parse_fleet(tomllib.loads(text), "fleet.toml")
    message = str(caught.value)
    assert "\n" not in message
    for word in words:
        assert word in message, (word, message)


def test_a_fleet_out_that_is_empty_is_refused(tmp_path: Path) -> None:
    fleet = tmp_path / "fleet.toml"
    fleet.write_text('[[account]]\nname = "acme"\nout = " "\ntoken_env = "T"\n')
    code, _, stderr = invoke(["fleet", "--config", str(fleet)])
    assert_refused(code, stderr, "'acme'", "out", "empty")


@pytest.mark.slow
def test_the_largest_accepted_values_run_an_exact_export(tmp_path: Path) -> None:
    """The ceilings are safe: an export and an incremental run with every bound at its maximum
    finish exactly (the overlap reaches a year back, no checkpoint overflows)."""
    from exporter.simulator import Simulator, SimulatorConfig, serve_in_thread
    from tests.helpers.checks import assert_exact_for_seed
    from tests.helpers.sim import TOKEN

    extremes = [
        "--overlap", "31536000", "--commit-interval", "86400", "--read-timeout", "3600",
        "--file-rows", "1000000000", "--rate-limit", "1000000000/2678400",
        "--progress-interval", "86400", "--max-url-length", "65536", "--relationships", "none",
    ]  # fmt: skip
    sim = Simulator(SimulatorConfig(steps=120, seed=8, static_token=TOKEN))
    with serve_in_thread(sim) as root:
        args = ["export", "--out", str(tmp_path), "--base-url", root + "/api/v2", *extremes]
        first = run_cli(*args, env={"OUTREACH_TOKEN": TOKEN}, timeout=120)
        assert first.returncode == 0, first.stderr
        again = run_cli(*args, "--incremental", env={"OUTREACH_TOKEN": TOKEN}, timeout=120)
        assert again.returncode == 0, again.stderr
    assert "Traceback" not in first.stderr + again.stderr
    assert_exact_for_seed(tmp_path, 120, 8)


# -- every numeric option of every command is finite and bounded -------------------------------

HOSTILE_NUMBERS = ["nan", "inf", "-inf", "1e400", "100000000000000000000"]

# Options of commands whose modules this change does not own, still open (each owner should
# declare them with exporter.commands.values.FiniteFloat / BoundedInt): strict, so a fix shows up.
OPEN_ELSEWHERE: set[tuple[str, str]] = set()


def numeric_options() -> list[object]:
    import click

    from exporter.commands.main import main

    cases: list[object] = []
    for name, command in sorted(main.commands.items()):
        for param in command.params:
            numeric = (click.types.FloatParamType, click.types.IntParamType)
            if isinstance(param, click.Option) and isinstance(param.type, numeric):
                flag = max(param.opts, key=len)
                marks = (
                    [pytest.mark.xfail(strict=True, reason=f"{name} {flag}: owned elsewhere")]
                    if (name, flag) in OPEN_ELSEWHERE
                    else []
                )
                cases.append(pytest.param(name, flag, id=f"{name} {flag}", marks=marks))
    return cases


@pytest.mark.parametrize(("command", "flag"), numeric_options())
def test_every_numeric_option_refuses_nan_inf_and_huge_numbers(command: str, flag: str) -> None:
    import click

    from exporter.commands.main import main

    accepted = []
    for value in HOSTILE_NUMBERS:
        try:
            main.commands[command].make_context(command, [flag, value, "DIR"])
        except click.BadParameter as exc:
            if exc.param is not None and flag in exc.param.opts:
                continue  # refused, by the option itself
        except click.UsageError:
            pass  # another parameter's complaint: the value itself was accepted
        accepted.append(value)
    assert not accepted, f"{command} {flag} accepts {accepted}"


@pytest.mark.parametrize(
    ("args", "env", "line"),
    [
        (["export"], {}, "error: Missing option '--out'. (see "),
        (["verify"], {}, "error: Missing argument 'DIR'. (see "),
        (["export", "--out", "o", "--page-size", "0"], {}, "error: --page-size: 0 is not in"),
        (
            ["export", "--out", "o"],
            {"OUTREACH_PAGE_SIZE": "0"},
            "error: OUTREACH_PAGE_SIZE=0 (--page-size): 0 is",
        ),
        (["export", "--out", "o", "--log-format", "xml"], {}, "error: --log-format: 'xml'"),
        (["bogus"], {}, "error: No such command 'bogus'."),
    ],
)
def test_usage_errors_are_one_line_naming_what_is_wrong(
    args: list[str], env: dict[str, str], line: str
) -> None:
    code, _, stderr = invoke(args, env=env)
    assert_refused(code, stderr)
    assert stderr.startswith(line), stderr


def test_no_command_shows_the_help() -> None:
    code, stdout, stderr = invoke([])
    assert code == ExitCode.USAGE and "Commands:" in stdout + stderr


@pytest.mark.slow
@pytest.mark.parametrize("command", ["export", "fleet"])
@pytest.mark.parametrize(
    "nesting", ["a = " + "[" * 50_000, "a = " + "{b = " * 50_000], ids=["arrays", "tables"]
)
def test_a_toml_file_nested_too_deeply_is_one_line(
    tmp_path: Path, command: str, nesting: str
) -> None:
    config = tmp_path / "deep.toml"
    config.write_text(nesting + "\n")
    args = ["--out", str(tmp_path / "o")] if command == "export" else []
    assert_one_line(
        run_cli(command, "--config", str(config), *args), ExitCode.USAGE, str(config), "TOML"
    )


@pytest.mark.parametrize("command", ["verify", "status", "compact", "restore"])
@pytest.mark.parametrize("location", ["~no-such-user-x/o", "s3://[::1/p"])
def test_a_backup_dir_that_cannot_be_parsed_is_one_line(command: str, location: str) -> None:
    extra = ["--base-url", "http://127.0.0.1:9/api/v2"] if command == "restore" else []
    code, _, stderr = invoke([command, location, *extra])
    assert_refused(code, stderr)


# -- credentials: what goes into an HTTP header is checked where it is read --------------------


@pytest.fixture
def live_api() -> Iterator[str]:
    from exporter.simulator import Simulator, SimulatorConfig, serve_in_thread
    from tests.helpers.sim import TOKEN

    with serve_in_thread(Simulator(SimulatorConfig(steps=20, seed=3, static_token=TOKEN))) as root:
        yield root + "/api/v2"


@pytest.mark.parametrize(
    ("args", "env", "named"),
    [
        (["--token", "sk-81\r\nX-Evil: 1"], {}, "--token"),
        (["--token", "sk-82 x"], {}, "--token"),
        ([], {"OUTREACH_TOKEN": "t\u00e9k-83"}, "OUTREACH_TOKEN"),
        (
            [
                "--client-id",
                "c",
                "--client-secret",
                "cs-84\nx",
                "--refresh-token",
                "r",
                "--redirect-uri",
                "http://127.0.0.1/cb",
            ],
            {},
            "--client-secret",
        ),
        (
            [
                "--client-id",
                "c",
                "--client-secret",
                "s",
                "--refresh-token",
                "rt-85\tx",
                "--redirect-uri",
                "http://127.0.0.1/cb",
            ],
            {},
            "--refresh-token",
        ),
    ],
)
def test_a_credential_that_cannot_be_a_header_is_refused_unechoed(
    tmp_path: Path, live_api: str, args: list[str], env: dict[str, str], named: str
) -> None:
    code, stdout, stderr = invoke(
        ["export", "--out", str(tmp_path / "o"), "--base-url", live_api, *args], env=env
    )
    assert_refused(code, stderr, named)
    for secret in ("sk-8", "X-Evil", "k-83", "cs-84", "rt-85"):
        assert secret not in stderr + stdout
    assert not (tmp_path / "o").exists()


def test_a_fleet_secret_file_that_cannot_be_a_header_fails_its_account(
    tmp_path: Path, live_api: str
) -> None:
    secret = tmp_path / "token"
    secret.write_text("tok\r\nX-Evil: 1\n")
    fleet = tmp_path / "fleet.toml"
    fleet.write_text(
        f'[[account]]\nname = "acme"\nout = "{tmp_path}/acme"\nbase_url = "{live_api}"\n'
        f'token_file = "{secret}"\n'
    )
    code, stdout, stderr = invoke(["fleet", "--config", str(fleet)])
    assert code == ExitCode.FAILED, (stdout, stderr)
    [row] = [line for line in stdout.splitlines() if line.startswith("acme")]
    assert "token_file" in row and "X-Evil" not in stdout + stderr


def test_a_restore_journal_that_is_a_directory_is_one_line(
    tmp_path: Path, live_api: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from tests.helpers.sim import TOKEN

    monkeypatch.chdir(tmp_path)  # --journal "" is the current directory
    backup = tmp_path / "b"
    code, _, stderr = invoke(
        ["export", "--out", str(backup), "--base-url", live_api, "--token", TOKEN]
    )
    assert code == 0, stderr
    code, _, stderr = invoke(
        ["restore", str(backup), "--journal", "", "--base-url", live_api, "--token", TOKEN]
    )
    assert code in (ExitCode.USAGE, ExitCode.OUTPUT) and len(stderr.splitlines()) == 1, stderr


def test_an_interrupt_outside_a_run_is_exit_130_in_one_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Ctrl-C while a command without its own signal handling works (verify reading a big
    backup): the documented 130 and one `stopped:` line, not click's 'Aborted!' and exit 1."""
    from exporter.audit import verify  # the command imports `verify` from here when it runs

    def interrupted(_directory: str) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(verify, "verify", interrupted)
    code, _, stderr = invoke(["verify", str(tmp_path)])
    assert code == ExitCode.INTERRUPTED, stderr
    assert [line for line in stderr.splitlines() if line.strip()] == ["stopped: interrupted"]
