"""No secret anywhere: real CLI runs (static token, OAuth with rotations, error paths), every produced file and all output grepped."""

from __future__ import annotations

import asyncio
import subprocess
from collections.abc import Mapping
from pathlib import Path

import pytest

from exporter.core.errors import ExitCode
from exporter.simulator import Faults
from exporter.simulator.auth import TokenResponse
from tests.helpers.runs import run_exporter
from tests.helpers.sim import TOKEN, StartSimulator

pytestmark = pytest.mark.slow  # exports and CLI subprocesses searched for secrets: seconds each


async def cli(*args: str, env: Mapping[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return await asyncio.to_thread(run_exporter, "export", *args, env=dict(env or {}))


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
        # Two in flight: the OAuth run's ~60 requests of 0.12 s then outlast several 1 s access
        # tokens (the adaptive bound would finish it within one).
        *("--concurrency", "2", "--verbose"),
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


async def test_an_echoed_authorization_header_never_reaches_output_or_files(
    start_simulator: StartSimulator, tmp_path: Path
) -> None:
    """Bug caught: the error document's id and title (echoing `Bearer <token>`) printed
    verbatim, and its detail's line breaks forging log lines (text and JSON logs)."""
    running = await start_simulator(steps=200, seed=31)
    faults = running.sim.hostile
    results = []
    for status, log_format in ((400, "text"), (500, "json")):
        faults.echo_auth = 1000
        faults.echo_auth_status = status
        out = tmp_path / f"out-{status}"
        result = await cli(
            *("--out", str(out), "--token", TOKEN, "--base-url", running.base_url),
            *("--verbose", "--log-format", log_format),
        )
        assert result.returncode == ExitCode.FAILED, result.stderr
        assert "Traceback" not in result.stderr
        assert "forged" not in "".join(
            line
            for line in result.stderr.splitlines()
            if not line.lstrip().startswith(("error", "{"))
        )
        results.append(result)
    assert faults.served["echo_auth"] >= 2
    for result in results:
        assert all(line.isprintable() for line in result.stderr.splitlines())
    assert_nowhere({TOKEN}, [r.stdout + r.stderr for r in results], tmp_path)


async def test_a_token_with_a_line_break_or_control_character_is_refused_on_one_line(
    start_simulator: StartSimulator, tmp_path: Path
) -> None:
    """Bug caught: a CR/LF in --token (or OUTREACH_TOKEN) reached aiohttp's header check: a
    ValueError traceback instead of one line and exit 2."""
    running = await start_simulator(steps=20, seed=32)
    for bad in (TOKEN + "\r\nX-Evil: 1", TOKEN + "\x1b[2J", "a b", TOKEN + "\n"):
        result = await cli(
            *("--out", str(tmp_path / "out"), "--base-url", running.base_url),
            env={"OUTREACH_TOKEN": bad},
        )
        assert result.returncode == ExitCode.USAGE, result.stderr
        assert "Traceback" not in result.stderr
        lines = [line for line in result.stderr.splitlines() if line.strip()]
        assert len(lines) == 1 and lines[0].startswith("error: ") and "--token" in lines[0]
        assert_nowhere({bad.strip()}, [result.stdout, result.stderr])
    assert running.sim.counters.requests == 0


async def test_an_oauth_answer_with_a_control_character_in_the_token_is_refused(
    start_simulator: StartSimulator, tmp_path: Path
) -> None:
    """Bug caught: an access token with CR/LF from the token endpoint was used (a traceback
    from aiohttp's header check), and one that is not a string was sent as its repr."""
    running = await start_simulator(steps=20, seed=33, static_token=None)
    cfg = running.sim.cfg
    original = running.sim.auth.exchange
    lies = iter(["sim-access\r\nX-Evil: 1", {"a": 1}])

    def exchange(form: Mapping[str, str]) -> TokenResponse:
        answer = original(form)
        return TokenResponse(200, {**answer.body, "access_token": next(lies)})

    running.sim.auth.exchange = exchange  # type: ignore[method-assign]
    oauth_env = {
        "OUTREACH_CLIENT_ID": cfg.client_id,
        "OUTREACH_CLIENT_SECRET": cfg.client_secret,
        "OUTREACH_REFRESH_TOKEN": cfg.refresh_token,
        "OUTREACH_REDIRECT_URI": cfg.redirect_uri,
    }
    for attempt in range(2):
        running.sim.cfg.mint_interval = 0.0
        running.sim.auth.mint_interval = 0.0
        result = await cli(
            *("--out", str(tmp_path / "out"), "--base-url", running.base_url),
            *("--token-file", str(tmp_path / f"t{attempt}.json")),
            env=oauth_env,
        )
        assert result.returncode == ExitCode.AUTH, result.stderr
        assert "Traceback" not in result.stderr
        lines = [line for line in result.stderr.splitlines() if line.startswith("error")]
        assert len(lines) == 1 and "unusable access token" in lines[0], result.stderr
        assert "X-Evil" not in result.stderr
        oauth_env["OUTREACH_REFRESH_TOKEN"] = running.sim.auth.refresh_token
    assert running.sim.counters.by_route["GET /api/v2/sequenceSteps"] == 0


async def test_a_token_file_with_a_control_character_is_refused_on_one_line(
    start_simulator: StartSimulator, tmp_path: Path
) -> None:
    running = await start_simulator(steps=20, seed=34, static_token=None)
    cfg = running.sim.cfg
    token_file = tmp_path / "t.json"
    token_file.write_text('{"refresh_token": "sim-refresh\\r\\nX: y"}')
    result = await cli(
        *("--out", str(tmp_path / "out"), "--base-url", running.base_url),
        *("--token-file", str(token_file)),
        env={
            "OUTREACH_CLIENT_ID": cfg.client_id,
            "OUTREACH_CLIENT_SECRET": cfg.client_secret,
            "OUTREACH_REFRESH_TOKEN": cfg.refresh_token,
            "OUTREACH_REDIRECT_URI": cfg.redirect_uri,
        },
    )
    assert result.returncode == ExitCode.USAGE, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "token file" in lines[0] and "--refresh-token" in lines[0]
