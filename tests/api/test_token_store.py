"""A tampered refresh-token file (CR/LF, spaces, control characters) ends in one line naming the file, exit 2, nothing sent."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path

import orjson
import pytest

from exporter.core.errors import ExitCode
from exporter.simulator.auth import TokenResponse
from tests.helpers.checks import one_error_line
from tests.helpers.sim import StartSimulator, clean_env

pytestmark = pytest.mark.slow  # CLI subprocesses reading token files: seconds each

TAMPERED = [
    "good-part\r\nX-Injected: yes",
    "good-part\nsecond-line",
    "with space",
    "nul\x00byte",
    "caf\u00e9-token",
]


@pytest.mark.parametrize("stored", TAMPERED)
async def test_a_tampered_token_file_is_one_line_exit_2_naming_it(
    start_simulator: StartSimulator, tmp_path: Path, stored: str
) -> None:
    running = await start_simulator(steps=20, seed=61, static_token=None)
    cfg = running.sim.cfg
    exchanges: list[Mapping[str, str]] = []
    original = running.sim.auth.exchange

    def exchange(form: Mapping[str, str]) -> TokenResponse:
        exchanges.append(dict(form))
        return original(form)

    running.sim.auth.exchange = exchange  # type: ignore[method-assign]
    token_file = tmp_path / "tokens" / "refresh-token.json"
    token_file.parent.mkdir(mode=0o700)
    token_file.write_bytes(orjson.dumps({"refresh_token": stored, "saved_at": 1}))
    token_file.chmod(0o600)
    env = clean_env()
    env.update(
        {
            "OUTREACH_CLIENT_ID": cfg.client_id,
            "OUTREACH_CLIENT_SECRET": cfg.client_secret,
            "OUTREACH_REFRESH_TOKEN": cfg.refresh_token,
            "OUTREACH_REDIRECT_URI": cfg.redirect_uri,
        }
    )
    command = [
        sys.executable,
        *("-m", "exporter", "export", "--out", str(tmp_path / "out")),
        *("--base-url", running.base_url, "--token-file", str(token_file)),
    ]
    result = await asyncio.to_thread(
        subprocess.run, command, capture_output=True, text=True, env=env, check=False
    )
    assert result.returncode == ExitCode.USAGE, result.stderr
    assert "Traceback" not in result.stderr
    line = one_error_line(result.stderr)
    assert str(token_file) in line and "--refresh-token" in line, line
    assert "X-Injected" not in result.stderr and "second-line" not in result.stderr
    assert exchanges == []  # the damaged token never reached the token endpoint
    assert running.sim.counters.requests == 0  # nor was any API request made with it
    assert not (tmp_path / "out" / "_checkpoint.json").exists()
    assert orjson.loads(token_file.read_bytes())["refresh_token"] == stored  # left as found
