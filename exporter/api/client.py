"""HTTP transport: one aiohttp session, the request budgets, the in-flight bound, retries and auth.

Every request the exporter makes goes through `ApiClient._request`, in these steps:
1. take a slot of the in-flight bound (requests at once): pinned at `concurrency`, or, with
   `adaptive_ceiling`, moved between 1 and that ceiling by `inflight.InFlightBound` from every
   answer (grown while requests are latency-bound and the budgets have room, cut on 429s, 5xx,
   timeouts, broken connections and rising latency); `watch_bound` tells others of each change;
2. wait for a turn under two budgets (`ratelimit.RateLimits.turn`): the configured one (an aiolimiter
   `AsyncLimiter` pacing the steady state, and `RequestBudget` capping request starts at N in
   any window of the configured period) and the API's own (`ApiWindow`, what
   its `X-RateLimit-Remaining`/`-Reset` headers say is left of its fixed window, less the
   requests still in flight); another program may be spending the same user's budget, so the
   API's count is the one that decides;
3. send with the current access token; read the whole body (the rate-limit headers are read
   before it, so a body cut short still counts). Three bounds hold for every answer:
   - an overall deadline (`request_deadline`, 5 minutes by default) from sending to the last
     byte, besides the read timeout between bytes, so an answer trickling a few bytes a second
     cannot stall a run; running out of it is a passing fault (retried);
   - at most `max_response_bytes` (256 MiB) of body *after* decompression: the body is
     inflated here, chunk by chunk, never beyond the cap (aiohttp's own decompression is off),
     and a declared `Content-Length` over the cap is refused before reading. More is a passing
     fault (a proxy's glitch), so it is retried within `max_attempts` like a truncated body, and
     then one `ApiError` naming the cap; memory stays under the cap whatever the ratio;
   - redirects are never followed by aiohttp. A redirect of a GET to the base URL's origin
     (scheme, host, port, as `urls.origin` compares them; no userinfo) is followed here,
     with the token, through the same budgets, at most `max_redirects` hops in a row; a
     redirect to another origin, of a write, or without a usable `Location` is fatal: one
     `ApiError` naming where it pointed (the token is never sent there);
4. sort the answer with `errors.classify_status`: 2xx is parsed and returned; 429 waits for the
   window's reset (or `Retry-After`) and sends the same request again (not an attempt); 401
   refreshes the token once; 502 on a big page retries with half the `page[size]` (not an
   attempt either: it halves at most ~10 times); other 5xx, timeouts, resets and truncated,
   non-JSON or HTML bodies back off exponentially with jitter, at most `max_attempts` times,
   then one `ApiError` naming the URL, the status and the API's error id; anything else is fatal.
   Every text the API sent (error id, title, detail) is quoted only through
   `errors.clean_text`: secrets scrubbed, one line, bounded length.
Budgets and locks are created inside the running loop (in `__aenter__`), never at import.
"""

from __future__ import annotations

import asyncio
import logging
import math
import random
import time
import zlib
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from email.utils import parsedate_to_datetime
from typing import Any, TypeVar
from urllib.parse import urljoin, urlsplit

import aiohttp
import orjson

from exporter import __version__
from exporter.api.auth import TokenSource
from exporter.api.documents import json_or_none, parse_document
from exporter.api.inflight import Answer, InFlightBound, ResizableSemaphore
from exporter.api.ratelimit import RateLimits, retry_after_delay
from exporter.api.urls import origin, query_value, with_query_value
from exporter.core.errors import (
    ApiError,
    AuthError,
    RetriableError,
    StatusClass,
    UnreachableError,
    classify_status,
    clean_text,
    error_details,
    redact_url,
    shown_url,
)
from exporter.core.events import LOGGER, event

JSONAPI = "application/vnd.api+json"
T = TypeVar("T")

# A request whose turn under the budgets took longer than this was held back by them.
HELD_BACK = 0.001
RESUME_HINT = "the checkpoint is intact: run the same command again to resume"
# Seconds the requests in flight get to finish after a stop request (SIGINT/SIGTERM) before
# the CLI cancels them (exporter/cli.py `_run`, exporter/fleet.py `run_local`).
STOP_GRACE = 10.0


class NotSentError(ApiError):
    """A write sent once (`max_attempts=1`) whose connection could not even be opened
    (`aiohttp.ClientConnectorError`: the TCP connect, or the TLS handshake, failed): not one
    byte of the request left this machine, so the API provably did not apply it and it may be
    sent again. (Any other transport failure may have happened after the request was sent.)"""


@dataclass(frozen=True)
class ClientSettings:
    base_url: str
    concurrency: int = 8  # the in-flight bound: pinned, or where an adaptive one starts
    # Adaptive in-flight bound up to this many (None: pinned at `concurrency`).
    adaptive_ceiling: int | None = None
    rate_limit: int = 10_000
    rate_period: float = 3600.0
    connect_timeout: float = 15.0
    read_timeout: float = 120.0
    max_attempts: int = 6
    backoff_base: float = 0.5
    backoff_max: float = 30.0
    max_rate_limit_waits: int = 50
    # From sending a request to the last byte of its answer (the read timeout is between bytes).
    request_deadline: float = 300.0
    # Bytes of one answer's body after decompression; the API's biggest pages are a few MiB.
    max_response_bytes: int = 256 * 1024 * 1024
    # Same-origin redirects followed in a row for one request.
    max_redirects: int = 5
    # Requests of each API window left unspent (for other programs on the same user's budget).
    remaining_reserve: int | None = None
    # What the caller's user should do after the client gives up (export: resume; restore: rerun).
    give_up_hint: str = RESUME_HINT


@dataclass
class ClientStats:
    requests: int = 0
    retries: int = 0
    rate_limited: int = 0  # 429s received
    rate_wait_seconds: float = 0.0  # time spent waiting on the API's window (429 or headers)
    rate_pauses: int = 0  # times a request waited because the API's window was (nearly) spent
    budget_wait_seconds: float = 0.0  # time spent waiting on the configured budget
    bytes_received: int = 0
    statuses: Counter[int] = field(default_factory=Counter)
    rate_remaining: int | None = None
    rate_reset: float | None = None
    smaller_pages: int = 0
    token_refreshes: int = 0
    server_time: float | None = None  # the API's clock (Date header) at its first answer
    bound: int = 0  # the in-flight bound now
    peak_bound: int = 0  # the highest it reached
    bound_cuts: int = 0  # times an adaptive bound was cut (overload or rising latency)


class ApiClient:
    """The one HTTP client of a run; every request shares its budgets and in-flight bound."""

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
        self._clock = clock  # wall clock: X-RateLimit-Reset is in epoch seconds
        self._session: aiohttp.ClientSession | None = None
        self._limits: RateLimits | None = None
        s = settings
        if s.adaptive_ceiling is None:
            self.in_flight = InFlightBound.pinned(s.concurrency)
        else:
            self.in_flight = InFlightBound(start=s.concurrency, ceiling=s.adaptive_ceiling)
        self.stats.bound = self.stats.peak_bound = self.in_flight.bound
        self._slots: ResizableSemaphore | None = None
        self._watchers: list[Callable[[int], None]] = []

    def watch_bound(self, watcher: Callable[[int], None]) -> None:
        """Call `watcher` with the in-flight bound each time it changes."""
        self._watchers.append(watcher)

    async def __aenter__(self) -> ApiClient:
        s = self.settings
        most = self.in_flight.ceiling  # connections for the most requests ever in flight
        connector = aiohttp.TCPConnector(limit=most, limit_per_host=most, keepalive_timeout=60)
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
                "Accept-Encoding": "gzip, deflate",
            },
            # Inflated here (`_read_body`), so that no answer grows beyond the cap in memory.
            auto_decompress=False,
            raise_for_status=False,
        )
        self._limits = RateLimits(
            limit=s.rate_limit,
            period=s.rate_period,
            reserve=s.remaining_reserve or 0,
            clock=self._clock,
            stats=self.stats,
        )
        self._slots = ResizableSemaphore(self.in_flight.bound)
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
        assert isinstance(document, dict)
        return document

    async def get_parsed(self, url: str, parse: Callable[[bytes, str], T]) -> T:
        """GET and hand the body (and its content type) to `parse`, in a worker thread; a
        `RetriableError` from `parse` (a truncated or malformed body) is retried like a 5xx."""
        _status, parsed = await self._request("GET", url, None, parse=parse)
        return parsed  # type: ignore[no-any-return]  # what `parse` returned

    async def send_document(
        self,
        method: str,
        url: str,
        document: dict[str, Any],
        *,
        max_attempts: int | None = None,
    ) -> tuple[int, dict[str, Any]]:
        """POST/PATCH a JSON:API document; (status, body) for 2xx and 422 answers.

        `max_attempts=1` sends a write once: a transport failure, a 5xx or an unreadable 2xx
        then raises (an `ApiError` whose status is None, 5xx or 2xx, or `UnreachableError`)
        instead of sending it again, which for a POST could create it twice; a connection
        that could not be opened raises `NotSentError` (nothing was sent: not applied). A 429 and a 401
        are still waited out or refreshed and sent again: neither applied the write."""
        return await self._request(
            method, url, document, max_attempts=max_attempts, accept_statuses=(422,)
        )

    # -- one request, retried ---------------------------------------------------------------

    async def _request(
        self,
        method: str,
        url: str,
        payload: dict[str, Any] | None,
        *,
        max_attempts: int | None = None,
        accept_statuses: tuple[int, ...] = (),
        parse: Callable[[bytes, str], Any] | None = None,
    ) -> tuple[int, Any]:
        assert self._limits is not None and self._slots is not None
        limits, slots = self._limits, self._slots
        attempts = max_attempts or self.settings.max_attempts
        attempt = 0  # failed attempts so far
        rate_waits = 0
        refreshed = False
        connection_failures = 0
        redirects = 0
        deadline = self.settings.request_deadline
        data = orjson.dumps(payload) if payload is not None else None
        while True:
            failure: RetriableError | None = None
            overload = False  # a timeout or a broken connection: the API may be overloaded
            answer: Answer | None = None  # what a complete answer says about the bound
            async with slots:
                waited = await limits.turn()
                answered = False
                sent = time.monotonic()
                status, body = 0, b""
                try:
                    token = await self.tokens.token()
                    self.stats.requests += 1
                    async with (
                        asyncio.timeout(deadline),
                        self.session.request(
                            method,
                            url,
                            data=data,
                            headers={"Authorization": f"Bearer {token}"},
                            allow_redirects=False,
                        ) as response,
                    ):
                        status = response.status
                        headers = response.headers
                        answered = True
                        limits.answered(headers)  # before the body: a cut body still counted
                        body = await _read_body(response, self.settings.max_response_bytes)
                    # Read while this request still holds its slot: were others waiting for one?
                    answer = Answer(
                        sent=sent,
                        now=time.monotonic(),
                        shape=request_shape(method, url, len(body)),
                        saturated=slots.waiting > 0,
                        held_back=waited > HELD_BACK,
                        in_flight=slots.held,
                        room=limits.room(),
                    )
                except aiohttp.ClientConnectorError as exc:
                    connection_failures += 1
                    overload = True
                    failure = RetriableError(f"cannot connect ({_reason(exc)})")
                    if max_attempts == 1:  # one write, never sent: say so (see NotSentError)
                        self._overloaded(sent, "a connection refused")
                        raise NotSentError(
                            f"not sent: cannot connect ({_reason(exc)})",
                            url=url,
                            hint=self.settings.give_up_hint,
                        ) from None
                except RetriableError as exc:  # too big, or not decodable
                    failure = exc
                except TimeoutError as exc:
                    overload = True
                    late = time.monotonic() - sent >= deadline * 0.99
                    failure = RetriableError(
                        f"no complete answer within the {deadline:g} s request deadline"
                        if late
                        else f"{'the answer stalled' if answered else 'transport failure'} "
                        f"({_reason(exc)})"
                    )
                except aiohttp.ClientError as exc:
                    overload = True
                    what = "the connection broke mid-answer" if answered else "transport failure"
                    failure = RetriableError(f"{what} ({_reason(exc)})")
                except ValueError as exc:  # a URL or header aiohttp refuses to send
                    raise ApiError(
                        f"cannot send the request ({exc})", url=url, hint=self.settings.give_up_hint
                    ) from None
                finally:
                    if not answered:
                        limits.unanswered()
            if failure is not None and overload:
                self._overloaded(sent, "a timeout or a broken connection")
            elif failure is None and (status == 429 or status >= 500):
                self._overloaded(sent, f"a {status}")
            elif answer is not None:
                self._answered(answer)
            if LOGGER.isEnabledFor(logging.DEBUG):  # --verbose
                _log_request(
                    method,
                    url,
                    time.monotonic() - sent,
                    attempt + 1,
                    failure,
                    status,
                    body,
                    self.stats.bound,
                )

            if failure is not None:
                attempt += 1
                never_answered = not self.stats.statuses
                if attempt >= attempts or (never_answered and connection_failures >= 3):
                    if connection_failures == attempt and never_answered:
                        # Never reached at all: most likely a wrong --base-url, so say so fast.
                        raise UnreachableError(
                            f"cannot reach {redact_url(url)} ({failure}); check --base-url and "
                            "the network, then run again"
                        )
                    raise ApiError(
                        f"gave up after {attempt} attempts, the last: {failure}",
                        url=url,
                        hint=self.settings.give_up_hint,
                    )
                await self._backoff(attempt)
                continue

            self.stats.statuses[status] += 1
            self.stats.bytes_received += len(body)
            if self.stats.server_time is None:
                self.stats.server_time = _header_date(headers)
            if status in (301, 302, 303, 307, 308):
                redirects += 1
                url = self._redirect(method, url, status, headers, redirects)
                continue  # the same request at the new URL; not an attempt
            page_size = _page_size(url)
            outcome = classify_status(status, page_size)
            if status in accept_statuses:
                outcome = StatusClass.OK
            try:
                if outcome is StatusClass.OK:
                    content_type = headers.get("Content-Type", "")
                    if parse is None:
                        return status, parse_document(body, content_type)
                    # Off the event loop: parsing a page is the heaviest CPU work of a run.
                    return status, await asyncio.to_thread(parse, body, content_type)
                error_id, detail = error_details(json_or_none(body))
                detail = self._scrub(detail)
                if outcome is StatusClass.RATE_LIMITED:
                    self.stats.rate_limited += 1
                    rate_waits += 1
                    if rate_waits > self.settings.max_rate_limit_waits:
                        raise ApiError(
                            "still rate limited after waiting for "
                            f"{rate_waits - 1} windows; is another program spending this "
                            "user's budget?",
                            url=url,
                            status=status,
                            error_id=error_id,
                            hint=self.settings.give_up_hint,
                        )
                    limits.rate_limited(headers)
                    continue  # the same request again, once the window allows; not an attempt
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
                    try:
                        await self.tokens.refresh(token)
                    except AuthError as exc:
                        if exc.status is not None:
                            raise
                        raise AuthError(
                            exc.message, url=url, status=status, error_id=error_id
                        ) from None
                    continue
                if outcome is StatusClass.FATAL:
                    raise _fatal(status, error_id, detail, url)
                if outcome is StatusClass.SMALLER_PAGE and page_size is not None:
                    # Progress, not a failure: the page is asked for again, half as big.
                    self.stats.smaller_pages += 1
                    url = with_query_value(url, "page[size]", str(max(1, page_size // 2)))
                    await self._backoff(1)
                    continue
                raise RetriableError(
                    f"the API answered {status}" + (f" ({detail})" if detail else ""),
                    status=status,
                    error_id=error_id,
                    retry_after=retry_after_delay(headers, self._clock()),
                )
            except RetriableError as exc:
                attempt += 1
                if attempt >= attempts:
                    raise ApiError(
                        f"gave up after {attempt} attempts, the last: {exc}",
                        url=url,
                        status=exc.status if exc.status is not None else status,
                        error_id=exc.error_id,
                        hint=self.settings.give_up_hint,
                    ) from None
                await self._backoff(attempt, exc.retry_after)

    # -- the in-flight bound -----------------------------------------------------------------

    def _answered(self, answer: Answer) -> None:
        before = self.in_flight.bound
        self.in_flight.answered(answer)
        self._moved(
            before, f"rising latency: {self.in_flight.inflation:.1f}x the lowest round trip"
        )

    def _overloaded(self, sent: float, what: str) -> None:
        before = self.in_flight.bound
        self.in_flight.overloaded(sent, time.monotonic())
        self._moved(before, what)

    def _moved(self, before: int, why_cut: str) -> None:
        """Apply the bound's new value (to the slots, the stats and the watchers)."""
        bound = self.in_flight.bound
        self.stats.peak_bound = self.in_flight.peak
        self.stats.bound_cuts = self.in_flight.cuts
        if bound == before or self._slots is None:
            return
        self.stats.bound = bound
        self._slots.limit = bound
        for watcher in self._watchers:
            watcher(bound)
        if bound < before:
            event(
                "in_flight",
                f"in-flight bound {before} -> {bound} after {why_cut}",
                logging.DEBUG,
                bound=bound,
                was=before,
            )

    def _redirect(self, method: str, url: str, status: int, headers: Any, hops: int) -> str:
        """Where a redirect leads, if it may be followed (see the module docstring); else the
        ApiError that says why not."""
        location = headers.get("Location", "")
        try:
            target = urljoin(url, location) if location else ""
            parts = urlsplit(target)
            credentials = parts.username is not None or parts.password is not None
            same = bool(target) and origin(target) == origin(self.settings.base_url)
        except ValueError:
            target, credentials, same = "", False, False
        where = f" to {clean_text(redact_url(target))}" if target else " without a usable Location"
        if not same or credentials:
            raise ApiError(
                f"the API redirected to another origin{where}; refusing to follow it: the "
                "access token is only ever sent to the base URL's scheme, host and port. Check "
                "--base-url (the API may have moved) and run again"
                if target and not same
                else f"the API answered a redirect{where}; refusing to follow it",
                url=url,
                status=status,
            )
        if method != "GET":
            raise ApiError(
                f"the API redirected a {method}{where}; a write is never re-sent to another URL",
                url=url,
                status=status,
            )
        if hops > self.settings.max_redirects:
            raise ApiError(
                f"more than {self.settings.max_redirects} redirects in a row (the last{where}): "
                "the API is looping",
                url=url,
                status=status,
                hint=self.settings.give_up_hint,
            )
        return target

    async def _backoff(self, attempt: int, retry_after: float | None = None) -> None:
        self.stats.retries += 1
        s = self.settings
        delay = min(s.backoff_max, s.backoff_base * 2 ** (attempt - 1))
        delay *= self._rng.uniform(0.5, 1.5)  # jitter: concurrent retries do not stampede
        if retry_after is not None:
            delay = max(delay, min(retry_after, s.backoff_max * 4))
        await asyncio.sleep(delay)

    def _scrub(self, text: str | None) -> str | None:
        """An API's error text with any secret of ours (echoed back) replaced by `***`, on one
        line of bounded length."""
        return None if text is None else clean_text(text, secrets=self.tokens.secrets())


def _size(n: int) -> str:
    return f"{n >> 20} MiB" if n >= 1 << 20 and n % (1 << 20) == 0 else f"{n:,}-byte"


async def _read_body(response: aiohttp.ClientResponse, cap: int) -> bytes:
    """The body, inflated (gzip, deflate) chunk by chunk; RetriableError beyond `cap` bytes."""
    too_big = f"an answer larger than the {_size(cap)} cap (max_response_bytes)"
    declared = response.content_length
    encoding = response.headers.get("Content-Encoding", "identity").strip().lower()
    if encoding == "identity" and declared is not None and declared > cap:
        raise RetriableError(f"{too_big}: Content-Length {declared:,}")
    inflater: Any = None
    if encoding in ("gzip", "x-gzip"):
        inflater = zlib.decompressobj(16 + zlib.MAX_WBITS)
    elif encoding not in ("identity", "", "deflate"):
        raise RetriableError(f"an answer in an unsupported Content-Encoding ({encoding[:40]})")
    # An identity body is kept as the chunks aiohttp hands over, joined once at the end (no
    # growing buffer copied again and again, then once more into bytes): a page of a few MB
    # was copied about three times on the event loop, now once. An inflated one grows `body`.
    chunks: list[bytes] = []
    received = 0
    body = bytearray()
    try:
        async for chunk in response.content.iter_any():
            if inflater is None and encoding != "deflate":
                received += len(chunk)
                if received > cap:
                    raise RetriableError(too_big)
                chunks.append(chunk)
                continue
            if inflater is None:
                # zlib-wrapped as RFC 9110 says, or raw deflate as some servers send it.
                wrapped = (
                    len(chunk) >= 2
                    and (chunk[0] & 0x0F) == 8
                    and ((chunk[0] << 8) | chunk[1]) % 31 == 0
                )
                inflater = zlib.decompressobj(zlib.MAX_WBITS if wrapped else -zlib.MAX_WBITS)
            pending = chunk
            while pending:
                # Never more than one byte past the cap, whatever the compression ratio.
                body += inflater.decompress(pending, cap - len(body) + 1)
                pending = inflater.unconsumed_tail
                if len(body) > cap:
                    break
            if len(body) > cap:
                raise RetriableError(too_big)
        if inflater is not None:
            body += inflater.flush()
    except zlib.error:
        raise RetriableError(f"an answer whose {encoding} encoding is damaged") from None
    if inflater is None:
        return b"".join(chunks)
    if len(body) > cap:
        raise RetriableError(too_big)
    return bytes(body)


def _reason(exc: BaseException) -> str:
    text = type(exc).__name__
    if isinstance(exc, aiohttp.ClientConnectorError):
        text += f": {exc.os_error.strerror or exc.os_error}" if exc.os_error else ""
    return text


def request_shape(method: str, url: str, size: int) -> str:
    """Requests expected to take alike: one method, path and page size, and an answer of `size`
    bytes within a factor of 1.4 (`InFlightBound` compares an answer's time with the fastest of
    its shape: a batch of 5 ids is no measure for one of 1000)."""
    path = urlsplit(url).path
    return f"{method} {path} {_page_size(url)} {round(2 * math.log2(size + 1))}"


def _page_size(url: str) -> int | None:
    value = query_value(url, "page[size]")
    if value is None or not value.isdigit():
        return None
    return int(value)


def _header_date(headers: Any) -> float | None:
    value = headers.get("Date")
    if not value:
        return None
    try:
        return parsedate_to_datetime(value).timestamp()
    except (TypeError, ValueError):
        return None


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


def _log_request(
    method: str,
    url: str,
    seconds: float,
    attempt: int,
    failure: RetriableError | None,
    status: int,
    body: bytes,
    bound: int,
) -> None:
    """One DEBUG line per request sent (`--verbose`): method, URL without secrets, outcome, time,
    and the in-flight bound after its answer."""
    shown = shown_url(url)
    outcome = str(failure) if failure is not None else f"{status}, {len(body):,} bytes"
    event(
        "request",
        f"{method} {shown} -> {outcome} in {seconds * 1000:,.0f} ms"
        + (f" (attempt {attempt})" if attempt > 1 else "")
        + f" [in flight <= {bound}]",
        logging.DEBUG,
        method=method,
        url=shown,
        status=status if failure is None else None,
        bytes=len(body) if failure is None else None,
        ms=round(seconds * 1000, 1),
        attempt=attempt,
        error=str(failure) if failure is not None else None,
        in_flight_bound=bound,
    )
