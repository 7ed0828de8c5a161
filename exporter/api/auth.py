"""Access tokens: a static bearer token, or OAuth refresh-token rotation with the newest refresh token persisted.

A `TokenSource` hands the client the current access token and, when the API says 401, a
fresh one. Tokens are held in `Secret` wrappers whose repr never shows them, so a token that
ends up in an f-string, a log record or a traceback prints as `Secret('***')`. Every secret a
source holds is also registered with `errors.remember_secret`, so no error message quoting the
API's text can show it.

A token goes into an HTTP header, so it must be visible ASCII: one with a CR, LF, space or other
control character (from --token, the token file or the token endpoint's answer) is refused with
one line (exit 2 for the user's input, 3 for the endpoint's answer), never sent.

The token endpoint is never followed through a redirect: the form carries the client secret
and the refresh token, and a 3xx is a fatal `AuthError` naming the token URL. Each token request
has an overall deadline (`request_deadline`) and its answer is read up to `MAX_TOKEN_ANSWER`.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import aiohttp
import orjson

from exporter.api.ratelimit import retry_after_delay
from exporter.core.config import ExportSettings, default_token_file, token_url_for
from exporter.core.errors import (
    ApiError,
    AuthError,
    OutputError,
    UsageError,
    error_details,
    redact_url,
    remember_secret,
    scrub,
)
from exporter.core.files import fsync_directory
from exporter.core.secrets import Secret

# The longest token endpoint answer read (a grant is a few hundred bytes).
MAX_TOKEN_ANSWER = 1 << 20


def header_safe(token: str) -> str | None:
    """None when `token` can go into an Authorization header, else what is wrong with it."""
    for position, ch in enumerate(token):
        if not "!" <= ch <= "~":
            kind = (
                "a line break"
                if ch in "\r\n"
                else "a space"
                if ch.isspace()
                else ("a control character" if not ch.isprintable() else "a non-ASCII character")
            )
            return f"{kind} at position {position + 1}"
    return None if token else "it is empty"


class TokenSource(Protocol):
    async def token(self) -> str:
        """The access token to send now (refreshed first if it is about to expire)."""

    async def refresh(self, rejected: str) -> str:
        """A new access token after the API rejected `rejected` with 401; AuthError if none."""

    def secrets(self) -> list[str]:
        """Every secret this source knows, so output can be checked for leaks."""


class StaticToken:
    """A bearer token given on the command line or in OUTREACH_TOKEN (or a fleet file's
    token_env/token_file: `named`, `remedy` say so); it cannot be refreshed."""

    def __init__(
        self,
        token: Secret,
        named: str = "--token or OUTREACH_TOKEN",
        remedy: str = "Pass a valid one with --token or OUTREACH_TOKEN, or use OAuth "
        "(--client-id, --client-secret, --refresh-token) so the exporter can refresh it",
    ) -> None:
        remember_secret(token.reveal())
        problem = header_safe(token.reveal())
        if problem is not None:
            raise UsageError(
                f"the access token ({named}) cannot be sent: {problem}; "
                "pass the token alone, without quotes, spaces or line breaks"
            )
        self._token = token
        self._remedy = remedy

    async def token(self) -> str:
        return self._token.reveal()

    async def refresh(self, rejected: str) -> str:
        raise AuthError(
            f"the API refused the access token (401); it is wrong or expired. {self._remedy}"
        )

    def secrets(self) -> list[str]:
        return [self._token.reveal()]


@dataclass
class OAuthCredentials:
    client_id: str
    client_secret: Secret
    refresh_token: Secret
    redirect_uri: str
    token_url: str


class RefreshTokenStore:
    """The newest refresh token on disk (mode 0600), so the next run starts from it."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def load(self) -> Secret | None:
        from exporter.core.files import MAX_SECRET_BYTES, read_small_file

        try:
            text = read_small_file(self.path, "the token file", MAX_SECRET_BYTES).strip()
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise UsageError(f"cannot read the token file {self.path}: {exc.strerror}") from None
        if not text:
            return None
        try:
            data = orjson.loads(text)
        except orjson.JSONDecodeError:
            raise UsageError(
                f"the token file {self.path} is not valid JSON; remove it and pass --refresh-token"
            ) from None
        value = data.get("refresh_token") if isinstance(data, dict) else None
        if not isinstance(value, str) or not value:
            return None
        remember_secret(value)
        if header_safe(value) is not None:
            raise UsageError(
                f"the token file {self.path} holds a damaged refresh token ({header_safe(value)}); "
                "remove the file and pass --refresh-token"
            )
        return Secret(value)

    def save(self, token: Secret) -> None:
        """Atomically replace the file; it is created 0600 and never readable by others."""
        tmp = self.path.with_name(self.path.name + ".tmp")
        payload = orjson.dumps({"refresh_token": token.reveal(), "saved_at": int(time.time())})
        try:
            self.path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            try:
                os.fchmod(fd, 0o600)
                os.write(fd, payload)
                os.fsync(fd)
            finally:
                os.close(fd)
            os.replace(tmp, self.path)
            # The old refresh token no longer works once the new one is minted: the new name
            # must survive a power cut, or the next run starts from a dead token.
            fsync_directory(self.path.parent)
        except OSError as exc:
            with contextlib.suppress(OSError):
                tmp.unlink()
            raise OutputError(
                f"cannot save the rotated refresh token to {self.path}: {exc.strerror}; "
                "the previous one no longer works, so fix the path before the next run"
            ) from None


class OAuthTokens:
    """Refresh-token grant with rotation: refresh ahead of expiry and once on a 401.

    - The access token is refreshed a tenth of its lifetime (at most `refresh_margin`) before
      it expires, and once when the API answers 401 to it (requests that saw the same token
      rejected share that one refresh).
    - Each refresh returns a new refresh token and retires the old one: it is saved to the
      store before anything else happens, so the next run starts from the newest.
    - Never more often than the API allows (`min_mint_interval`, one a minute at Outreach; for
      tokens that live less than two intervals, half their lifetime); a 429 or 5xx from the token
      endpoint is waited out and retried a few times.
    - The stored refresh token is tried first; if the endpoint refuses it and the one given on
      the command line differs (the app was authorized again), that one is tried next.
    """

    def __init__(
        self,
        credentials: OAuthCredentials,
        store: RefreshTokenStore | None,
        session_factory: Callable[[], aiohttp.ClientSession],
        *,
        refresh_margin: float = 300.0,
        min_mint_interval: float = 60.0,
        clock: Callable[[], float] = time.monotonic,
        max_attempts: int = 4,
        backoff_base: float = 1.0,
        request_deadline: float = 60.0,
    ) -> None:
        self._credentials = credentials
        self._store = store
        self._session_factory = session_factory
        self._margin = refresh_margin
        self._min_interval = min_mint_interval
        self._clock = clock
        self._max_attempts = max_attempts
        self._backoff_base = backoff_base
        self._deadline = request_deadline
        self._access: Secret | None = None
        self._lifetime: float | None = None
        self._refresh_at = 0.0
        self._minted_at: float | None = None
        self._lock = asyncio.Lock()
        self.mints = 0
        self._seen: list[str] = [
            credentials.client_secret.reveal(),
            credentials.refresh_token.reveal(),
        ]
        # Refresh tokens to try, newest first: the stored one, then the one given.
        self._candidates: list[Secret] = [credentials.refresh_token]
        for secret in self._seen:
            remember_secret(secret)
        if store is not None:
            newest = store.load()
            if newest is not None:
                self._seen.append(newest.reveal())
                if newest != credentials.refresh_token:
                    self._candidates.insert(0, newest)
                    self._credentials.refresh_token = newest

    def secrets(self) -> list[str]:
        return list(self._seen)

    async def token(self) -> str:
        async with self._lock:
            if self._access is None or self._clock() >= self._refresh_at:
                await self._mint()
            assert self._access is not None
            return self._access.reveal()

    async def refresh(self, rejected: str) -> str:
        async with self._lock:
            if self._access is not None and self._access.reveal() != rejected:
                return self._access.reveal()  # another request already refreshed it
            # A token refused again right after this refresh is the client's to report (it
            # refreshes once per request); minting itself is paced by `_interval`.
            await self._mint()
            assert self._access is not None
            return self._access.reveal()

    def _interval(self) -> float:
        if self._lifetime is None:
            return self._min_interval
        return min(self._min_interval, self._lifetime / 2)

    async def _mint(self) -> None:
        if self._minted_at is not None:
            wait = self._interval() - (self._clock() - self._minted_at)
            if wait > 0:
                await asyncio.sleep(wait)  # the API allows one token per user per minute
        creds = self._credentials
        attempt = 0
        while True:
            attempt += 1
            status, document, retry_after = await self._post(creds)
            granted = status == 200 and isinstance(document, dict) and "access_token" in document
            if granted:
                break
            error_id, detail = error_details(document)
            if isinstance(document, dict) and isinstance(document.get("error"), str):
                error_id = document["error"]
                description = document.get("error_description")
                detail = description if isinstance(description, str) else detail
            passing = status is None or status == 429 or status >= 500
            if passing and attempt < self._max_attempts:
                delay = self._backoff_base * 2 ** (attempt - 1)
                if status == 429:
                    delay = max(delay, self._interval())
                await asyncio.sleep(max(delay, min(retry_after or 0.0, 300.0)))
                continue
            if passing:
                raise ApiError(
                    f"the OAuth token endpoint kept failing ({attempt} attempts"
                    + (f", the last: {scrub(detail, self._seen)}" if detail else "")
                    + "); run the same command again later",
                    status=status,
                    error_id=error_id,
                    url=creds.token_url,
                )
            if error_id == "invalid_grant" and self._next_candidate():
                attempt = 0
                continue
            reason = (
                "the OAuth client id or secret is wrong (--client-id, --client-secret)"
                if error_id == "invalid_client"
                else "the OAuth token endpoint refused the refresh token; it may have been "
                "rotated by another run or revoked: authorize the app again and pass the new "
                "--refresh-token"
            )
            raise AuthError(reason, status=status, error_id=error_id, url=creds.token_url)
        assert isinstance(document, dict)
        access = document["access_token"]
        rotated = document.get("refresh_token")
        for secret in (access, rotated):
            if isinstance(secret, str) and secret:
                remember_secret(secret)
                self._seen.append(secret)
        problem = header_safe(access) if isinstance(access, str) else "it is not a string"
        if problem is not None:
            raise AuthError(
                f"the OAuth token endpoint answered an unusable access token ({problem}); "
                "it was not used. Check the token URL, then run again",
                url=creds.token_url,
                status=status,
            )
        self._minted_at = self._clock()
        self.mints += 1
        self._access = Secret(access)
        expires_in = document.get("expires_in")
        try:
            lifetime = float(expires_in) if isinstance(expires_in, int | float) else 7200.0
        except OverflowError:
            lifetime = 7200.0
        lifetime = min(max(lifetime, 0.1), 7 * 86400.0) if math.isfinite(lifetime) else 7200.0
        self._lifetime = lifetime
        # Refresh ahead of expiry: five minutes early for real two-hour tokens, a tenth of the
        # lifetime for the short ones a test or simulator hands out.
        self._refresh_at = self._minted_at + lifetime - min(self._margin, lifetime / 10)
        if isinstance(rotated, str) and rotated:
            creds.refresh_token = Secret(rotated)
            self._candidates = [creds.refresh_token]
            if self._store is not None:
                self._store.save(creds.refresh_token)

    def _next_candidate(self) -> bool:
        """After `invalid_grant`: move on to the next refresh token to try, if there is one."""
        if len(self._candidates) < 2:
            return False
        self._candidates.pop(0)
        self._credentials.refresh_token = self._candidates[0]
        return True

    async def _post(self, creds: OAuthCredentials) -> tuple[int | None, Any, float | None]:
        """(status, parsed body, Retry-After) of one token request; status None: no answer."""
        form = {
            "grant_type": "refresh_token",
            "client_id": creds.client_id,
            "client_secret": creds.client_secret.reveal(),
            "redirect_uri": creds.redirect_uri,
            "refresh_token": creds.refresh_token.reveal(),
        }
        try:
            async with (
                self._session_factory() as session,
                session.post(
                    creds.token_url,
                    data=form,
                    # Never re-post the client secret and the refresh token elsewhere.
                    allow_redirects=False,
                    timeout=aiohttp.ClientTimeout(total=self._deadline),
                ) as response,
            ):
                status = response.status
                if 300 <= status < 400:
                    raise AuthError(
                        f"the OAuth token endpoint {redact_url(creds.token_url)} answered a "
                        f"redirect ({status}); it is never followed, since the request carries "
                        "the client secret and the refresh token. Check the token URL "
                        "(--base-url) and run again",
                        status=status,
                    )
                retry_after = retry_after_delay(response.headers, time.time())
                body = bytearray()
                async for chunk in response.content.iter_chunked(1 << 16):
                    body += chunk
                    if len(body) > MAX_TOKEN_ANSWER:
                        return None, None, None  # not a token answer: a passing fault
        except (aiohttp.ClientError, TimeoutError):
            return None, None, None
        document: Any
        try:
            document = orjson.loads(body)
        except orjson.JSONDecodeError:
            document = None
        return status, document, retry_after


def token_source(
    settings: ExportSettings, static: Callable[[Secret], TokenSource] = StaticToken
) -> TokenSource:
    """The token source `settings` hold: the OAuth refresh-token grant (rotated refresh tokens
    kept in `token_file`, by default `default_token_file()`) when they hold OAuth credentials
    (`ExportSettings.oauth`: a refresh token, or a client id without a static token),
    else the static token. Callers check first that the credentials are complete and say so
    in their own words (`export`'s flags, the fleet file's keys); `static` makes the static
    token's source (the fleet's names its keys in its hints)."""
    if settings.oauth:
        if not (settings.client_id and settings.client_secret and settings.redirect_uri):
            raise UsageError("OAuth needs a client id, a client secret and a redirect URI")
        store = RefreshTokenStore(settings.token_file or default_token_file())
        # Once the store holds a rotated refresh token, none need be given; one given as well
        # is only tried after the stored one is refused (`OAuthTokens`): a stale first token
        # passed again never replaces the newer one.
        given = settings.refresh_token or store.load()
        if given is None:
            raise UsageError(
                f"OAuth needs a refresh token: the token file {store.path} holds none yet"
            )
        credentials = OAuthCredentials(
            client_id=settings.client_id,
            client_secret=settings.client_secret,
            refresh_token=given,
            redirect_uri=settings.redirect_uri,
            token_url=token_url_for(settings.base_url),
        )
        return OAuthTokens(credentials, store, lambda: aiohttp.ClientSession())
    if settings.token is None:
        raise UsageError("no credentials: a static token or an OAuth refresh token is needed")
    return static(settings.token)
