"""`--request-deadline` and `--max-response-mib` (and their OUTREACH_* variables), and OUTREACH_RETRY_BACKOFF: bounded, finite, and what the transport uses."""

from __future__ import annotations

import asyncio
import sys
import time
from pathlib import Path

import pytest

from exporter.core.config import RETRY_BACKOFF_VARIABLE, ExportSettings, RetryPolicy
from exporter.core.errors import ExitCode
from exporter.export.run import Export
from tests.helpers.checks import assert_refused
from tests.helpers.commands import invoke
from tests.helpers.sim import TOKEN, StartSimulator, clean_env, spawn


@pytest.mark.parametrize(
    ("flag", "value", "why"),
    [
        ("--request-deadline", "0", "not in the range"),
        ("--request-deadline", "0.5", "not in the range"),
        ("--request-deadline", "86401", "not in the range"),
        ("--request-deadline", "inf", "not a finite number"),
        ("--request-deadline", "nan", "not a finite number"),
        ("--request-deadline", "1e999", "not a finite number"),
        ("--max-response-mib", "0", "not in the range"),
        ("--max-response-mib", "16385", "not in the range"),
        ("--max-response-mib", "1.5", "not a whole number"),
        ("--max-response-mib", "99999999999999999999", "not in the range"),
        ("--max-response-mib", "1_0", "not a whole number"),
    ],
)
def test_out_of_bounds_values_are_refused_naming_the_flag(
    tmp_path: Path, flag: str, value: str, why: str
) -> None:
    code, _out, err = invoke(["export", "--out", str(tmp_path / "o"), flag, value])
    assert_refused(code, err, flag, why)


@pytest.mark.parametrize(
    ("variable", "value", "why"),
    [
        ("OUTREACH_REQUEST_DEADLINE", "inf", "not a finite number"),
        ("OUTREACH_MAX_RESPONSE_MIB", "0", "not in the range"),
    ],
)
def test_out_of_bounds_variables_are_refused_naming_them(
    tmp_path: Path, variable: str, value: str, why: str
) -> None:
    code, _out, err = invoke(["export", "--out", str(tmp_path / "o")], {variable: value})
    assert_refused(code, err, variable, why)


def test_the_settings_reach_the_client_settings(tmp_path: Path) -> None:
    defaults = Export(ExportSettings(out=tmp_path / "a"), tokens=None)._client_settings()  # type: ignore[arg-type]
    assert (defaults.request_deadline, defaults.max_response_bytes) == (300.0, 256 << 20)
    chosen = ExportSettings(out=tmp_path / "b", request_deadline=7.5, max_response_mib=3)
    client = Export(chosen, tokens=None)._client_settings()  # type: ignore[arg-type]
    assert (client.request_deadline, client.max_response_bytes) == (7.5, 3 << 20)


def test_a_retry_policy_reaches_the_client_settings(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv(RETRY_BACKOFF_VARIABLE, raising=False)
    defaults = Export(ExportSettings(out=tmp_path / "a"), tokens=None)._client_settings()  # type: ignore[arg-type]
    assert (defaults.max_attempts, defaults.backoff_base, defaults.backoff_max) == (6, 0.5, 30.0)
    chosen = ExportSettings(out=tmp_path / "b", retry=RetryPolicy(3, 0.005, 0.05))
    client = Export(chosen, tokens=None)._client_settings()  # type: ignore[arg-type]
    assert (client.max_attempts, client.backoff_base, client.backoff_max) == (3, 0.005, 0.05)
    monkeypatch.setenv(RETRY_BACKOFF_VARIABLE, "4/0.01/0.1")
    assert ExportSettings(out=tmp_path / "c").retry == RetryPolicy(4, 0.01, 0.1)
    assert ExportSettings(out=tmp_path / "d", retry=None).retry is None  # a program's own wins


@pytest.mark.parametrize("value", ["fast", "0/0.1/1", "101/0.1/1", "3/0/1", "3/2/1", "3/1/3601"])
def test_a_bad_retry_variable_is_refused_naming_it(tmp_path: Path, value: str) -> None:
    code, _out, err = invoke(
        ["export", "--out", str(tmp_path / "o"), "--token", "t"], {RETRY_BACKOFF_VARIABLE: value}
    )
    assert_refused(code, err, RETRY_BACKOFF_VARIABLE, "ATTEMPTS/BASE/MAX")


@pytest.mark.slow
async def test_the_flags_bound_a_real_export(
    start_simulator: StartSimulator, tmp_path: Path
) -> None:
    """A trickling answer meets `--request-deadline 1` (the default, 300 s, would wait on it
    for minutes), and a gzip bomb meets `--max-response-mib 1`: both named in the one line."""
    slow, big = await start_simulator(steps=20), await start_simulator(steps=20)
    slow.sim.hostile.trickle = 100
    slow.sim.hostile.trickle_bytes_per_s = 20
    big.sim.hostile.gzip_bomb = 100
    big.sim.hostile.gzip_bomb_bytes = 8 << 20

    async def export(base_url: str, out: Path, *flags: str) -> tuple[int | None, str]:
        process = await spawn(
            sys.executable,
            *("-m", "exporter", "export", "--out", str(out), "--base-url", base_url),
            *("--token", TOKEN, "--relationships", "none", "--read-timeout", "60", *flags),
            env=clean_env(),
        )
        _stdout, stderr = await process.communicate()
        return process.returncode, stderr.decode()

    started = time.monotonic()
    (slow_code, slow_err), (big_code, big_err) = await asyncio.gather(
        export(slow.base_url, tmp_path / "slow", "--request-deadline", "1"),
        export(big.base_url, tmp_path / "big", "--max-response-mib", "1"),
    )
    assert time.monotonic() - started < 120
    for code, err in ((slow_code, slow_err), (big_code, big_err)):
        assert code not in (0, ExitCode.USAGE) and "Traceback" not in err, err
    assert "within the 1 s request deadline" in slow_err, slow_err
    assert "1 MiB" in big_err and "larger than" in big_err, big_err
