"""The OAuth token endpoint's passing faults retried (503, 429 with Retry-After) and its echoed secrets never shown."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping
from typing import Any

import aiohttp
import orjson
import pytest

from exporter.api import auth
from exporter.api.auth import OAuthCredentials, OAuthTokens, RefreshTokenStore
from exporter.core import errors
from exporter.core.errors import ApiError, AuthError
from exporter.core.secrets import Secret
from exporter.simulator.auth import TokenResponse
from exporter.simulator.faults import TokenFault
from tests.helpers.sim import Running, StartSimulator


def tokens(running: Running, store: RefreshTokenStore | None = None, **options: Any) -> OAuthTokens:
    """The OAuth source a run builds for `running` (with its token file `store`), fast backoffs."""
    cfg = running.sim.cfg
    credentials = OAuthCredentials(
        client_id=cfg.client_id,
        client_secret=Secret(cfg.client_secret),
        refresh_token=Secret(cfg.refresh_token),
        redirect_uri=cfg.redirect_uri,
        token_url=running.root_url + "/oauth/token",
    )
    settings: dict[str, Any] = {"backoff_base": 0.01, "min_mint_interval": 0.01, **options}
    return OAuthTokens(credentials, store, aiohttp.ClientSession, **settings)


@pytest.fixture
def fresh_secrets(monkeypatch: pytest.MonkeyPatch) -> set[str]:
    """The process-wide secret registry emptied for this test (other tests filled it)."""
    registry: set[str] = set()
    monkeypatch.setattr(errors, "_KNOWN_SECRETS", registry)
    return registry


async def test_a_503_then_a_token(start_simulator: StartSimulator) -> None:
    """Bug caught: the retry on 5xx removed from `OAuthTokens._mint` (`passing` false for 5xx):
    the first 503 would end the run."""
    running = await start_simulator(steps=20, mint_interval=0.0)
    running.sim.hostile.token = [TokenFault.UNAVAILABLE, TokenFault.SERVER_ERROR]
    source = tokens(running)
    assert (await source.token()).startswith("sim-access-1-")
    assert running.sim.hostile.served == {"token 503": 1, "token 500": 1}
    assert running.sim.auth.minted == 1 and source.mints == 1
    assert running.sim.counters.by_route["POST /oauth/token"] == 3


async def test_a_429_is_waited_out_for_its_retry_after(start_simulator: StartSimulator) -> None:
    """Bugs caught: the retry on 429 removed, or its Retry-After ignored (the next attempt sent
    after the 0.01 s backoff instead of the 0.4 s the endpoint asked for)."""
    running = await start_simulator(steps=20, mint_interval=0.0)
    running.sim.hostile.token = [TokenFault.RATE_LIMITED]
    running.sim.hostile.token_retry_after = 0.4
    source = tokens(running)
    started = time.monotonic()
    assert (await source.token()).startswith("sim-access-1-")
    assert time.monotonic() - started >= 0.4
    assert running.sim.hostile.served == {"token 429": 1}
    assert running.sim.counters.by_route["POST /oauth/token"] == 2


async def test_retries_are_bounded(start_simulator: StartSimulator) -> None:
    """Bug caught: `attempt < self._max_attempts` dropped or off by one: exactly 3 sends."""
    running = await start_simulator(steps=20, mint_interval=0.0)
    running.sim.hostile.token = [TokenFault.UNAVAILABLE] * 5
    with pytest.raises(ApiError, match=r"kept failing \(3 attempts") as caught:
        await tokens(running, max_attempts=3).token()
    assert not isinstance(caught.value, AuthError)
    assert caught.value.status == 503
    assert running.sim.counters.by_route["POST /oauth/token"] == 3
    assert running.sim.auth.minted == 0


async def test_an_echoed_secret_in_a_refusal_is_never_shown(
    start_simulator: StartSimulator, fresh_secrets: set[str]
) -> None:
    """Bug caught: the client secret and refresh token not registered (`remember_secret`) when
    `OAuthTokens` is built: the 400's `error` quoting them becomes the error id, shown as is."""
    running = await start_simulator(steps=20, mint_interval=0.0)
    running.sim.hostile.token = [TokenFault.ECHO_SECRETS]
    with pytest.raises(AuthError, match="refused the refresh token") as caught:
        await tokens(running).token()
    shown = f"{caught.value} {caught.value.error_id} {caught.value.args!r}"
    assert "invalid_request" in shown  # the echoed text is there, its secrets are not
    for secret in (running.sim.cfg.client_secret, running.sim.cfg.refresh_token):
        assert secret not in shown
    assert {running.sim.cfg.client_secret, running.sim.cfg.refresh_token} <= fresh_secrets


async def test_a_5xx_echoing_secrets_is_scrubbed_by_the_source_itself(
    start_simulator: StartSimulator, fresh_secrets: set[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Bug caught: `scrub(detail, self._seen)` in `_mint`'s "kept failing" message replaced by
    `detail`. The process-wide registry is switched off here (`remember_secret` a no-op), so
    the source's own scrubbing is the one layer left."""
    monkeypatch.setattr(auth, "remember_secret", lambda secret: None)
    running = await start_simulator(steps=20, mint_interval=0.0)
    cfg = running.sim.cfg

    def echo(form: Mapping[str, str]) -> TokenResponse:
        quoted = f"{form['client_secret']} and {form['refresh_token']}"
        return TokenResponse(503, {"error": "busy", "error_description": f"down: {quoted}"})

    running.sim.auth.exchange = echo  # type: ignore[method-assign]
    with pytest.raises(ApiError, match=r"the last: down: \*\*\* and \*\*\*") as caught:
        await tokens(running, max_attempts=2).token()
    assert cfg.client_secret not in str(caught.value)
    assert cfg.refresh_token not in str(caught.value)
    assert fresh_secrets == set()


class RecordedSleeps:
    """`asyncio` as `auth` sees it, whose `sleep` records the seconds asked and returns at once:
    the waits are asserted as the values the code computes, never timed."""

    def __init__(self) -> None:
        self.seconds: list[float] = []

    async def sleep(self, seconds: float) -> None:
        self.seconds.append(seconds)

    def __getattr__(self, name: str) -> Any:
        return getattr(asyncio, name)


@pytest.fixture
def slept(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    """The seconds `auth` asks to sleep, in order (nothing is slept)."""
    recorded = RecordedSleeps()
    monkeypatch.setattr(auth, "asyncio", recorded)
    return recorded.seconds


async def test_the_backoff_doubles_and_a_429_waits_at_least_the_mint_interval(
    start_simulator: StartSimulator, slept: list[float]
) -> None:
    """Bugs: the backoff `backoff_base * 2 ** (attempt - 1)` with another base or exponent
    (`3 **`, `attempt + 1`, `attempt - 2`); a 429 not waiting at least the mint interval
    (`status == 429` flipped or 430: the endpoint that paces mints would refuse again); the
    default of four attempts changed. The 429 says `Retry-After: 0`, so the interval (60 s)
    is the wait; the 503s send none, so the backoff is."""
    running = await start_simulator(steps=20, mint_interval=0.0)
    running.sim.hostile.token = [TokenFault.UNAVAILABLE, TokenFault.RATE_LIMITED]
    running.sim.hostile.token += [TokenFault.UNAVAILABLE] * 3
    running.sim.hostile.token_retry_after = 0.0
    source = tokens(running, backoff_base=1.0, min_mint_interval=60.0)
    with pytest.raises(ApiError, match=r"kept failing \(4 attempts"):
        await source.token()
    assert slept == [1.0, 60.0, 4.0]
    assert running.sim.counters.by_route["POST /oauth/token"] == 4


async def test_a_300_answer_is_refused_as_a_redirect(start_simulator: StartSimulator) -> None:
    """Bugs: `300 <= status < 400` as `300 < status` or `301 <= status`: a 300 (Multiple
    Choices, which may carry a Location) would be refused as a wrong refresh token, sending
    the user to authorize the app again instead of checking the token URL."""
    running = await start_simulator(steps=20, mint_interval=0.0)

    def multiple_choices(form: Mapping[str, str]) -> TokenResponse:
        return TokenResponse(300, {"error": "multiple_choices"})

    running.sim.auth.exchange = multiple_choices  # type: ignore[method-assign]
    with pytest.raises(AuthError, match=r"answered a redirect \(300\); it is never followed"):
        await tokens(running).token()
    assert running.sim.counters.by_route["POST /oauth/token"] == 1


def padded(grant: dict[str, Any], size: int) -> dict[str, Any]:
    """`grant` with a `padding` field that makes its JSON exactly `size` bytes."""
    bare = len(orjson.dumps({**grant, "padding": ""}))
    body = {**grant, "padding": "p" * (size - bare)}
    assert len(orjson.dumps(body)) == size
    return body


@pytest.mark.parametrize(
    ("size", "posts"), [(auth.MAX_TOKEN_ANSWER, 1), (auth.MAX_TOKEN_ANSWER + 1, 2)]
)
async def test_an_answer_of_exactly_the_bound_is_read_and_one_byte_more_is_not(
    start_simulator: StartSimulator, size: int, posts: int
) -> None:
    """An answer over the bound is not read on (a token endpoint answering without end
    would be read into memory): it is dropped as a passing fault and the request retried.
    Bugs: `len(body) > MAX_TOKEN_ANSWER` as `>=` (a grant of exactly the bound dropped and
    the mint retried); the bound's check left out."""
    running = await start_simulator(steps=20, mint_interval=0.0)
    real = running.sim.auth.exchange
    answered: list[int] = []

    def big_first(form: Mapping[str, str]) -> TokenResponse:
        answered.append(1)
        if len(answered) == 1:
            return TokenResponse(200, padded({"access_token": "the-big-grant"}, size))
        return real(form)

    running.sim.auth.exchange = big_first  # type: ignore[method-assign]
    token = await tokens(running).token()
    if posts == 1:
        assert token == "the-big-grant"
    else:  # dropped, and the next answer is the real exchange's grant
        assert token.startswith("sim-access-1-")
    assert running.sim.counters.by_route["POST /oauth/token"] == posts


async def test_a_short_lived_token_is_paced_by_half_its_lifetime(
    start_simulator: StartSimulator, slept: list[float]
) -> None:
    """Bug: the mint interval for tokens living under two intervals computed as a third of
    their lifetime (`lifetime / 3`), not half: mints would come sooner than the API allows."""
    running = await start_simulator(steps=5, mint_interval=0.0, token_ttl=10.0)
    now = [1000.0]
    source = tokens(running, clock=lambda: now[0], min_mint_interval=60.0)
    first = await source.token()
    now[0] += 1.0
    assert await source.refresh(first) != first
    assert slept == [4.0]  # half of 10 s, less the second gone since the first mint
