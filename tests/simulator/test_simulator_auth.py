"""Bearer tokens, the OAuth refresh grant (expiry, rotation, minting limit) and the rate limit, on an injected clock."""

from __future__ import annotations

from typing import Any

import aiohttp
import pytest

from exporter.simulator import SimulatorConfig
from exporter.simulator.ratelimit import FixedWindow
from tests.helpers.simulator_http import running


class Clock:
    def __init__(self, now: float = 1_800_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def _config(clock: Clock, **kw: Any) -> SimulatorConfig:
    return SimulatorConfig(steps=30, seed=1, clock=clock, **kw)


def _form(refresh: str, **kw: str) -> dict[str, str]:
    return {
        "grant_type": "refresh_token",
        "client_id": "sim-client",
        "client_secret": "sim-secret",
        "redirect_uri": "http://127.0.0.1/callback",
        "refresh_token": refresh,
        **kw,
    }


async def _token(
    session: aiohttp.ClientSession, root: str, form: dict[str, str]
) -> tuple[int, Any]:
    async with session.post(root + "/oauth/token", data=form) as response:
        return response.status, await response.json(content_type=None)


async def test_requests_need_a_valid_bearer_token() -> None:
    async with running(SimulatorConfig(steps=20), auth=False) as run:
        for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "Basic x"}):
            reply = await run.get("/sequenceSteps", headers=headers)
            assert reply.status == 401
            assert reply.json["errors"][0]["id"] == "unauthorized"
            assert "X-RateLimit-Remaining" in reply.headers
        reply = await run.get("/sequenceSteps", headers={"Authorization": "Bearer sim-token"})
        assert reply.status == 200


async def test_refresh_grant_expiry_rotation_and_minting_limit() -> None:
    clock = Clock()
    cfg = _config(clock, token_ttl=100.0, mint_interval=60.0, static_token=None)
    async with running(cfg, auth=False) as run:
        assert (
            await run.get("/sequenceSteps", headers={"Authorization": "Bearer sim-token"})
        ).status == 401
        status, grant = await _token(run.session, run.root, _form("sim-refresh-0"))
        assert status == 200
        assert grant["token_type"] == "bearer"
        assert grant["expires_in"] == 100
        assert grant["created_at"] == int(clock.now)
        assert set(grant) == {
            "access_token",
            "token_type",
            "refresh_token",
            "expires_in",
            "created_at",
            "scope",
        }
        assert run.sim.counters.tokens_minted == 1
        bearer = {"Authorization": f"Bearer {grant['access_token']}"}
        assert (await run.get("/sequenceSteps", headers=bearer)).status == 200
        clock.now += 99.0
        assert (await run.get("/sequenceSteps", headers=bearer)).status == 200
        clock.now += 1.0
        expired = await run.get("/sequenceSteps", headers=bearer)
        assert expired.status == 401
        assert "expired" in expired.json["errors"][0]["detail"]
        # The old refresh token died when it was used.
        status, error = await _token(run.session, run.root, _form("sim-refresh-0"))
        assert status == 400
        assert error["error"] == "invalid_grant"
        # Too soon after the last mint.
        clock.now = grant["created_at"] + 59.0
        status, body = await _token(run.session, run.root, _form(grant["refresh_token"]))
        assert status == 429
        assert body["errors"][0]["id"]
        clock.now = grant["created_at"] + 60.0
        status, second = await _token(run.session, run.root, _form(grant["refresh_token"]))
        assert status == 200
        assert second["refresh_token"] != grant["refresh_token"]
        assert second["access_token"] != grant["access_token"]
        bearer = {"Authorization": f"Bearer {second['access_token']}"}
        assert (await run.get("/sequenceSteps", headers=bearer)).status == 200
        assert run.sim.counters.tokens_minted == 2
        for bad, code, error_name in (
            (_form(second["refresh_token"], client_secret="nope"), 401, "invalid_client"),
            (_form(second["refresh_token"], redirect_uri="http://x"), 400, "invalid_grant"),
            (_form(second["refresh_token"], grant_type="password"), 400, "unsupported_grant_type"),
        ):
            status, body = await _token(run.session, run.root, bad)
            assert (status, body["error"]) == (code, error_name)


async def test_static_token_never_expires() -> None:
    clock = Clock()
    async with running(_config(clock, token_ttl=1.0)) as run:
        clock.now += 10 * 365 * 86_400
        assert (await run.get("/users")).status == 200


async def test_rate_limit_headers_429_and_window_reset() -> None:
    clock = Clock(1_800_000_000.5)
    cfg = _config(clock, rate_limit=5, rate_window=2.0, retry_after=True)
    async with running(cfg) as run:
        remaining = []
        for _ in range(5):
            reply = await run.get("/taskPriorities")
            assert reply.status == 200
            assert reply.headers["X-RateLimit-Limit"] == "5"
            assert reply.headers["X-RateLimit-Reset"] == "1800000002"
            remaining.append(int(reply.headers["X-RateLimit-Remaining"]))
        assert remaining == [4, 3, 2, 1, 0]
        clock.now += 0.5
        limited = await run.get("/taskPriorities")
        assert limited.status == 429
        assert limited.headers["Retry-After"] == "1"
        error = limited.json["errors"][0]
        assert error["id"] == "rateLimitExceeded"
        assert error["title"] == "Rate Limit Exceeded"
        assert error["detail"] == (
            "You have exceeded your permitted rate limit of 5; "
            "please try again at 2027-01-15T08:00:02."
        )
        assert run.sim.counters.rate_limited == 1
        # Errors count too, and carry the headers.
        unauthorized = await run.get("/taskPriorities", headers={"Authorization": "Bearer x"})
        assert unauthorized.status == 429
        clock.now += 1.0  # the next window
        reply = await run.get("/taskPriorities")
        assert reply.status == 200
        assert reply.headers["X-RateLimit-Remaining"] == "4"
        assert reply.headers["X-RateLimit-Reset"] == "1800000004"


async def test_retry_after_is_optional() -> None:
    clock = Clock()
    async with running(_config(clock, rate_limit=1, rate_window=60.0)) as run:
        assert (await run.get("/users")).status == 200
        limited = await run.get("/users")
        assert limited.status == 429
        assert "Retry-After" not in limited.headers


def test_detail_formats_big_limits_with_thousands_separators() -> None:
    window = FixedWindow(10_000, 3600.0, lambda: 1_483_225_200.0)  # 2016-12-31T23:00:00Z
    for _ in range(10_000):
        assert window.acquire().allowed
    verdict = window.acquire()
    assert not verdict.allowed
    assert verdict.reset == 1_483_228_800
    assert verdict.document()["errors"][0]["detail"] == (
        "You have exceeded your permitted rate limit of 10,000; "
        "please try again at 2017-01-01T00:00:00."
    )


@pytest.mark.parametrize(("limit", "window"), [(0, 1.0), (1, 0.0)])
def test_fixed_window_refuses_nonsense(limit: int, window: float) -> None:
    with pytest.raises(ValueError, match=r"needs limit >= 1 and window > 0"):
        FixedWindow(limit, window, lambda: 0.0)


async def test_counters_by_route() -> None:
    async with running(SimulatorConfig(steps=20)) as run:
        await run.get("/users")
        await run.get("/users")
        await run.get(f"/users/{run.sim.truth.ids('user')[0]}")
        await _token(run.session, run.root, _form("wrong"))
        counters = run.sim.counters
        assert counters.requests == 4
        assert counters.by_route["GET /api/v2/users"] == 2
        assert counters.by_route["GET /api/v2/users/{id}"] == 1
        assert counters.by_route["POST /oauth/token"] == 1
        assert counters.in_flight == 0
        assert counters.max_in_flight >= 1
