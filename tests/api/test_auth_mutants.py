"""Mutants of api/auth.py's token minting (lifetimes, refresh schedule, rotation, refusals) that the suite let live, each killed by a test naming its one-line bug.

The token endpoint is the simulator's, its answers crafted through `sim.auth.exchange` where
a test needs an answer the real exchange never gives; time is an injected clock."""

from __future__ import annotations

import asyncio
import os
import stat
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import orjson
import pytest

from exporter.api.auth import (
    OAuthTokens,
    RefreshTokenStore,
    StaticToken,
    header_safe,
    token_source,
)
from exporter.core.config import ExportSettings
from exporter.core.errors import AuthError, OutputError, UsageError, clean_text
from exporter.core.secrets import Secret
from exporter.simulator.auth import TokenResponse
from exporter.simulator.faults import TokenFault
from tests.api.test_oauth_mutants import tokens
from tests.helpers.durability import recorded_fsyncs
from tests.helpers.sim import Running, StartSimulator


class Clock:
    """The time `OAuthTokens` reads, moved by the test."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def grants(running: Running, **fields: Any) -> Callable[[Mapping[str, str]], TokenResponse]:
    """The real exchange, with `fields` replaced in every grant it answers."""
    real = running.sim.auth.exchange

    def exchange(form: Mapping[str, str]) -> TokenResponse:
        answer = real(form)
        if answer.status == 200:
            answer.body.update(fields)
            for name in [k for k, v in fields.items() if v is None]:
                del answer.body[name]
        return answer

    return exchange


@pytest.mark.parametrize(
    ("expires_in", "refresh_after"),
    [
        (100, 90.0),  # a tenth of a short lifetime early
        (7200, 6900.0),  # five minutes early for a real two-hour token
        (None, 6900.0),  # absent: two hours
        ("100", 6900.0),  # not a number: two hours
        (1e300, 7 * 86400.0 - 300),  # a float beyond any lifetime: a week
        (0, 0.09),  # at least 0.1 s
        (10**9, 7 * 86400.0 - 300),  # at most a week
    ],
)
async def test_the_token_is_refreshed_ahead_of_its_expiry(
    start_simulator: StartSimulator, expires_in: Any, refresh_after: float
) -> None:
    """Bugs: the refresh moment computed with `+ min(...)` or `lifetime * 10`, the lifetime's
    clamps (0.1 s, a week) or defaults (7200 s when absent or not a number)
    changed, `clock() >= refresh_at` as `>` (a token used at its refresh moment)."""
    running = await start_simulator(steps=5, mint_interval=0.0)
    running.sim.auth.exchange = grants(running, expires_in=expires_in)  # type: ignore[method-assign]
    clock = Clock()
    source = tokens(running, clock=clock, min_mint_interval=0.0)
    first = await source.token()
    clock.now += refresh_after - 1e-6
    assert await source.token() == first and source.mints == 1
    clock.now = 1000.0 + refresh_after
    assert await source.token() != first and source.mints == 2


@pytest.mark.parametrize(
    ("access", "problem"),
    [("tok en", "a space at position 4"), (12345, "it is not a string"), ("", "it is empty")],
)
async def test_an_unusable_access_token_is_refused(
    start_simulator: StartSimulator, access: Any, problem: str
) -> None:
    """Bugs: the granted access token not checked (`problem is not None` flipped) or a
    non-string taken: it would be sent in an Authorization header as is."""
    running = await start_simulator(steps=5, mint_interval=0.0)
    running.sim.auth.exchange = grants(running, access_token=access)  # type: ignore[method-assign]
    with pytest.raises(AuthError, match=f"unusable access token \\({problem}\\)"):
        await tokens(running).token()


async def test_a_rotated_refresh_token_is_saved_and_used_next(
    start_simulator: StartSimulator, tmp_path: Path
) -> None:
    """Bugs: the rotated refresh token not kept (`creds.refresh_token = ...` or the store's
    `save` deleted): the next refresh, or the next run, would send a retired token."""
    running = await start_simulator(steps=5, mint_interval=0.0)
    store = RefreshTokenStore(tmp_path / "token.json")
    clock = Clock()
    source = tokens(running, store, clock=clock, min_mint_interval=0.0)
    await source.token()
    saved = store.load()
    assert saved is not None and saved.reveal() != running.sim.cfg.refresh_token
    clock.now += 10 * 86400
    await source.token()  # refreshed with the rotated one: the original is retired
    assert source.mints == 2 and running.sim.auth.minted == 2
    newest = store.load()
    assert newest is not None and newest != saved


async def test_a_refused_stored_token_falls_back_to_the_given_one(
    start_simulator: StartSimulator, tmp_path: Path
) -> None:
    """Bugs: `_next_candidate` not moving on (`len(...) < 2` flipped, the pop deleted): a stale
    token in the store would end the run though the one given works; and with no other
    candidate, an `invalid_grant` must end it with the advice to authorize again. Bugs that
    make the refusals loop for ever (the pop deleted, `return False` as True, `and` as `or`
    at `error_id == "invalid_grant"`) fail on the 30 s guard instead of hanging the test."""
    running = await start_simulator(steps=5, mint_interval=0.0)
    store = RefreshTokenStore(tmp_path / "token.json")
    store.save(Secret("stale-refresh-token"))
    cfg = running.sim.cfg
    source = tokens(running, store)  # tries the stored token first, then the given one
    assert (await asyncio.wait_for(source.token(), 30)).startswith("sim-access-1-")
    assert running.sim.counters.by_route["POST /oauth/token"] == 2
    assert cfg.refresh_token not in (store.load() or Secret("")).reveal()

    alone = tokens(running)  # the given token was rotated away by the first source
    with pytest.raises(AuthError, match="refused the refresh token; it may have been rotated"):
        await asyncio.wait_for(alone.token(), 30)
    assert running.sim.counters.by_route["POST /oauth/token"] == 3


async def test_a_wrong_client_and_a_redirect_are_refused_at_once(
    start_simulator: StartSimulator,
) -> None:
    """Bugs: `invalid_client` given the refresh-token advice (`==` flipped), a 3xx from the
    token endpoint followed or retried (`300 <= status < 400` changed): the form carries the
    client secret and the refresh token."""
    running = await start_simulator(steps=5, mint_interval=0.0)

    def wrong_client(form: Mapping[str, str]) -> TokenResponse:
        return TokenResponse(401, {"error": "invalid_client"})

    running.sim.auth.exchange = wrong_client  # type: ignore[method-assign]
    with pytest.raises(AuthError, match="client id or secret is wrong"):
        await tokens(running).token()
    running.sim.hostile.token = [TokenFault.REDIRECT]
    running.sim.hostile.redirect_to = running.root_url
    with pytest.raises(AuthError, match=r"answered a redirect \(307\); it is never followed"):
        await tokens(running).token()
    assert running.sim.counters.by_route["POST /oauth/token"] == 2


async def test_mints_are_paced_to_the_interval_the_api_allows(
    start_simulator: StartSimulator,
) -> None:
    """Bugs: the wait before a second mint skipped (`wait > 0` flipped, or the sleep
    deleted): the endpoint, which allows one token per interval, answers 429 and the mint
    costs a request more. Counted: two mints, two POSTs."""
    running = await start_simulator(steps=5, mint_interval=0.3)
    source = tokens(running, min_mint_interval=0.3)
    first = await source.token()
    assert await source.refresh(first) != first
    assert source.mints == 2 and running.sim.auth.minted == 2
    assert running.sim.counters.by_route["POST /oauth/token"] == 2


async def test_an_empty_rotated_refresh_token_is_not_kept(
    start_simulator: StartSimulator, tmp_path: Path
) -> None:
    """Bug: `isinstance(rotated, str) or rotated`: a grant whose `refresh_token` is empty
    would replace the refresh token with nothing and save it to the token file."""
    running = await start_simulator(steps=5, mint_interval=0.0)
    running.sim.auth.exchange = grants(running, refresh_token="")  # type: ignore[method-assign]
    store = RefreshTokenStore(tmp_path / "token.json")
    source = tokens(running, store)
    await source.token()
    assert not store.path.exists()
    assert running.sim.cfg.refresh_token in source.secrets()


async def test_minted_tokens_are_secrets_at_once(start_simulator: StartSimulator) -> None:
    """Bugs: a granted access token or rotated refresh token not registered (`remember_secret`
    or `self._seen.append` deleted): an error quoting it would print it, and the leak checks
    that read `secrets()` would not look for it."""
    running = await start_simulator(steps=5, mint_interval=0.0)
    source = tokens(running)
    access = await source.token()
    rotated = running.sim.auth.refresh_token  # the one it handed out with the access token
    assert {access, rotated} <= set(source.secrets())
    assert clean_text(f"refused {access} and {rotated}") == "refused *** and ***"


async def test_a_mint_long_after_the_last_does_not_wait(start_simulator: StartSimulator) -> None:
    """Bug: the wait computed as `interval + (now - minted_at)` instead of minus: the longer
    since the last mint, the longer the next one would wait (here 100 s on the injected
    clock: the refresh would not return within the 10 s given)."""
    running = await start_simulator(steps=5, mint_interval=0.0)
    clock = Clock()
    source = tokens(running, clock=clock, min_mint_interval=60.0)
    first = await source.token()
    clock.now += 100.0
    assert await asyncio.wait_for(source.refresh(first), 10) != first
    assert source.mints == 2


async def test_the_given_token_gets_every_attempt_after_the_stored_one_is_refused(
    start_simulator: StartSimulator, tmp_path: Path
) -> None:
    """Bug: the attempt count not started again for the next candidate (`attempt = 0` as 1):
    after the stale stored token is refused, one 503 for the given token would already be
    its last attempt (two allowed here)."""
    running = await start_simulator(steps=5, mint_interval=0.0)
    store = RefreshTokenStore(tmp_path / "token.json")
    store.save(Secret("stale-refresh-token"))
    real = running.sim.auth.exchange
    calls: list[str] = []

    def busy_once_for_the_given(form: Mapping[str, str]) -> TokenResponse:
        calls.append(form["refresh_token"])
        if len(calls) == 2:  # the given token's first attempt
            return TokenResponse(503, {"errors": [{"id": "unavailable"}]})
        return real(form)

    running.sim.auth.exchange = busy_once_for_the_given  # type: ignore[method-assign]
    source = tokens(running, store, max_attempts=2)
    assert (await source.token()).startswith("sim-access-1-")
    given = running.sim.cfg.refresh_token
    assert calls == ["stale-refresh-token", given, given]


@pytest.mark.parametrize(
    ("token", "problem"),
    [
        ("!tok~", None),  # the two ends of the visible ASCII range are allowed
        ("a\nb", "a line break at position 2"),
        ("a b", "a space at position 2"),
        ("a\x00b", "a control character at position 2"),
        ("a\x7fb", "a control character at position 2"),
        ("caf\u00e9", "a non-ASCII character at position 4"),
    ],
)
def test_header_safe_names_what_is_wrong_and_where(token: str, problem: str | None) -> None:
    """Bugs: `"!" <= ch` as `<` (a token or refresh token holding `!` refused as damaged) and
    `not ch.isprintable()` as `ch.isprintable()` (a NUL or DEL named a non-ASCII character)."""
    assert header_safe(token) == problem


def test_a_static_token_is_a_secret_at_once() -> None:
    """Bug: `StaticToken` not registering its token (`remember_secret` deleted): an API error
    echoing the token would print it."""
    assert clean_text("echoed static-token-17") == "echoed static-token-17"
    StaticToken(Secret("static-token-17"))
    assert clean_text("echoed static-token-17") == "echoed ***"


@pytest.mark.parametrize("stored", [123, ["a"], "", None])
def test_a_token_file_without_a_usable_refresh_token_holds_none(
    tmp_path: Path, stored: Any
) -> None:
    """Bug: `not isinstance(value, str) and not value`: a number or a list as the stored
    refresh token would be taken (and crash `header_safe`) instead of counted as none."""
    path = tmp_path / "token.json"
    path.write_bytes(orjson.dumps({"refresh_token": stored}))
    assert RefreshTokenStore(path).load() is None


def test_a_loaded_refresh_token_is_a_secret_at_once(tmp_path: Path) -> None:
    """Bug: `remember_secret(value)` deleted from `load`: the stored refresh token, echoed by
    the token endpoint in a refusal, would be printed."""
    store = RefreshTokenStore(tmp_path / "token.json")
    store.save(Secret("stored-refresh-5"))
    assert clean_text("echoed stored-refresh-5") == "echoed stored-refresh-5"
    assert store.load() == Secret("stored-refresh-5")
    assert clean_text("echoed stored-refresh-5") == "echoed ***"


def test_the_token_file_is_saved_0600_in_a_new_folder_0700(tmp_path: Path) -> None:
    """Bugs: the folders not made (`mkdir` deleted, `parents=False`), its own made 0701;
    the file left with the mode of a leftover temporary file (`fchmod` deleted, or 0o601).
    A crash can leave `token.json.tmp` behind, 0644 here: `O_CREAT` keeps an existing file's
    mode, so only the `fchmod` makes the token file private."""
    path = tmp_path / "config" / "exporter" / "token.json"
    store = RefreshTokenStore(path)
    store.save(Secret("first-refresh"))
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    leftover = path.with_name("token.json.tmp")
    leftover.write_text("crashed")
    leftover.chmod(0o644)
    store.save(Secret("second-refresh"))
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert store.load() == Secret("second-refresh") and not leftover.exists()


def test_a_saved_token_file_and_its_name_are_made_durable(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The minted refresh token is the only one that works: after a power cut the file must
    hold it under its name. Bugs: `os.fsync(fd)` left out of `save` (the bytes), or the folder's
    `fsync_directory` after the rename (the name: a power cut could bring back the old file,
    whose token is dead). fsyncs recorded (each still syncs) by what they synced."""
    path = tmp_path / "token.json"
    store = RefreshTokenStore(path)
    store.save(Secret("first-refresh"))
    synced = recorded_fsyncs(monkeypatch)
    store.save(Secret("second-refresh"))
    saved = path.stat()
    assert synced == [
        ("file", saved.st_ino, saved.st_size),  # the bytes, before the rename
        ("dir", tmp_path.stat().st_ino, tmp_path.stat().st_size),  # then the name
    ]


@pytest.mark.skipif(not Path("/proc/self/fd").is_dir(), reason="counts /proc/self/fd")
def test_saving_the_token_file_keeps_no_descriptor_open(tmp_path: Path) -> None:
    """Bug: `os.close(fd)` deleted from `save`: every rotation (one an access token's
    lifetime, for days of a long run) would leak a descriptor."""
    store = RefreshTokenStore(tmp_path / "token.json")
    store.save(Secret("refresh-0"))
    before = len(os.listdir("/proc/self/fd"))
    for n in range(5):
        store.save(Secret(f"refresh-{n + 1}"))
    assert len(os.listdir("/proc/self/fd")) == before


def test_a_failed_save_leaves_no_temporary_file(tmp_path: Path) -> None:
    """Bug: `tmp.unlink()` deleted from `save`'s failure path: a refresh token would stay on
    disk in `token.json.tmp` after the save that was to hold it failed. Here the token file's
    name is taken by a folder, so the final rename fails."""
    path = tmp_path / "token.json"
    (path / "inside").mkdir(parents=True)
    with pytest.raises(OutputError, match="cannot save the rotated refresh token"):
        RefreshTokenStore(path).save(Secret("refresh-9"))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["token.json"]


async def test_the_stored_refresh_token_is_among_the_secrets(
    start_simulator: StartSimulator, tmp_path: Path
) -> None:
    """Bug: `self._seen.append(newest.reveal())` deleted: the stored refresh token would be
    missing from `secrets()`, which the leak checks read."""
    running = await start_simulator(steps=5, mint_interval=0.0)
    store = RefreshTokenStore(tmp_path / "token.json")
    store.save(Secret("stored-refresh-7"))
    assert "stored-refresh-7" in tokens(running, store).secrets()


async def test_requests_refused_the_same_token_share_one_refresh(
    start_simulator: StartSimulator,
) -> None:
    """Bug: `self._access is not None` flipped in `refresh`: a second request reporting the
    token already replaced would mint again (a mint a minute is all the API allows)."""
    running = await start_simulator(steps=5, mint_interval=0.0)
    source = tokens(running)
    first = await source.token()
    second = await source.refresh(first)
    assert second != first
    assert await source.refresh(first) == second
    assert source.mints == 2 and running.sim.auth.minted == 2


def oauth_settings(tmp_path: Path, **fields: Any) -> ExportSettings:
    given: dict[str, Any] = {
        "client_id": "cid",
        "client_secret": Secret("csecret"),
        "redirect_uri": "https://app.example/cb",
        "token_file": tmp_path / "token.json",
    }
    return ExportSettings(out=tmp_path / "out", **{**given, **fields})


def test_token_source_picks_the_credentials_given(tmp_path: Path) -> None:
    """Bugs in `token_source`: the OAuth completeness check inverted (`not` dropped), the
    given refresh token needed *and* a stored one (`or` as `and`), `given is None` flipped,
    `settings.token is None` flipped (a static token refused as no credentials)."""
    assert isinstance(token_source(ExportSettings(out=tmp_path, token=Secret("s1"))), StaticToken)
    with pytest.raises(UsageError, match="no credentials"):
        token_source(ExportSettings(out=tmp_path))
    with pytest.raises(UsageError, match="needs a client id, a client secret"):
        token_source(oauth_settings(tmp_path, refresh_token=Secret("r1"), client_secret=None))
    with pytest.raises(UsageError, match="holds none yet"):
        token_source(oauth_settings(tmp_path))
    given = token_source(oauth_settings(tmp_path, refresh_token=Secret("given-refresh")))
    assert isinstance(given, OAuthTokens) and "given-refresh" in given.secrets()
    RefreshTokenStore(tmp_path / "token.json").save(Secret("stored-refresh"))
    stored = token_source(oauth_settings(tmp_path))
    assert isinstance(stored, OAuthTokens) and "stored-refresh" in stored.secrets()
