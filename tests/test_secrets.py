"""No secret anywhere: real CLI runs (static token, OAuth with rotations, error paths), every produced file and all output grepped."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path

from exporter.errors import ExitCode
from exporter.simulator import Faults
from exporter.simulator.auth import TokenResponse
from tests.conftest import TOKEN, StartSimulator


async def cli(*args: str, env: Mapping[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    full = {k: v for k, v in os.environ.items() if not k.startswith("OUTREACH_")}
    full.update(env or {})
    command = [sys.executable, "-m", "exporter", "export", *args]
    return await asyncio.to_thread(
        subprocess.run, command, capture_output=True, text=True, env=full, check=False, timeout=120
    )


def assert_nowhere(secrets: set[str], outputs: list[str], *roots: Path) -> int:
    """None of `secrets` in any output text or any file under `roots`; the number of files read."""
    secrets = {s for s in secrets if s}
    files = 0
    for text in outputs:
        for secret in secrets:
            assert secret not in text, (secret[:6] + "...", text[:300])
    for root in roots:
        for path in root.rglob("*"):
            if path.is_file():
                files += 1
                data = path.read_bytes()
                for secret in secrets:
                    assert secret.encode() not in data, (secret[:6] + "...", path)
    return files


async def test_no_secret_in_files_or_output(
    start_simulator: StartSimulator, tmp_path: Path
) -> None:
    running = await start_simulator(
        steps=1200, seed=29, token_ttl=1.0, mint_interval=0.1, faults=Faults(latency_s=0.12)
    )
    cfg = running.sim.cfg
    issued: set[str] = {TOKEN, cfg.client_secret, cfg.refresh_token}
    original = running.sim.auth.exchange

    def exchange(form: Mapping[str, str]) -> TokenResponse:
        answer = original(form)
        if answer.status == 200:
            issued.update({answer.body["access_token"], answer.body["refresh_token"]})
        return answer

    running.sim.auth.exchange = exchange  # type: ignore[method-assign]
    # --verbose: every request is logged too (method, URL, status), and none may show a secret.
    common = [
        *("--base-url", running.base_url, "--page-size", "50", "--rate-limit", "100000/1"),
        "--verbose",
    ]
    outputs: list[str] = []

    # 1. a static token, a complete run
    static = await cli("--out", str(tmp_path / "static"), "--token", TOKEN, *common)
    assert static.returncode == 0, static.stderr
    # 2. OAuth across several rotations; the token file lives outside --out
    token_file = tmp_path / "private" / "refresh-token.json"
    oauth_env = {
        "OUTREACH_CLIENT_ID": cfg.client_id,
        "OUTREACH_CLIENT_SECRET": cfg.client_secret,
        "OUTREACH_REFRESH_TOKEN": cfg.refresh_token,
        "OUTREACH_REDIRECT_URI": cfg.redirect_uri,
    }
    flagged = await cli(
        *("--out", str(tmp_path / "oauth"), "--token-file", str(token_file), *common),
        *("--log-format", "json"),
        env=oauth_env,
    )
    assert flagged.returncode == 0, flagged.stderr
    assert running.sim.counters.tokens_minted >= 3  # several access and refresh tokens to hide
    # 3. error paths with every secret present: a wrong token, an unreachable URL, a refused
    #    (already rotated) refresh token, an API that fails for good
    wrong = await cli("--out", str(tmp_path / "wrong"), "--token", TOKEN + "-x", *common)
    assert wrong.returncode == ExitCode.AUTH
    issued.add(TOKEN + "-x")
    unreachable = await cli(
        *("--out", str(tmp_path / "unreachable"), "--token", TOKEN),
        *("--base-url", "http://127.0.0.1:9/api/v2"),
    )
    assert unreachable.returncode == ExitCode.UNREACHABLE
    stale = {**oauth_env, "OUTREACH_TOKEN_FILE": str(tmp_path / "private" / "other.json")}
    refused = await cli("--out", str(tmp_path / "refused"), *common, env=stale)
    assert refused.returncode == ExitCode.AUTH
    running.sim.faults.error_rate = 1.0
    running.sim.faults.latency_s = 0.0
    failing = await cli(
        "--out", str(tmp_path / "failing"), "--token-file", str(token_file), *common, env=oauth_env
    )
    assert failing.returncode in (ExitCode.FAILED, ExitCode.AUTH), failing.stderr
    for result in (static, flagged, wrong, unreachable, refused, failing):
        outputs += [result.stdout, result.stderr]
    assert static.stderr.count(" -> 200, ") > 20  # the requests were logged, so were checked
    assert sum('"event":"request"' in line for line in flagged.stderr.splitlines()) > 20

    assert len(issued) >= 8
    out_dirs = [tmp_path / d for d in ("static", "oauth", "wrong", "refused", "failing")]
    files = assert_nowhere(issued, outputs, *[d for d in out_dirs if d.exists()])
    assert files >= 10  # Parquet files, checkpoints and manifests were read
    # The token file holds exactly the newest refresh token, and nothing else of ours.
    newest = running.sim.auth.refresh_token
    assert newest.encode() in token_file.read_bytes()
    assert_nowhere(issued - {newest}, [], token_file.parent)
