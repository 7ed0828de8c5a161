"""The in-flight bound: a semaphore whose size can change (`ResizableSemaphore`) and the policy that sizes it from the answers (`InFlightBound`, AIMD with a latency check)."""

# How the adaptive bound moves (`InFlightBound`), one answer at a time:
# 1. Every answer is a round-trip time (RTT) of a request *shape* (path, page size and the answer's
#    size within a factor of 1.4: a one-record probe, a batch of 5 ids and a 1000-record page take
#    different times). The lowest RTT of each shape in the last
#    MIN_RTT_WINDOW seconds is its baseline; an answer's inflation is its RTT over that baseline,
#    smoothed (EWMA, weight INFLATION_WEIGHT). An inflation near 1 says requests are bound by
#    the wire's latency; a high one says they queue somewhere (the API, the network, this host).
# 2. Overload (a 429, a 5xx, a timeout, a connection broken or refused): the bound is halved.
# 3. Rising latency (smoothed inflation above LATENCY_TOLERANCE): the bound is cut by a fifth,
#    never below where it started (`latency_floor`): the queue may be this host's own CPU rather
#    than the API, and the starting bound is what a pinned default always did; only the API's
#    own pushback (rule 2) takes it lower. Both cuts end the slow start, and a cut happens at most once per round trip: a signal
#    from a request sent before the last cut describes the old bound and is ignored.
# 4. Growth, only when all of these hold: requests were waiting for a slot (the bound, not the
#    caller, is what limits); neither request budget held this request back (a bound the
#    budget cannot feed only queues, so never trade a 429 for speed); inflation at most
#    GROWTH_TOLERANCE (this answer's and the smoothed); and room in the budgets (`room`: starts the configured budget and the
#    API's `X-RateLimit-Remaining` still allow) for the bound to be used. Then, in slow start,
#    +1 per answer (the bound doubles each round trip); after the first cut, +1 per round trip.
#    Growth never takes the bound past the requests in flight plus that room.
# 5. The bound stays within [floor, ceiling]; pinned (floor == ceiling) it never moves.
# The budgets never cut the bound (they pace request starts themselves, `ratelimit.RateLimits`);
# they only stop it growing.

from __future__ import annotations

import asyncio
import math
from collections import deque
from dataclasses import dataclass
from typing import Literal

MIN_RTT_WINDOW = 30.0  # seconds a lowest RTT stands for its shape (the route may get slower)
INFLATION_WEIGHT = 0.25
GROWTH_TOLERANCE = 1.5
LATENCY_TOLERANCE = 2.0
OVERLOAD_CUT = 0.5
LATENCY_CUT = 0.8


@dataclass(frozen=True)
class Answer:
    """What one answered request says about the bound (all times in seconds, one clock)."""

    sent: float  # when it went on the wire (after its turn under the budgets)
    now: float  # when its answer was read
    shape: str  # requests of one shape are expected to take alike (`client.request_shape`)
    saturated: bool  # others were waiting for a slot when it was answered
    held_back: bool = False  # a request budget made it wait for its turn
    in_flight: int = 0  # slots held when it was answered (this request's among them)
    room: int | None = None  # starts the budgets allow now beyond those; None: no limit known


class InFlightBound:
    """How many requests may be in flight at once, moved by the answers (the rules above)."""

    def __init__(self, *, start: int, floor: int = 1, ceiling: int = 64) -> None:
        if not 1 <= floor <= ceiling or not floor <= start <= ceiling:
            raise ValueError("an in-flight bound needs 1 <= floor <= start <= ceiling")
        self.floor = floor
        self.ceiling = ceiling
        self.latency_floor = start  # rule 3 cuts no lower
        self._size = float(start)
        self.peak = start
        self.slow_start = True
        self.inflation = 1.0  # smoothed RTT over the shape's lowest
        self._lowest: dict[str, tuple[float, float]] = {}  # shape -> (RTT, when it was seen)
        self._cut_at = -math.inf
        self.cuts = 0

    @classmethod
    def pinned(cls, bound: int) -> InFlightBound:
        return cls(start=bound, floor=bound, ceiling=bound)

    @property
    def bound(self) -> int:
        return max(self.floor, min(self.ceiling, int(self._size + 1e-9)))  # 9 x 1/9 is 1

    @property
    def adaptive(self) -> bool:
        return self.floor < self.ceiling

    def answered(self, answer: Answer) -> int:
        """An answer arrived: the bound after it (rules 1, 3 and 4)."""
        rtt = max(answer.now - answer.sent, 1e-6)
        lowest, seen_at = self._lowest.get(answer.shape, (math.inf, answer.now))
        if rtt <= lowest or answer.now - seen_at > MIN_RTT_WINDOW:
            lowest, seen_at = rtt, answer.now
            self._lowest[answer.shape] = (lowest, seen_at)
        inflation = rtt / lowest
        self.inflation += INFLATION_WEIGHT * (inflation - self.inflation)
        if self.inflation > LATENCY_TOLERANCE:
            if self.bound > self.latency_floor:
                self._cut(answer.sent, answer.now, LATENCY_CUT, self.latency_floor)
        elif (
            answer.saturated
            and not answer.held_back
            and max(inflation, self.inflation) <= GROWTH_TOLERANCE
            and (answer.room is None or answer.room > 0)
        ):
            step = 1.0 if self.slow_start else 1.0 / self.bound
            grown = self._size + step
            if answer.room is not None:
                grown = min(grown, float(max(self.bound, answer.in_flight + answer.room)))
            self._size = min(float(self.ceiling), max(self._size, grown))
        self.peak = max(self.peak, self.bound)
        return self.bound

    def overloaded(self, sent: float, now: float) -> int:
        """A 429, a 5xx, a timeout or a broken connection: the bound after it (rule 2)."""
        self._cut(sent, now, OVERLOAD_CUT, self.floor)
        return self.bound

    def _cut(self, sent: float, now: float, factor: float, lowest: int) -> None:
        if sent < self._cut_at or not self.adaptive:
            return  # sent before the last cut: it speaks of the old bound
        self._size = max(float(lowest), min(self._size, float(self.bound)) * factor)
        self.slow_start = False
        self._cut_at = now
        self.cuts += 1


class ResizableSemaphore(asyncio.Semaphore):
    """A first-come, first-served semaphore whose `limit` can change while slots are held.

    Growing wakes waiters at once; shrinking takes effect as holders release (none is revoked).
    A subclass of `asyncio.Semaphore` so that it goes wherever one is expected (the page credits
    every fetcher and the writer share); none of the base class's state is used.
    """

    def __init__(self, limit: int) -> None:
        super().__init__(0)
        if limit < 1:
            raise ValueError("a semaphore's limit is at least 1")
        self._limit = limit
        self._held = 0
        self._queue: deque[asyncio.Future[None]] = deque()

    @property
    def limit(self) -> int:
        return self._limit

    @limit.setter
    def limit(self, value: int) -> None:
        if value < 1:
            raise ValueError("a semaphore's limit is at least 1")
        self._limit = value
        self._wake()

    @property
    def held(self) -> int:
        return self._held

    @property
    def waiting(self) -> int:
        return sum(1 for waiter in self._queue if not waiter.done())

    def locked(self) -> bool:
        return self._held >= self._limit or self.waiting > 0

    async def acquire(self) -> Literal[True]:
        if not self.locked():
            self._held += 1
            return True
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._queue.append(waiter)
        try:
            await waiter
        except asyncio.CancelledError:
            if waiter.done() and not waiter.cancelled():
                self.release()  # handed a slot, then cancelled before it could use it
            elif waiter in self._queue:  # (`_wake` drops a cancelled waiter it meets)
                self._queue.remove(waiter)
            raise
        return True

    def release(self) -> None:
        if self._held <= 0:
            raise ValueError("ResizableSemaphore released more often than acquired")
        self._held -= 1
        self._wake()

    def _wake(self) -> None:
        """Hand free slots to the waiters, oldest first (a slot handed over is already held)."""
        while self._queue and self._held < self._limit:
            waiter = self._queue.popleft()
            if not waiter.done():
                self._held += 1
                waiter.set_result(None)

    def __repr__(self) -> str:
        return f"<ResizableSemaphore {self._held}/{self._limit} held, {self.waiting} waiting>"
