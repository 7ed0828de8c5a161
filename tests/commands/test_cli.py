"""The command line as a user meets it: real subprocesses, exit codes, one-line errors, no tracebacks."""

from __future__ import annotations

import subprocess
from pathlib import Path

import orjson
import pytest

from exporter.core.errors import ExitCode
from tests.helpers.runs import run_exporter
from tests.helpers.sim import TOKEN, StartSimulator

pytestmark = pytest.mark.slow  # every test runs `python -m exporter` subprocesses: seconds each


def assert_one_line_error(result: subprocess.CompletedProcess[str], code: int, *words: str) -> None:
    assert result.returncode == code, (result.returncode, result.stdout, result.stderr)
    assert "Traceback" not in result.stderr
    error_lines = [line for line in result.stderr.splitlines() if "rror" in line]
    assert len(error_lines) == 1, result.stderr
    for word in words:
        assert word in result.stderr, (word, result.stderr)


@pytest.mark.parametrize(
    ("args", "words"),
    [
        (["--page-size", "0"], ["--page-size"]),
        (["--page-size", "1001"], ["--page-size"]),
        (["--concurrency", "many"], ["--concurrency"]),
        (["--rate-limit", "fast"], ["--rate-limit", "N/SECONDS"]),
        (["--rate-limit", "0/10"], ["--rate-limit"]),
        (["--base-url", "ftp://x"], ["--base-url"]),
        (["--base-url", "https://user:pw@api.outreach.io/api/v2"], ["credentials"]),
        (["--bogus"], ["--bogus"]),
        (["--relationships", "sequence,prospects"], ["prospects", "--relationships"]),
    ],
)
def test_bad_flags_get_one_line_and_exit_2(
    tmp_path: Path, args: list[str], words: list[str]
) -> None:
    result = run_exporter("export", "--out", str(tmp_path / "o"), "--token", "t", *args)
    assert_one_line_error(result, 2, *words)


def test_bad_environment_value_names_the_variable(tmp_path: Path) -> None:
    result = run_exporter("export", "--out", str(tmp_path), env={"OUTREACH_PAGE_SIZE": "zero"})
    assert_one_line_error(result, 2, "page-size")


def test_config_file_errors(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text("[export]\npage_sise = 5\n")
    assert_one_line_error(
        run_exporter("export", "--config", str(bad), "--out", str(tmp_path)), 2, "page_sise"
    )
    broken = tmp_path / "broken.toml"
    broken.write_text("[export\n")
    assert_one_line_error(
        run_exporter("export", "--config", str(broken), "--out", str(tmp_path)), 2, "TOML"
    )
    assert_one_line_error(
        run_exporter("export", "--config", str(tmp_path / "none.toml"), "--out", "x"),
        2,
        "does not exist",
    )


def test_missing_credentials(tmp_path: Path) -> None:
    assert_one_line_error(run_exporter("export", "--out", str(tmp_path)), 2, "--token", "--demo")


def test_unreachable_base_url(tmp_path: Path) -> None:
    result = run_exporter(
        "export", "--out", str(tmp_path), "--token", "t", "--base-url", "http://127.0.0.1:9/api/v2"
    )
    assert_one_line_error(result, ExitCode.UNREACHABLE, "--base-url", "127.0.0.1:9")


@pytest.mark.parametrize(
    ("args", "named"),
    [
        (("export", "--out", "s3://", "--token", "t"), "--out 's3://'"),
        (("verify", "s3://"), "DIR 's3://'"),
        (("status", "s3://"), "DIR 's3://'"),
        (("compact", "s3://"), "DIR 's3://'"),
    ],
)
def test_a_uri_without_a_bucket_is_named_as_the_user_gave_it(
    args: tuple[str, ...], named: str
) -> None:
    result = run_exporter(*args)
    assert_one_line_error(result, ExitCode.USAGE, named, "names a bucket")


def test_unwritable_output(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("x")
    result = run_exporter("export", "--out", str(blocker / "sub"), "--token", "t")
    assert_one_line_error(result, ExitCode.OUTPUT, str(blocker))


async def test_wrong_token_and_precedence(start_simulator: StartSimulator, tmp_path: Path) -> None:
    running = await start_simulator(steps=50, seed=2)
    # wrong token from the environment: refused, named as a token problem, never printed
    result = await _async_exporter(
        "export",
        "--out",
        str(tmp_path / "a"),
        env={"OUTREACH_BASE_URL": running.base_url, "OUTREACH_TOKEN": "nope-XYZ"},
    )
    assert_one_line_error(result, ExitCode.AUTH, "token")
    assert "nope-XYZ" not in result.stderr + result.stdout
    # the flag wins over the environment, the environment over the config file
    config = tmp_path / "c.toml"
    config.write_text(
        '[export]\nbase_url = "http://127.0.0.1:9/api/v2"\npage_size = 7\nconcurrency = 3\n'
    )
    result = await _async_exporter(
        "export",
        "--config",
        str(config),
        "--out",
        str(tmp_path / "b"),
        "--token",
        TOKEN,
        env={"OUTREACH_BASE_URL": running.base_url, "OUTREACH_TOKEN": "nope"},
    )
    assert result.returncode == 0, result.stderr
    manifest = orjson.loads((tmp_path / "b" / "_manifest.json").read_bytes())
    assert manifest["source"] == running.base_url
    assert manifest["parameters"]["page_size"] == 7 and manifest["parameters"]["concurrency"] == 3
    assert manifest["resources"]["sequenceStep"]["rows"] == 50


async def _async_exporter(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    import asyncio

    return await asyncio.to_thread(run_exporter, *args, env=env)


def test_demo_runs_end_to_end(tmp_path: Path) -> None:
    result = run_exporter("export", "--demo", "--demo-steps", "700", "--out", str(tmp_path))
    assert result.returncode == 0, result.stderr
    assert "sequenceStep 700" in result.stdout
    manifest = orjson.loads((tmp_path / "_manifest.json").read_bytes())
    assert manifest["resources"]["sequenceStep"]["rows"] == 700
    assert set(manifest["resources"]) == {
        "sequenceStep",
        "sequence",
        "user",
        "callPurpose",
        "taskPriority",
        "sequenceTemplate",
        "mailing",
        "call",
        "task",
    }


def test_token_file_inside_out_is_refused(tmp_path: Path) -> None:
    out = tmp_path / "backup"
    result = run_exporter(
        "export",
        "--out",
        str(out),
        "--client-id",
        "c",
        "--client-secret",
        "s",
        "--refresh-token",
        "r-XYZ",
        "--redirect-uri",
        "http://127.0.0.1/cb",
        "--token-file",
        str(out / "secrets" / "token.json"),
    )
    assert_one_line_error(result, 2, "--token-file", "inside --out")
    assert "r-XYZ" not in result.stderr and not (out / "secrets").exists()
