"""HTTP transport: one aiohttp session, the shared rate limiter, the in-flight bound, retries and auth.

Every request the exporter makes goes through `ApiClient.get_document`, in these steps:
1. wait while the API's own rate-limit headers said the window is nearly spent (another program
   may be spending the same user's budget);
2. take a slot of the in-flight bound (`concurrency`), then a token of the `AsyncLimiter`
   (requests per period): two separate knobs;
3. send with the current access token; read the whole body;
4. sort the answer with `errors.classify_status`: 2xx is parsed and returned; 429 waits for the
   window's reset (or `Retry-After`) and sends the same request again; 401 refreshes the token
   once; 502 on a big page retries with half the `page[size]`; other 5xx, timeouts, resets and
   truncated, non-JSON or HTML bodies back off exponentially with jitter; anything else is fatal.
The limiter is created inside the running loop (aiolimiter binds to it), never at import.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from email.utils import parsedate_to_datetime
from typing import Any

import aiohttp
import orjson
from aiolimiter import AsyncLimiter

from exporter import __version__
from exporter.auth import TokenSource
from exporter.errors import (
    ApiError,
    AuthError,
    RetriableError,
    StatusClass,
    UnreachableError,
    classify_status,
    error_details,
    redact_url,
)
from exporter.pagination import query_value, with_query_value

JSONAPI = "application/vnd.api+json"


@dataclass(frozen=True)
class ClientSettings:
    base_url: str
    concurrency: int = 8
    rate_limit: int = 10_000
    rate_period: float = 3600.0
    connect_timeout: float = 15.0
    read_timeout: float = 120.0
    max_attempts: int = 6
    backoff_base: float = 0.5
    backoff_max: float = 30.0
    max_rate_limit_waits: int = 50
    # Pause before the API's window is spent when fewer than this many requests remain.
    remaining_reserve: int | None = None


@dataclass
class ClientStats:
    requests: int = 0
    retries: int = 0
    rate_limited: int = 0  # 429s received
    rate_wait_seconds: float = 0.0  # time spent waiting on the API's window (429 or headers)
    bytes_received: int = 0
    statuses: Counter[int] = field(default_factory=Counter)
    rate_remaining: int | None = None
    rate_reset: float | None = None
    smaller_pages: int = 0
    token_refreshes: int = 0
    server_time: float | None = None  # the API's clock (Date header) at its first answer


class ApiClient:
    """The one HTTP client of a run; every request shares its limiter and in-flight bound."""

    def __init__(
        self,
        settings: ClientSettings,
        tokens: TokenSource,
        *,
        rng: random.Random | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.settings = settings
        self.tokens = tokens
        self.stats = ClientStats()
        self._rng = rng or random.Random()
        self._clock = clock
        self._session: aiohttp.ClientSession | None = None
        self._limiter: AsyncLimiter | None = None
        self._in_flight: asyncio.Semaphore | None = None
        self._pause_until = 0.0

    async def __aenter__(self) -> ApiClient:
        s = self.settings
        connector = aiohttp.TCPConnector(
            limit=s.concurrency, limit_per_host=s.concurrency, keepalive_timeout=60
        )
        timeout = aiohttp.ClientTimeout(
            total=None, connect=s.connect_timeout, sock_read=s.read_timeout
        )
        self._session = aiohttp.ClientSession(
            connector=connector,
            timeout=timeout,
            headers={
                "Accept": JSONAPI,
                "Content-Type": JSONAPI,
                "User-Agent": f"outreach-exporter/{__version__}",
            },
            auto_decompress=True,
            raise_for_status=False,
        )
        self._limiter = AsyncLimiter(s.rate_limit, s.rate_period)
        self._in_flight = asyncio.Semaphore(s.concurrency)
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    @property
    def session(self) -> aiohttp.ClientSession:
        if self._session is None:
            raise RuntimeError("ApiClient used outside `async with`")
        return self._session

    async def get_document(self, url: str, *, max_attempts: int | None = None) -> dict[str, Any]:
        """GET a JSON:API document, retrying what is passing; ApiError once it gives up."""
        _status, document = await self._request("GET", url, None, max_attempts=max_attempts)
        return document

    async def send_document(
        self, method: str, url: str, document: dict[str, Any]
    ) -> tuple[int, dict[str, Any]]:
        """POST/PATCH a JSON:API document; (status, body) for 2xx and 422 answers."""
        return await self._request(method, url, document, accept_statuses=(422,))

    async def _request(
        self,
        method: str,
        url: str,
        payload: dict[str, Any] | None,
        *,
        max_attempts: int | None = None,
        accept_statuses: tuple[int, ...] = (),
    ) -> tuple[int, dict[str, Any]]:
        assert self._limiter is not None and self._in_flight is not None
        attempts = max_attempts or self.settings.max_attempts
        attempt = 0
        rate_waits = 0
        refreshed = False
        connection_failures = 0
        last: RetriableError | None = None
        data = orjson.dumps(payload) if payload is not None else None
        while True:
            await self._wait_for_window()
            async with self._in_flight:
                await self._limiter.acquire()
                token = await self.tokens.token()
                self.stats.requests += 1
                try:
                    async with self.session.request(
                        method, url, data=data, headers={"Authorization": f"Bearer {token}"}
                    ) as response:
                        status = response.status
                        headers = response.headers
                        body = await response.read()
                except aiohttp.ClientConnectorError as exc:
                    connection_failures += 1
                    last = RetriableError(f"cannot connect ({_reason(exc)})")
                    status = -1
                except (aiohttp.ClientError, TimeoutError) as exc:
                    last = RetriableError(f"transport failure ({_reason(exc)})")
                    status = -1
            if status == -1:
                attempt += 1
                never_answered = not self.stats.statuses
                if attempt >= attempts or (never_answered and connection_failures >= 3):
                    if connection_failures == attempt:
                        # Never reached at all: most likely a wrong --base-url, so say so fast.
                        raise UnreachableError(
                            f"cannot reach {redact_url(url)} ({last}); check --base-url and "
                            "the network, then run again"
                        )
                    raise ApiError(f"giving up after {attempt} attempts: {last}", url=url)
                await self._backoff(attempt)
                continue

            self.stats.statuses[status] += 1
            self.stats.bytes_received += len(body)
            if self.stats.server_time is None:
                self.stats.server_time = _header_date(headers)
            self._observe_window(headers)
            page_size = _page_size(url)
            outcome = classify_status(status, page_size)
            if status in accept_statuses:
                outcome = StatusClass.OK
            try:
                if outcome is StatusClass.OK:
                    return status, _parse_document(body, headers.get("Content-Type", ""))
                document = _try_parse(body)
                error_id, detail = error_details(document)
                if outcome is StatusClass.RATE_LIMITED:
                    self.stats.rate_limited += 1
                    rate_waits += 1
                    if rate_waits > self.settings.max_rate_limit_waits:
                        raise ApiError(
                            "still rate limited after waiting for "
                            f"{rate_waits - 1} windows; is another program spending this user's budget?",
                            url=url,
                            status=status,
                            error_id=error_id,
                        )
                    await self._wait_rate_limited(headers)
                    continue  # the same request again; not an attempt
                if outcome is StatusClass.REFRESH:
                    if refreshed:
                        raise AuthError(
                            "the API refused a freshly refreshed access token",
                            url=url,
                            status=status,
                            error_id=error_id,
                        )
                    refreshed = True
                    self.stats.token_refreshes += 1
                    await self.tokens.refresh(token)
                    continue
                if outcome is StatusClass.FATAL:
                    raise _fatal(status, error_id, detail, url)
                if outcome is StatusClass.SMALLER_PAGE and page_size is not None:
                    self.stats.smaller_pages += 1
                    url = with_query_value(url, "page[size]", str(max(1, page_size // 2)))
                raise RetriableError(
                    f"HTTP {status}" + (f" ({detail})" if detail else ""),
                    status=status,
                    error_id=error_id,
                    retry_after=_retry_after(headers),
                )
            except RetriableError as exc:
                last = exc
                attempt += 1
                if attempt >= attempts:
                    raise ApiError(
                        f"giving up after {attempt} attempts: {exc}",
                        url=url,
                        status=exc.status,
                        error_id=exc.error_id,
                    ) from None
                await self._backoff(attempt, exc.retry_after)

    async def _backoff(self, attempt: int, retry_after: float | None = None) -> None:
        self.stats.retries += 1
        s = self.settings
        delay = min(s.backoff_max, s.backoff_base * 2 ** (attempt - 1))
        delay *= self._rng.uniform(0.5, 1.5)  # jitter: concurrent retries do not stampede
        if retry_after is not None:
            delay = max(delay, min(retry_after, s.backoff_max * 4))
        await asyncio.sleep(delay)

    def _observe_window(self, headers: Any) -> None:
        remaining = _header_number(headers, "X-RateLimit-Remaining")
        reset = _header_number(headers, "X-RateLimit-Reset")
        if remaining is None or reset is None:
            return  # the header is missing: the limiter alone paces us
        self.stats.rate_remaining = int(remaining)
        self.stats.rate_reset = reset
        reserve = self.settings.remaining_reserve
        if reserve is None:
            reserve = self.settings.concurrency
        if remaining <= reserve:
            # Nearly spent (maybe by another program): hold new requests until the reset.
            until = self._clock() + self._until_reset(reset)
            self._pause_until = max(self._pause_until, until)

    async def _wait_for_window(self) -> None:
        delay = self._pause_until - self._clock()
        if delay > 0:
            self.stats.rate_wait_seconds += delay
            await asyncio.sleep(delay)

    async def _wait_rate_limited(self, headers: Any) -> None:
        retry_after = _retry_after(headers)
        reset = _header_number(headers, "X-RateLimit-Reset")
        if retry_after is not None:
            delay = retry_after
        elif reset is not None:
            delay = self._until_reset(reset)
        else:
            delay = min(60.0, self.settings.rate_period)
        self._pause_until = max(self._pause_until, self._clock() + delay)
        await self._wait_for_window()

    def _until_reset(self, reset: float) -> float:
        # Reset is the server's epoch second; allow a little for the clock's whole seconds.
        return max(0.05, min(reset - self._clock() + 0.05, self.settings.rate_period))


def _reason(exc: BaseException) -> str:
    text = type(exc).__name__
    if isinstance(exc, aiohttp.ClientConnectorError):
        text += f": {exc.os_error.strerror or exc.os_error}" if exc.os_error else ""
    return text


def _page_size(url: str) -> int | None:
    value = query_value(url, "page[size]")
    if value is None or not value.isdigit():
        return None
    return int(value)


def _header_number(headers: Any, name: str) -> float | None:
    value = headers.get(name)  # CIMultiDict: case-insensitive
    if value is None:
        return None
    try:
        return float(value)
    except ValueError:
        return None


def _header_date(headers: Any) -> float | None:
    value = headers.get("Date")
    if not value:
        return None
    try:
        return parsedate_to_datetime(value).timestamp()
    except (TypeError, ValueError):
        return None


def _retry_after(headers: Any) -> float | None:
    value = _header_number(headers, "Retry-After")
    return value if value is not None and value >= 0 else None


def _try_parse(body: bytes) -> Any:
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError:
        return None


def _parse_document(body: bytes, content_type: str) -> dict[str, Any]:
    kind = content_type.split(";", 1)[0].strip().lower()
    if kind and "json" not in kind:
        raise RetriableError(f"a {kind or 'non-JSON'} body where JSON was expected")
    try:
        document = orjson.loads(body)
    except orjson.JSONDecodeError:
        raise RetriableError(f"a truncated or malformed JSON body ({len(body)} bytes)") from None
    if not isinstance(document, dict):
        raise RetriableError("a JSON body that is not an object")
    return document


def _fatal(status: int, error_id: str | None, detail: str | None, url: str) -> ApiError:
    if status == 403:
        return AuthError(
            "the API refused access (403): the app lacks a scope this export needs "
            "(sequenceSteps.read and the *.read scopes of the related resources)"
            + (f": {detail}" if detail else ""),
            url=url,
            status=status,
            error_id=error_id,
        )
    return ApiError(
        "the API refused the request" + (f": {detail}" if detail else ""),
        url=url,
        status=status,
        error_id=error_id,
    )
