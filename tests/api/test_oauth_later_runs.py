"""Later OAuth runs: the rotated refresh token saved in --token-file is enough (no --refresh-token), and the stale first one passed again never replaces it."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import orjson
import pytest

from exporter.simulator import Simulator, SimulatorConfig, serve_in_thread
from tests.helpers.checks import assert_refused
from tests.helpers.commands import invoke
from tests.helpers.runs import run_exporter

pytestmark = pytest.mark.slow  # CLI subprocesses against a simulator


@pytest.fixture
def simulator() -> Iterator[tuple[Simulator, str]]:
    sim = Simulator(SimulatorConfig(steps=30, static_token=None, mint_interval=0.01))
    with serve_in_thread(sim) as root:
        yield sim, root + "/api/v2"


def oauth_args(sim: Simulator, base_url: str, out: Path, token_file: Path) -> list[str]:
    cfg = sim.cfg
    return [
        "export",
        "--out",
        str(out),
        "--base-url",
        base_url,
        "--client-id",
        cfg.client_id,
        "--client-secret",
        cfg.client_secret,
        "--redirect-uri",
        cfg.redirect_uri,
        "--token-file",
        str(token_file),
        "-q",
    ]


def saved(token_file: Path) -> str:
    value = orjson.loads(token_file.read_bytes())["refresh_token"]
    assert isinstance(value, str)
    return value


def test_later_runs_need_no_refresh_token_and_a_stale_one_never_wins(
    simulator: tuple[Simulator, str], tmp_path: Path
) -> None:
    sim, base_url = simulator
    token_file = tmp_path / "config" / "refresh-token.json"
    first = sim.cfg.refresh_token

    # A first run without a refresh token: refused, naming the flag and the empty file.
    code, _, stderr = invoke(oauth_args(sim, base_url, tmp_path / "o0", token_file))
    assert_refused(code, stderr, "--refresh-token", "first run", str(token_file))
    assert not (tmp_path / "o0").exists()

    runs = [
        ("with the first refresh token", ["--refresh-token", first]),
        ("without --refresh-token", []),
        ("with the first (now stale) one again", ["--refresh-token", first]),
        ("with it from the environment", []),
    ]
    before = saved_tokens = None
    for i, (_what, extra) in enumerate(runs):
        env = {"OUTREACH_REFRESH_TOKEN": first} if i == 3 else {}
        result = run_exporter(
            *oauth_args(sim, base_url, tmp_path / f"o{i + 1}", token_file), *extra, env=env
        )
        assert result.returncode == 0, (_what, result.stderr)
        assert result.stdout.startswith("exported "), result.stdout
        saved_tokens = saved(token_file)
        assert saved_tokens != first and saved_tokens != before, _what
        # The simulator's only valid refresh token is the newest it issued: the file holds it.
        assert saved_tokens == sim.auth.refresh_token, _what
        before = saved_tokens
    # Every exchange was granted: the stale token was never sent ahead of the saved one.
    counters = sim.counters
    assert counters.by_route["POST /oauth/token"] == counters.tokens_minted == len(runs)
