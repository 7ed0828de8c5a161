"""The request budgets: the configured one (`RequestBudget`), the API's own window (`ApiWindow`), a client's pacing under both (`RateLimits`), and the rate-limit headers they are read from."""

from __future__ import annotations

import asyncio
import contextlib
import math
import time
from collections import deque
from collections.abc import Callable
from email.utils import parsedate_to_datetime
from typing import Any, Protocol

from aiolimiter import AsyncLimiter

# The API's documented window is an hour; a reset further away than this is not believed.
LONGEST_WINDOW = 3600.0


class RequestBudget:
    """The configured budget: at most `limit` request starts in any `period` seconds.

    A log of the last `limit` start times, not a token bucket: a bucket (aiolimiter's) starts
    full and refills continuously, so a burst followed by steady pacing can put up to twice its
    `limit` into one of the API's fixed windows. With the log no interval of `period` seconds,
    wherever the API's window boundaries fall, ever holds more than `limit` starts.
    """

    def __init__(
        self, limit: int, period: float, clock: Callable[[], float] = time.monotonic
    ) -> None:
        if limit < 1 or period <= 0:
            raise ValueError("a request budget needs limit >= 1 and period > 0")
        self.limit = limit
        self.period = period
        self._clock = clock
        self._starts: deque[float] = deque()

    def delay(self, now: float) -> float:
        """Seconds until another request may start (0: now)."""
        starts = self._starts
        while starts and starts[0] <= now - self.period:
            starts.popleft()
        if len(starts) < self.limit:
            return 0.0
        return starts[0] + self.period - now

    def take(self, now: float) -> None:
        self._starts.append(now)

    def room(self, now: float) -> int:
        """Starts allowed now, before the log is full."""
        self.delay(now)  # forgets the starts older than a period
        return self.limit - len(self._starts)

    async def acquire(self) -> None:
        """Wait for a turn and take it (for callers that pace requests of their own)."""
        while True:
            wait = self.delay(self._clock())
            if wait <= 0:
                break
            await asyncio.sleep(wait)
        self.take(self._clock())


class ApiWindow:
    """The API's fixed rate-limit window as its headers describe it.

    - `remaining` is the lowest `X-RateLimit-Remaining` answered in the current window (answers
      arrive out of order; the API's count only falls). A request still in flight may or may not
      have been counted yet, so `remaining - in_flight` more can start without a 429 (exactly,
      once nothing is in flight); a request that failed without headers is assumed counted.
    - The window is named by its `X-RateLimit-Reset`. Once the clock passes it (plus `margin`
      for clock skew), a fresh window of `limit` is assumed until an answer from it arrives; an
      answer naming an older window is ignored, one naming a newer window is adopted.
    - `reserve` requests of each window are left to other programs.
    - No headers at all: nothing is known, nothing is held back (the configured budget paces).
    """

    def __init__(
        self, *, margin: float, reserve: int = 0, default_limit: int | None = None
    ) -> None:
        self.margin = margin
        self.reserve = reserve
        self.limit = default_limit
        self.reset: float | None = None
        self.remaining: int | None = None
        self.rolled = False  # the clock passed `reset`: `remaining` is assumed, not answered
        self.in_flight = 0
        self.blocked_until = 0.0  # after a 429 with Retry-After (or without headers)
        self.changed = asyncio.Event()

    def delay(self, now: float) -> float:
        """Seconds to wait before another request may start (0: now). While answers in flight
        may still free some of the window, `changed` is set when one arrives."""
        if now < self.blocked_until:
            return self.blocked_until - now
        if self.reset is None or self.remaining is None:
            return 0.0
        if not self.rolled and now >= self.reset + self.margin:
            self.rolled = True
            self.remaining = self.limit
            if self.remaining is None:
                return 0.0
        if self.remaining - self.in_flight - self.reserve > 0:
            return 0.0
        if self.rolled:
            return 0.05  # the new window's size is being learnt from answers in flight
        return max(0.001, self.reset + self.margin - now)

    def take(self) -> None:
        self.in_flight += 1

    def room(self) -> int | None:
        """Starts the window is known to allow beyond those in flight (None: nothing known)."""
        if self.remaining is None or self.rolled:
            return None
        return max(0, self.remaining - self.in_flight - self.reserve)

    def answered(self, remaining: float | None, reset: float | None, limit: float | None) -> None:
        """An answer arrived (its headers, at least)."""
        self.in_flight -= 1
        if limit is not None and limit >= 1:
            self.limit = int(limit)
        if remaining is None or reset is None:
            self.lost()
            return
        if self.reset is None or reset > self.reset:
            self.reset, self.remaining, self.rolled = reset, int(remaining), False
        elif reset == self.reset and not self.rolled and self.remaining is not None:
            self.remaining = min(self.remaining, int(remaining))
        self.changed.set()

    def failed(self) -> None:
        """A request got no answer at all (connection refused, reset before the headers)."""
        self.in_flight -= 1
        self.lost()

    def lost(self) -> None:
        if self.remaining is not None and not self.rolled:
            self.remaining -= 1  # it may have been counted: assume so
        self.changed.set()

    def block(self, until: float) -> None:
        self.blocked_until = max(self.blocked_until, until)

    def spent(self, reset: float | None, now: float) -> None:
        """A 429: nothing is left until `reset`; a reset already past says our clock is ahead."""
        if reset is not None and now > reset:
            self.margin = min(max(self.margin, now - reset + 0.05), 5.0)
        if self.remaining is not None and not self.rolled:
            self.remaining = 0


class PacingStats(Protocol):
    """Where `RateLimits` counts its waits and the API's last word (the client's `ClientStats`)."""

    rate_wait_seconds: float
    rate_pauses: int
    budget_wait_seconds: float
    rate_remaining: int | None
    rate_reset: float | None


class RateLimits:
    """Both budgets of one client: every request waits for its turn under each (`turn`), and
    every answer, or its absence, tells the API's window what is left. Created inside the
    running loop (its lock, event and clocks belong to it), never at import."""

    def __init__(
        self,
        *,
        limit: int,
        period: float,
        reserve: int,
        clock: Callable[[], float],
        stats: PacingStats,
    ) -> None:
        loop = asyncio.get_running_loop()
        self._period = period
        self._clock = clock  # wall clock: X-RateLimit-Reset is in epoch seconds
        self._stats = stats
        # The configured budget, twice: aiolimiter's bucket paces the steady state (no
        # bunching at window edges), the log caps any window at the budget (the bucket alone
        # would let a full burst plus its refill into one of the API's fixed windows).
        self._bucket = AsyncLimiter(limit, period)
        self._budget = RequestBudget(limit, period, loop.time)
        self.window = ApiWindow(
            # Room for clock skew: 1% of the window, at most a second (a second of an hour).
            margin=min(1.0, max(0.005, period / 100)),
            reserve=reserve,
            default_limit=None,
        )
        self._lock = asyncio.Lock()

    async def turn(self) -> float:
        """Wait for a turn under both budgets, then count the request against them; the
        seconds it waited."""
        budget, window, stats = self._budget, self.window, self._stats
        loop = asyncio.get_running_loop()
        asked = loop.time()
        async with self._lock:  # first come, first served
            started = loop.time()
            await self._bucket.acquire()
            stats.budget_wait_seconds += loop.time() - started
            paused = False
            while True:
                budget_wait = budget.delay(loop.time())
                window_wait = window.delay(self._clock())
                wait = max(budget_wait, window_wait)
                if wait <= 0:
                    break
                if window_wait >= budget_wait and not paused:
                    paused = True
                    stats.rate_pauses += 1
                window.changed.clear()
                started = loop.time()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(window.changed.wait(), timeout=wait)
                waited = loop.time() - started
                if window_wait >= budget_wait:
                    stats.rate_wait_seconds += waited
                else:
                    stats.budget_wait_seconds += waited
            budget.take(loop.time())
            window.take()
            return loop.time() - asked

    def room(self) -> int | None:
        """Request starts both budgets allow right now beyond those in flight (None: no
        limit known). What the in-flight bound may grow into (`inflight.InFlightBound`)."""
        loop = asyncio.get_running_loop()
        configured = self._budget.room(loop.time())
        window = self.window.room()
        return configured if window is None else min(configured, window)

    def answered(self, headers: Any) -> None:
        """An answer's headers arrived (read before its body: a body cut short still counted)."""
        remaining = header_number(headers, "X-RateLimit-Remaining")
        reset = reset_time(headers, self._clock())
        limit = header_number(headers, "X-RateLimit-Limit")
        self.window.answered(remaining, reset, limit)
        if remaining is not None and reset is not None:
            self._stats.rate_remaining = int(remaining)
            self._stats.rate_reset = reset

    def unanswered(self) -> None:
        """A request that got no answer at all (connection refused, reset before the headers)."""
        self.window.failed()

    def rate_limited(self, headers: Any) -> None:
        """After a 429: hold every request until the window resets (or `Retry-After` passes)."""
        window = self.window
        now = self._clock()
        reset = reset_time(headers, now)
        window.spent(reset, now)
        retry_after = retry_after_delay(headers, now)
        if retry_after is not None:
            window.block(now + min(retry_after, LONGEST_WINDOW))
        elif reset is None or window.remaining is None:
            # No headers to go by: wait a window of the configured budget (at most a minute).
            window.block(now + min(60.0, self._period))


def header_number(headers: Any, name: str) -> float | None:
    value = headers.get(name)  # CIMultiDict: case-insensitive
    if value is None:
        return None
    try:
        number = float(value)
    except ValueError:
        return None
    return number if math.isfinite(number) else None


def reset_time(headers: Any, now: float) -> float | None:
    """`X-RateLimit-Reset` as epoch seconds (a small number is taken as seconds from now)."""
    reset = header_number(headers, "X-RateLimit-Reset")
    if reset is None or reset < 0:
        return None
    if reset < 1e9:  # not an epoch time: some gateways send the seconds left
        reset = now + reset
    return min(reset, now + LONGEST_WINDOW)


def retry_after_delay(headers: Any, now: float) -> float | None:
    """`Retry-After` in seconds, given as seconds or as an HTTP date."""
    value = header_number(headers, "Retry-After")
    if value is not None:
        return value if value >= 0 else None
    text = headers.get("Retry-After")
    if not text:
        return None
    try:
        return max(0.0, parsedate_to_datetime(text).timestamp() - now)
    except (TypeError, ValueError):
        return None
