"""The transport against hostile answers: redirects, echoed secrets, trickles, gzip bombs, token-endpoint faults."""

from __future__ import annotations

import asyncio
import time
import tracemalloc
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from exporter.api.auth import OAuthCredentials, OAuthTokens, StaticToken
from exporter.api.client import ApiClient, ClientSettings
from exporter.core.errors import ApiError, AuthError, ExitCode
from exporter.core.secrets import Secret
from exporter.simulator.faults import TokenFault
from tests.helpers.sim import TOKEN, Running, StartSimulator

FAST = {"backoff_base": 0.001, "backoff_max": 0.01}
SMALL_PAGE = "/sequenceSteps?page[size]=5"


@asynccontextmanager
async def client_for(running: Running, **settings: Any) -> AsyncIterator[ApiClient]:
    config = ClientSettings(base_url=running.base_url, **{**FAST, **settings})
    async with ApiClient(config, StaticToken(Secret(TOKEN))) as client:
        yield client


def assert_one_clean_line(text: str, *secrets: str) -> None:
    assert text.isprintable(), repr(text)  # no CR, LF, ESC or other control character
    assert len(text) < 1200, len(text)
    for secret in secrets:
        assert secret not in text, text


# -- redirects on API GETs ---------------------------------------------------------------------


async def test_a_redirect_to_another_origin_is_refused_and_the_other_host_asked_nothing(
    start_simulator: StartSimulator,
) -> None:
    """Bug caught: aiohttp's default allow_redirects=True follows the 307 (without the token)
    and the run reports a misleading 401 from the other host."""
    running = await start_simulator(steps=20)
    other = await start_simulator(steps=20)
    faults = running.sim.hostile
    faults.redirect_to = other.root_url
    faults.redirect_cross = 1
    async with client_for(running) as client:
        with pytest.raises(ApiError, match="redirected to another origin") as caught:
            await client.get_document(running.base_url + SMALL_PAGE)
    assert not isinstance(caught.value, AuthError)
    assert caught.value.status == 307 and other.root_url.split("//")[1] in str(caught.value)
    assert other.sim.counters.requests == 0


async def test_same_origin_redirects_are_followed_with_the_token_and_bounded(
    start_simulator: StartSimulator,
) -> None:
    running = await start_simulator(steps=20)
    faults = running.sim.hostile
    faults.redirect_same = 3
    async with client_for(running) as client:
        document = await client.get_document(running.base_url + SMALL_PAGE)
        assert len(document["data"]) == 5 and faults.served["redirect_same"] == 3
        faults.redirect_same = 1000  # a redirect loop
        with pytest.raises(ApiError, match="redirects in a row") as caught:
            await client.get_document(running.base_url + SMALL_PAGE)
    assert faults.served["redirect_same"] == 3 + 6  # five hops followed, the sixth refused
    assert caught.value.exit_code == ExitCode.FAILED


# -- server text that echoes secrets or forges lines -------------------------------------------


@pytest.mark.parametrize("status", [400, 500])
async def test_an_error_document_echoing_the_authorization_header_is_scrubbed(
    start_simulator: StartSimulator, status: int
) -> None:
    """Bug caught: the error id (and title) quoted verbatim, token and line breaks included."""
    running = await start_simulator(steps=20)
    faults = running.sim.hostile
    faults.echo_auth = 100
    faults.echo_auth_status = status
    async with client_for(running, max_attempts=2) as client:
        with pytest.raises(ApiError) as caught:
            await client.get_document(running.base_url + SMALL_PAGE)
    assert faults.served["echo_auth"] == (1 if status == 400 else 2)
    assert_one_clean_line(str(caught.value), TOKEN)
    assert caught.value.error_id is not None and TOKEN not in caught.value.error_id
    assert "***" in str(caught.value)


# -- a trickling answer and the overall deadline -----------------------------------------------


@pytest.mark.slow
async def test_a_trickling_answer_hits_the_request_deadline(
    start_simulator: StartSimulator,
) -> None:
    """Bug caught: only the read timeout (between bytes) bounds a request, so a few bytes a
    second keep it alive forever."""
    running = await start_simulator(steps=20)
    faults = running.sim.hostile
    faults.trickle = 100
    faults.trickle_bytes_per_s = 50
    started = time.monotonic()
    async with client_for(running, request_deadline=0.8, max_attempts=2, read_timeout=5) as client:
        with pytest.raises(ApiError, match="deadline") as caught:
            await asyncio.wait_for(client.get_document(running.base_url + SMALL_PAGE), 30)
    assert faults.served["trickle"] == 2
    assert time.monotonic() - started < 10
    assert "0.8 s" in str(caught.value)


# -- a gzip bomb -------------------------------------------------------------------------------


@pytest.mark.slow
async def test_a_gzip_bomb_is_refused_at_the_cap_without_inflating_it(
    start_simulator: StartSimulator,
) -> None:
    """Bug caught: the whole body inflated in memory (256 MiB here) before anything looks at it."""
    running = await start_simulator(steps=20)
    faults = running.sim.hostile
    faults.gzip_bomb = 100
    faults.gzip_bomb_bytes = 256 << 20
    cap = 4 << 20
    async with client_for(running, max_response_bytes=cap, max_attempts=2) as client:
        tracemalloc.start()
        try:
            with pytest.raises(ApiError, match="larger than") as caught:
                await client.get_document(running.base_url + SMALL_PAGE)
            _current, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
    assert peak < 3 * cap, peak
    assert faults.served["gzip_bomb"] == 2
    assert "4 MiB" in str(caught.value)
    faults.gzip_bomb = 0
    async with client_for(running, max_response_bytes=cap) as client:
        assert len((await client.get_document(running.base_url + SMALL_PAGE))["data"]) == 5


async def test_a_declared_length_over_the_cap_is_refused_before_reading(
    start_simulator: StartSimulator,
) -> None:
    running = await start_simulator(steps=20)
    async with client_for(running, max_response_bytes=1000, max_attempts=1) as client:
        with pytest.raises(ApiError, match="larger than the 1,000-byte cap"):
            await client.get_document(running.base_url + "/sequenceSteps?page[size]=50")


@asynccontextmanager
async def chunked_server(body: bytes) -> AsyncIterator[str]:
    """A loopback server answering every GET with `body` in three chunks, no Content-Length
    (chunked transfer), as a JSON:API document; yields its API base URL."""

    async def handle(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "application/vnd.api+json"})
        await response.prepare(request)
        third = len(body) // 3
        for piece in (body[:third], body[third : 2 * third], body[2 * third :]):
            await response.write(piece)
            await asyncio.sleep(0.02)  # each piece on its own, as a slow link sends them
        await response.write_eof()
        return response

    app = web.Application()
    app.router.add_get("/{tail:.*}", handle)
    runner = web.AppRunner(app, access_log=None, handle_signals=False)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    try:
        yield f"http://127.0.0.1:{runner.addresses[0][1]}/api/v2"
    finally:
        await runner.cleanup()


async def test_a_chunked_body_is_read_up_to_the_cap_and_refused_one_byte_past_it() -> None:
    """Without a Content-Length nothing is refused up front: the bytes are counted as they
    come. Bugs: the count left out or compared with `>=` (a body of exactly the cap refused),
    the chunks joined out of order or one dropped."""
    cap = 200_000
    start, end = b'{"data": [], "meta": {"note": "', b'"}}'
    third = (cap - len(start) - len(end)) // 3
    note = b"a" * third + b"b" * third + b"c" * (cap - len(start) - len(end) - 2 * third)
    exact = start + note + end
    assert len(exact) == cap
    for body, refused in ((exact, False), (exact + b" ", True)):
        async with chunked_server(body) as base_url:
            config = ClientSettings(
                base_url=base_url, max_response_bytes=cap, max_attempts=1, **FAST
            )
            async with ApiClient(config, StaticToken(Secret(TOKEN))) as client:
                if refused:
                    with pytest.raises(ApiError, match="larger than the 200,000-byte cap"):
                        await client.get_document(base_url + "/sequenceSteps")
                else:
                    got = await client.get_document(base_url + "/sequenceSteps")
                    assert got == {"data": [], "meta": {"note": note.decode()}}


# -- the token endpoint ------------------------------------------------------------------------


def oauth_for(running: Running, **kwargs: Any) -> OAuthTokens:
    cfg = running.sim.cfg
    credentials = OAuthCredentials(
        client_id=cfg.client_id,
        client_secret=Secret(cfg.client_secret),
        refresh_token=Secret(cfg.refresh_token),
        redirect_uri=cfg.redirect_uri,
        token_url=running.root_url + "/oauth/token",
    )
    return OAuthTokens(credentials, None, aiohttp.ClientSession, **{"backoff_base": 0.01, **kwargs})


async def test_token_endpoint_5xx_are_retried(start_simulator: StartSimulator) -> None:
    """Bug caught: the token endpoint's retry on 5xx removed (the first 503 ends the run)."""
    running = await start_simulator(steps=20, static_token=None)
    running.sim.hostile.token = [TokenFault.UNAVAILABLE, TokenFault.SERVER_ERROR]
    tokens = oauth_for(running)
    assert (await tokens.token()).startswith("sim-access-1-")
    assert running.sim.counters.by_route["POST /oauth/token"] == 3


@pytest.mark.slow
async def test_token_endpoint_429_waits_for_retry_after(start_simulator: StartSimulator) -> None:
    """Bug caught: the 429 retry removed, or Retry-After ignored (asked again at once)."""
    running = await start_simulator(steps=20, static_token=None)
    faults = running.sim.hostile
    faults.token = [TokenFault.RATE_LIMITED]
    faults.token_retry_after = 1.0
    tokens = oauth_for(running, min_mint_interval=0.0)
    started = time.monotonic()
    assert await tokens.token()
    assert time.monotonic() - started >= 1.0
    assert running.sim.counters.by_route["POST /oauth/token"] == 2


async def test_token_endpoint_failing_every_time_gives_up_with_one_clean_line(
    start_simulator: StartSimulator,
) -> None:
    running = await start_simulator(steps=20, static_token=None)
    running.sim.hostile.token = [TokenFault.UNAVAILABLE] * 10
    with pytest.raises(ApiError, match="token endpoint kept failing") as caught:
        await oauth_for(running, max_attempts=3).token()
    assert running.sim.counters.by_route["POST /oauth/token"] == 3
    assert_one_clean_line(str(caught.value))


async def test_token_endpoint_redirect_is_never_followed(start_simulator: StartSimulator) -> None:
    """Bug caught: aiohttp's default allow_redirects=True re-posts client_secret and the
    refresh token to another host, and uses the token it hands back."""
    running = await start_simulator(steps=20, static_token=None)
    other = await start_simulator(steps=20, static_token=None)
    faults = running.sim.hostile
    faults.redirect_to = other.root_url
    faults.token = [TokenFault.REDIRECT]
    with pytest.raises(AuthError, match="redirect") as caught:
        await oauth_for(running).token()
    assert other.sim.counters.requests == 0
    assert running.sim.counters.by_route["POST /oauth/token"] == 1
    assert "/oauth/token" in str(caught.value)
    assert_one_clean_line(
        str(caught.value), running.sim.cfg.client_secret, running.sim.cfg.refresh_token
    )


async def test_token_endpoint_error_echoing_the_secrets_is_scrubbed(
    start_simulator: StartSimulator,
) -> None:
    """Bug caught: the OAuth `error` (and description) quoted unscrubbed: client secret and
    refresh token in the message, and its line breaks forging log lines."""
    running = await start_simulator(steps=20, static_token=None)
    running.sim.hostile.token = [TokenFault.ECHO_SECRETS]
    with pytest.raises(AuthError) as caught:
        await oauth_for(running).token()
    cfg = running.sim.cfg
    assert_one_clean_line(str(caught.value), cfg.client_secret, cfg.refresh_token)
    assert caught.value.error_id is not None and cfg.client_secret not in caught.value.error_id
    assert "invalid_request" in str(caught.value)


@pytest.mark.slow
async def test_a_slow_token_endpoint_is_bounded_by_its_deadline(
    start_simulator: StartSimulator,
) -> None:
    """Bug caught: no deadline on the token request (a hanging endpoint hangs the run)."""
    running = await start_simulator(steps=20, static_token=None)
    faults = running.sim.hostile
    faults.token_slow_s = 8  # longer than the bound asserted below; the server waits it out
    faults.token = [TokenFault.SLOW]
    started = time.monotonic()
    tokens = oauth_for(running, request_deadline=0.5, min_mint_interval=0.0)
    assert (await asyncio.wait_for(tokens.token(), 20)).startswith("sim-access-1-")
    assert time.monotonic() - started < 5
    assert running.sim.counters.by_route["POST /oauth/token"] == 2
