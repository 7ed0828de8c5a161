"""OAuth end to end: exports across several (scaled-down) token lifetimes, rotation persisted, minting paced, refusals."""

from __future__ import annotations

import asyncio
import itertools
import stat
import subprocess
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest

from exporter.api.auth import OAuthCredentials, OAuthTokens, RefreshTokenStore
from exporter.core.errors import AuthError, ExitCode
from exporter.core.secrets import Secret
from exporter.simulator import Faults
from exporter.simulator.auth import TokenResponse
from tests.helpers.checks import one_error_line
from tests.helpers.runs import run_export
from tests.helpers.sim import Running, StartSimulator, clean_env
from tests.helpers.truth import assert_rows_equal, expected_steps, read_rows

pytestmark = pytest.mark.slow  # exports across token lifetimes, a CLI subprocess: seconds each


def oauth(running: Running, store: Path | None, refresh_token: str | None = None) -> OAuthTokens:
    cfg = running.sim.cfg
    credentials = OAuthCredentials(
        client_id=cfg.client_id,
        client_secret=Secret(cfg.client_secret),
        refresh_token=Secret(refresh_token or cfg.refresh_token),
        redirect_uri=cfg.redirect_uri,
        token_url=running.root_url + "/oauth/token",
    )
    return OAuthTokens(
        credentials, RefreshTokenStore(store) if store else None, aiohttp.ClientSession
    )


def record_mints(running: Running, *, expires_in: int | None = None) -> list[tuple[float, Any]]:
    """Wrap the simulator's token endpoint: (time, answer) of every exchange; optionally lie
    about the lifetime so that the API's 401 is what triggers the refresh."""
    minted: list[tuple[float, Any]] = []
    original = running.sim.auth.exchange

    def exchange(form: Mapping[str, str]) -> TokenResponse:
        answer = original(form)
        minted.append((time.monotonic(), answer))
        if expires_in is not None and answer.status == 200:
            return TokenResponse(200, {**answer.body, "expires_in": expires_in})
        return answer

    running.sim.auth.exchange = exchange  # type: ignore[method-assign]
    return minted


async def test_export_across_several_token_lifetimes(
    start_simulator: StartSimulator, tmp_path: Path
) -> None:
    running = await start_simulator(
        steps=2000,
        seed=23,
        token_ttl=1.0,
        mint_interval=0.2,
        static_token=None,
        faults=Faults(latency_s=0.12),
    )
    minted = record_mints(running)
    token_file = tmp_path / "config" / "refresh-token.json"
    tokens = oauth(running, token_file)
    started = time.monotonic()
    await run_export(running.base_url, tmp_path / "out", tokens, page_size=40, concurrency=2)
    elapsed = time.monotonic() - started
    assert_rows_equal(read_rows(tmp_path / "out" / "sequenceSteps"), expected_steps(running.sim))

    counters = running.sim.counters
    assert elapsed > 2.5 and counters.tokens_minted >= 3  # several lifetimes
    assert counters.by_route["POST /oauth/token"] == counters.tokens_minted  # none refused
    times = [t for t, answer in minted if answer.status == 200]
    assert min(b - a for a, b in itertools.pairwise(times)) >= 0.2
    assert counters.tokens_minted <= elapsed / 0.5 + 2  # not more than needed either
    # the newest refresh token is on disk, 0600, and the directory private
    assert stat.S_IMODE(token_file.stat().st_mode) == 0o600
    assert stat.S_IMODE(token_file.parent.stat().st_mode) == 0o700
    saved = orjson.loads(token_file.read_bytes())["refresh_token"]
    assert saved == running.sim.auth.refresh_token != running.sim.cfg.refresh_token

    # The next run is given the first (now dead) refresh token again but starts from the file.
    running.sim.faults.latency_s = 0.0
    await run_export(running.base_url, tmp_path / "again", oauth(running, token_file))
    assert orjson.loads(token_file.read_bytes())["refresh_token"] == running.sim.auth.refresh_token
    # Without the file the old refresh token is refused: exit 3, with what to do.
    with pytest.raises(AuthError, match="authorize the app again") as caught:
        await run_export(running.base_url, tmp_path / "third", oauth(running, None))
    assert caught.value.exit_code == ExitCode.AUTH and caught.value.error_id == "invalid_grant"


async def test_a_401_refreshes_once_and_the_export_goes_on(
    start_simulator: StartSimulator, tmp_path: Path
) -> None:
    running = await start_simulator(
        steps=1500,
        seed=24,
        token_ttl=0.6,
        mint_interval=0.1,
        static_token=None,
        faults=Faults(latency_s=0.05),
    )
    record_mints(running, expires_in=2)  # the client believes its token lives 2 s, not 0.6
    # 150 pages, 8 at a time, 0.05 s each: the export outlives the token however fast the
    # machine (600 steps in pages of 25 could finish within 0.6 s once the start lost its two
    # sequential probes).
    job, _result = await run_export(
        running.base_url, tmp_path, oauth(running, tmp_path / "t.json"), page_size=10
    )
    assert_rows_equal(read_rows(tmp_path / "sequenceSteps"), expected_steps(running.sim))
    assert job.client is not None
    assert job.client.stats.statuses[401] >= 1 and job.client.stats.token_refreshes >= 1
    assert running.sim.counters.tokens_minted >= 2


async def test_revoked_refresh_token_exits_3_with_one_line(
    start_simulator: StartSimulator, tmp_path: Path
) -> None:
    running = await start_simulator(steps=50, seed=25, static_token=None)
    cfg = running.sim.cfg
    env = clean_env()
    env.update(
        {
            "OUTREACH_CLIENT_ID": cfg.client_id,
            "OUTREACH_CLIENT_SECRET": cfg.client_secret,
            "OUTREACH_REFRESH_TOKEN": "revoked-refresh-token-77",
            "OUTREACH_REDIRECT_URI": cfg.redirect_uri,
        }
    )
    command = [
        sys.executable,
        *("-m", "exporter", "export", "--out", str(tmp_path / "out")),
        *("--base-url", running.base_url, "--token-file", str(tmp_path / "tok.json")),
    ]
    result = await asyncio.to_thread(
        subprocess.run, command, capture_output=True, text=True, env=env, check=False
    )
    assert result.returncode == ExitCode.AUTH, result.stderr
    line = one_error_line(result.stderr)
    assert "invalid_grant" in line and "--refresh-token" in line
    for secret in ("revoked-refresh-token-77", cfg.client_secret):
        assert secret not in result.stdout + result.stderr
    assert not (tmp_path / "tok.json").exists()
