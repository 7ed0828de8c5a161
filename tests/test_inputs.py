"""Every input the command line reads, strictly: bounded regular files, finite typed values, one-line errors naming the source."""

from __future__ import annotations

import os
import resource
import subprocess
import sys
import time
from pathlib import Path

import pytest

from exporter.errors import ExitCode
from tests.conftest import clean_env

HANG = 20  # seconds: far longer than any refusal takes; a read that blocks runs into it


def run_cli(
    *args: str, env: dict[str, str] | None = None, timeout: float = HANG
) -> subprocess.CompletedProcess[str]:
    """`python -m exporter ARGS` in a clean environment, its memory capped (a read of /dev/zero
    then fails instead of taking the machine's memory)."""

    def cap_memory() -> None:
        resource.setrlimit(resource.RLIMIT_AS, (4 << 30, 4 << 30))

    return subprocess.run(
        [sys.executable, "-m", "exporter", *args],
        capture_output=True,
        text=True,
        env=clean_env(**(env or {})),
        timeout=timeout,
        check=False,
        preexec_fn=cap_memory,
    )


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


def test_config_that_is_dev_zero_is_refused(tmp_path: Path) -> None:
    result = run_cli("export", "--config", "/dev/zero", "--out", str(tmp_path / "o"))
    assert_one_line(result, ExitCode.USAGE, "/dev/zero", "not a regular file")


def test_config_that_is_a_fifo_is_refused_without_waiting(tmp_path: Path, fifo: Path) -> None:
    started = time.monotonic()
    result = run_cli("export", "--config", str(fifo), "--out", str(tmp_path / "o"))
    assert_one_line(result, ExitCode.USAGE, str(fifo), "FIFO")
    assert time.monotonic() - started < HANG / 2


def test_config_that_is_too_big_is_refused(tmp_path: Path) -> None:
    big = tmp_path / "big.toml"
    big.write_text("# filler\n" * 200_000)  # 1.8 MB of valid TOML
    result = run_cli("export", "--config", str(big), "--out", str(tmp_path / "o"))
    assert_one_line(result, ExitCode.USAGE, str(big), "larger than")


def test_fleet_file_that_is_dev_zero_is_refused() -> None:
    assert_one_line(run_cli("fleet", "--config", "/dev/zero"), ExitCode.USAGE, "not a regular file")


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


def test_refresh_token_store_that_is_a_fifo_is_refused(tmp_path: Path, fifo: Path) -> None:
    result = run_cli("export", "--out", str(tmp_path / "o"), *OAUTH, "--token-file", str(fifo))
    assert_one_line(result, ExitCode.USAGE, str(fifo), "FIFO")


def test_refresh_token_store_that_is_not_utf8_is_refused(tmp_path: Path) -> None:
    store = tmp_path / "store.json"
    store.write_bytes(b'{"refresh_token": "\xff\xfe"}')
    result = run_cli("export", "--out", str(tmp_path / "o"), *OAUTH, "--token-file", str(store))
    assert_one_line(result, ExitCode.USAGE, str(store), "UTF-8")
