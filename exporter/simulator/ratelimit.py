"""The API's rate limit: a fixed window of N requests, aligned to multiples of its length, on an injected clock."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any


@dataclass(frozen=True)
class Verdict:
    allowed: bool
    limit: int
    remaining: int
    reset: int  # epoch seconds at which the current window ends
    retry_after: int  # whole seconds until then (at least 1)

    def headers(self, with_retry_after: bool) -> dict[str, str]:
        headers = {
            "X-RateLimit-Limit": str(self.limit),
            "X-RateLimit-Remaining": str(self.remaining),
            "X-RateLimit-Reset": str(self.reset),
        }
        if with_retry_after and not self.allowed:
            headers["Retry-After"] = str(self.retry_after)
        return headers

    def document(self) -> dict[str, Any]:
        again = datetime.fromtimestamp(self.reset, UTC).strftime("%Y-%m-%dT%H:%M:%S")
        return {
            "errors": [
                {
                    "id": "rateLimitExceeded",
                    "title": "Rate Limit Exceeded",
                    "detail": f"You have exceeded your permitted rate limit of {self.limit:,}; "
                    f"please try again at {again}.",
                }
            ]
        }


class FixedWindow:
    """`limit` requests per `window` seconds; the window starts at a multiple of `window` since the epoch."""

    def __init__(self, limit: int, window: float, clock: Callable[[], float]) -> None:
        if limit < 1 or window <= 0:
            raise ValueError("rate limit needs limit >= 1 and window > 0")
        self.limit = limit
        self.window = window
        self.clock = clock
        self._start = -math.inf
        self._used = 0

    def _roll(self, now: float) -> None:
        start = math.floor(now / self.window) * self.window
        if start != self._start:
            self._start = start
            self._used = 0

    def acquire(self) -> Verdict:
        """Count one request; the verdict says whether it is within the budget."""
        now = self.clock()
        self._roll(now)
        allowed = self._used < self.limit
        if allowed:
            self._used += 1
        return self._verdict(now, allowed)

    def peek(self) -> Verdict:
        """The current state without counting a request."""
        now = self.clock()
        self._roll(now)
        return self._verdict(now, True)

    def _verdict(self, now: float, allowed: bool) -> Verdict:
        end = self._start + self.window
        return Verdict(
            allowed=allowed,
            limit=self.limit,
            remaining=max(0, self.limit - self._used),
            reset=math.ceil(end),
            retry_after=max(1, math.ceil(end - now)),
        )
