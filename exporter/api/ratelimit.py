"""The request budgets: the configured one (`RequestBudget`) and the API's own window (`ApiWindow`), and the rate-limit headers they are read from."""

from __future__ import annotations

import asyncio
import math
import time
from collections import deque
from collections.abc import Callable
from email.utils import parsedate_to_datetime
from typing import Any

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
