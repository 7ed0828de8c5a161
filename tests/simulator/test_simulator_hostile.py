"""The simulator's hostile faults (`sim.hostile`): the token endpoint's and attacks on API GETs."""

from __future__ import annotations

import time
import zlib

import aiohttp
import orjson
import pytest

from exporter.simulator import SimulatorConfig
from exporter.simulator.faults import TokenFault
from tests.helpers.simulator_http import AUTH, running

FORM = {
    "grant_type": "refresh_token",
    "client_id": "sim-client",
    "client_secret": "sim-secret",
    "redirect_uri": "http://127.0.0.1/callback",
    "refresh_token": "sim-refresh-0",
}


async def test_token_endpoint_faults_are_served_in_order_then_the_real_exchange() -> None:
    async with running(SimulatorConfig(steps=20, mint_interval=0.0)) as run:
        faults = run.sim.hostile
        faults.token_retry_after = 7
        faults.token_slow_s = 0.3
        faults.token = [
            TokenFault.UNAVAILABLE,
            TokenFault.SERVER_ERROR,
            TokenFault.RATE_LIMITED,
            TokenFault.REDIRECT,
            TokenFault.ECHO_SECRETS,
            TokenFault.SLOW,
        ]
        url = run.root + "/oauth/token"
        seen = []
        for _ in range(5):
            async with run.session.post(url, data=FORM, allow_redirects=False) as response:
                seen.append((response.status, dict(response.headers), await response.read()))
        assert [s for s, _, _ in seen] == [503, 500, 429, 307, 400]
        assert seen[2][1]["Retry-After"] == "7"
        assert seen[3][1]["Location"] == faults.redirect_to + "/oauth/token"
        echoed = orjson.loads(seen[4][2])
        assert "sim-secret" in echoed["error"] and "sim-refresh-0" in echoed["error_description"]
        assert "\n" in echoed["error_description"]
        assert run.sim.auth.minted == 0  # no fault minted a token
        started = time.monotonic()
        async with run.session.post(url, data=FORM) as response:
            granted = await response.json(content_type=None)
        assert time.monotonic() - started >= 0.3
        assert response.status == 200 and granted["access_token"]
        assert not faults.token and faults.served["token slow"] == 1


async def test_get_redirects_echo_and_gzip_bomb() -> None:
    async with running(SimulatorConfig(steps=20)) as run:
        faults = run.sim.hostile
        faults.redirect_cross = 1
        faults.redirect_same = 1
        faults.echo_auth = 1
        faults.gzip_bomb = 1
        faults.gzip_bomb_bytes = 4 << 20
        url = run.api + "/sequenceSteps?page[size]=5"
        async with run.session.get(url, allow_redirects=False) as response:
            assert response.status == 307
            assert (
                response.headers["Location"]
                == faults.redirect_to + "/api/v2/sequenceSteps?page%5Bsize%5D=5"
            )
        async with run.session.get(url, allow_redirects=False) as response:
            assert response.status == 307
            assert response.headers["Location"] == "/api/v2/sequenceSteps?page%5Bsize%5D=5"
        reply = await run.get("/sequenceSteps")
        assert reply.status == 400
        error = reply.json["errors"][0]
        assert error["id"] == AUTH["Authorization"] and AUTH["Authorization"] in error["title"]
        assert "\nERROR" in error["detail"] and "\x1b" in error["detail"]
        async with run.session.get(url, auto_decompress=False) as response:
            assert response.headers["Content-Encoding"] == "gzip"
            compressed = await response.read()
        inflated = zlib.decompress(compressed, 31)
        assert len(inflated) == 4 << 20 and len(compressed) < 64 << 10
        assert inflated.startswith(b'{"data":[')
        assert (await run.get("/sequenceSteps")).status == 200  # every count spent
        assert dict(faults.served) == {
            "redirect_cross": 1,
            "redirect_same": 1,
            "echo_auth": 1,
            "gzip_bomb": 1,
        }


@pytest.mark.slow
async def test_trickle_sends_the_real_body_a_few_bytes_a_second() -> None:
    async with running(SimulatorConfig(steps=20)) as run:
        faults = run.sim.hostile
        faults.trickle = 1
        faults.trickle_bytes_per_s = 400
        timeout = aiohttp.ClientTimeout(sock_read=0.5)  # never exceeded between two bytes
        started = time.monotonic()
        small = {"fields[sequenceStep]": "order", "page[size]": "3"}
        slow = await run.get("/sequenceSteps", small, timeout=timeout)
        elapsed = time.monotonic() - started
        fast = await run.get("/sequenceSteps", small)
        assert slow.status == 200 and slow.raw == fast.raw
        assert 200 < len(slow.raw) < 2000 and elapsed >= 0.8 * len(slow.raw) / 400
