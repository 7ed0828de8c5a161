"""The OAuth token endpoint's passing faults retried (503, 429 with Retry-After) and its echoed secrets never shown."""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any

import aiohttp
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
