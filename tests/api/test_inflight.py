"""The in-flight bound on plain values: the AIMD policy (grow, cut on overload and rising latency, the budget's cap, pinned) and the resizable semaphore it drives."""

from __future__ import annotations

import asyncio
import itertools

import pytest

from exporter.api.inflight import (
    LATENCY_CUT,
    MIN_RTT_WINDOW,
    Answer,
    InFlightBound,
    ResizableSemaphore,
)

PAGE = "GET /api/v2/sequenceSteps 1000"
PROBE = "GET /api/v2/sequenceSteps 1"


class Clock:
    """Answers arrive at times this test chooses: `answer` one that took `rtt` seconds."""

    def __init__(self) -> None:
        self.now = 100.0

    def answer(
        self,
        rtt: float = 0.3,
        *,
        shape: str = PAGE,
        saturated: bool = True,
        held_back: bool = False,
        in_flight: int = 8,
        room: int | None = None,
        gap: float = 0.01,
    ) -> Answer:
        self.now += gap
        return Answer(
            sent=self.now - rtt,
            now=self.now,
            shape=shape,
            saturated=saturated,
            held_back=held_back,
            in_flight=in_flight,
            room=room,
        )

    def overloads(self, bound: InFlightBound, count: int) -> int:
        """`count` overloads a second apart (each from a request sent after the last cut)."""
        for _ in range(count):
            self.now += 1.0
            bound.overloaded(self.now - 0.1, self.now)
        return bound.bound

    def answers(self, bound: InFlightBound, count: int, rtt: float = 0.3, gap: float = 0.01) -> int:
        """`count` answers of `rtt` seconds, each while others wait for a slot."""
        for _ in range(count):
            bound.answered(self.answer(rtt, gap=gap))
        return bound.bound


def test_slow_start_grows_by_one_per_answer_while_requests_wait_for_a_slot() -> None:
    bound, clock = InFlightBound(start=8, ceiling=64), Clock()
    seen = [bound.answered(clock.answer()) for _ in range(8)]
    assert seen == list(range(9, 17))  # one round trip of 8 answers: doubled
    assert bound.slow_start and bound.peak == 16


def test_it_never_passes_the_ceiling() -> None:
    bound, clock = InFlightBound(start=8, ceiling=20), Clock()
    for _ in range(100):
        bound.answered(clock.answer())
    assert bound.bound == 20 and bound.peak == 20


def test_no_growth_when_nothing_waits_for_a_slot() -> None:
    """The caller, not the bound, limits (a single chain, a writer holding the page credits)."""
    bound, clock = InFlightBound(start=8), Clock()
    for _ in range(50):
        bound.answered(clock.answer(saturated=False))
    assert bound.bound == 8


def test_no_growth_while_the_request_budget_holds_requests_back() -> None:
    """A bound the budget cannot feed only makes requests queue for their turn."""
    bound, clock = InFlightBound(start=8), Clock()
    for _ in range(50):
        bound.answered(clock.answer(held_back=True))
    assert bound.bound == 8


def test_growth_stops_at_what_the_budgets_have_room_for() -> None:
    """8 in flight and room for 3 more starts (X-RateLimit-Remaining or the configured rate):
    the bound grows to 11 and no further; with no room at all it does not grow."""
    bound, clock = InFlightBound(start=8), Clock()
    for _ in range(50):
        bound.answered(clock.answer(in_flight=8, room=3))
    assert bound.bound == 11
    empty = InFlightBound(start=8)
    for _ in range(50):
        empty.answered(clock.answer(in_flight=8, room=0))
    assert empty.bound == 8


def test_the_budget_never_cuts_the_bound() -> None:
    """A nearly spent window stops growth; it is no sign of overload (the budgets pace starts)."""
    bound, clock = InFlightBound(start=8), Clock()
    for _ in range(8):
        bound.answered(clock.answer())
    assert bound.bound == 16
    for _ in range(20):
        bound.answered(clock.answer(in_flight=16, room=1))
    assert bound.bound == 17  # room for one more start: grown by one, never cut
    assert bound.cuts == 0


def test_overload_halves_the_bound_once_per_round_trip() -> None:
    """A 429, 5xx or timeout halves it; the other failures of the same burst (requests sent
    before the cut) do not halve it again; a request sent after the cut does."""
    bound, clock = InFlightBound(start=16), Clock()
    sent_before = clock.now - 0.3
    clock.now += 0.01
    assert bound.overloaded(sent_before, clock.now) == 8
    assert bound.overloaded(sent_before, clock.now + 0.01) == 8  # same burst: ignored
    assert not bound.slow_start
    clock.now += 0.5
    assert bound.overloaded(clock.now - 0.1, clock.now) == 4  # sent after the cut
    assert bound.cuts == 2


def test_overload_never_takes_the_bound_below_the_floor() -> None:
    assert Clock().overloads(InFlightBound(start=8), 20) == 1


def test_after_a_cut_it_grows_by_one_per_round_trip() -> None:
    bound, clock = InFlightBound(start=16), Clock()
    bound.overloaded(clock.now - 0.3, clock.now)
    assert bound.bound == 8
    assert clock.answers(bound, 8) == 9  # one round trip's answers at a bound of 8
    assert clock.answers(bound, 9) == 10


def test_rising_latency_cuts_the_bound() -> None:
    """Pages that took 0.3 s start taking 1 s (they queue somewhere): the bound is cut by a
    fifth once the smoothed round trip passes twice the lowest, at most once per round trip."""
    bound, clock = InFlightBound(start=8), Clock()
    assert clock.answers(bound, 8) == 16
    seen = []
    for _ in range(40):
        seen.append(bound.answered(clock.answer(1.0, gap=0.1)))
    assert bound.bound < 16 and bound.cuts >= 2
    assert seen[0] == 16  # one slow answer alone is smoothed, not acted on
    assert int(16 * LATENCY_CUT) in seen  # the first cut: by a fifth, not halved
    assert all(b > a * 0.5 for a, b in itertools.pairwise(seen))  # gently


def test_rising_latency_never_cuts_below_the_start_but_overload_does() -> None:
    """Queueing may be this host's own CPU: latency takes the bound back to where it started
    (8), no lower; the API's pushback (a 429, a 5xx, a timeout) goes down to the floor."""
    bound, clock = InFlightBound(start=8), Clock()
    assert clock.answers(bound, 8) == 16
    assert clock.answers(bound, 40, rtt=3.0, gap=0.5) == 8  # 20 s: in the lowest RTT's window
    assert bound.cuts >= 2
    assert clock.overloads(bound, 5) == 1


def test_moderate_latency_holds_the_bound() -> None:
    """Between 1.5x and 2x the lowest round trip: neither grown nor cut."""
    bound, clock = InFlightBound(start=8), Clock()
    bound.answered(clock.answer(0.3, saturated=False))
    for _ in range(50):
        bound.answered(clock.answer(0.52))
    assert bound.bound == 8 and bound.cuts == 0


def test_each_shape_has_its_own_lowest_round_trip() -> None:
    """A one-record probe answers in 5 ms, a full page in 300 ms: the page is not 'inflated'."""
    bound, clock = InFlightBound(start=8), Clock()
    for _ in range(3):
        bound.answered(clock.answer(0.005, shape=PROBE, saturated=False))
    for _ in range(8):
        bound.answered(clock.answer(0.3))
    assert bound.bound == 16 and bound.cuts == 0


def test_the_lowest_round_trip_is_learnt_again_after_its_window() -> None:
    """A route that became slower for good is not read as queueing forever."""
    bound, clock = InFlightBound(start=8), Clock()
    bound.answered(clock.answer(0.1, saturated=False))
    clock.now += MIN_RTT_WINDOW + 1
    for _ in range(30):
        bound.answered(clock.answer(0.5, saturated=False, gap=0.1))
    assert bound.cuts == 0 and bound.inflation < 1.5


def test_a_pinned_bound_never_moves() -> None:
    bound, clock = InFlightBound.pinned(5), Clock()
    assert not bound.adaptive
    for _ in range(30):
        bound.answered(clock.answer(0.3))
    for _ in range(10):
        bound.answered(clock.answer(3.0, gap=1.0))
        clock.now += 1.0
        bound.overloaded(clock.now - 0.1, clock.now)
    assert bound.bound == 5 and bound.peak == 5 and bound.cuts == 0


def test_bad_bounds_are_refused() -> None:
    with pytest.raises(ValueError, match="1 <= floor <= start <= ceiling"):
        InFlightBound(start=70, ceiling=64)
    with pytest.raises(ValueError, match="1 <= floor <= start <= ceiling"):
        InFlightBound(start=0)


# -- the semaphore ----------------------------------------------------------------------------


async def test_a_grown_limit_lets_waiters_in_first_come_first_served() -> None:
    slots = ResizableSemaphore(1)
    await slots.acquire()
    order: list[int] = []

    async def waiter(n: int) -> None:
        await slots.acquire()
        order.append(n)

    tasks = [asyncio.create_task(waiter(n)) for n in range(3)]
    await asyncio.sleep(0)
    assert slots.waiting == 3 and slots.locked()
    slots.limit = 3
    await asyncio.sleep(0)
    assert order == [0, 1] and slots.held == 3 and slots.waiting == 1
    slots.release()
    await asyncio.gather(*tasks)
    assert order == [0, 1, 2] and slots.held == 3


async def test_a_shrunk_limit_takes_effect_as_holders_release() -> None:
    slots = ResizableSemaphore(4)
    for _ in range(4):
        await slots.acquire()
    slots.limit = 2  # nobody's slot is taken away
    assert slots.held == 4
    late = asyncio.create_task(slots.acquire())
    await asyncio.sleep(0)
    slots.release()
    slots.release()
    await asyncio.sleep(0)
    assert not late.done() and slots.held == 2  # still at the new limit
    slots.release()
    await asyncio.sleep(0)
    assert late.done() and slots.held == 2


async def test_a_cancelled_waiter_leaves_no_slot_taken() -> None:
    slots = ResizableSemaphore(1)
    await slots.acquire()
    waiting = asyncio.create_task(slots.acquire())
    await asyncio.sleep(0)
    waiting.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiting
    assert slots.waiting == 0
    slots.release()
    assert slots.held == 0 and not slots.locked()


async def test_a_waiter_cancelled_after_being_handed_a_slot_gives_it_back() -> None:
    slots = ResizableSemaphore(1)
    await slots.acquire()
    waiting = asyncio.create_task(slots.acquire())
    await asyncio.sleep(0)
    slots.release()  # handed to the waiter, which has not run yet
    waiting.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiting
    assert slots.held == 0


async def test_it_serves_as_an_asyncio_semaphore() -> None:
    slots = ResizableSemaphore(2)
    assert isinstance(slots, asyncio.Semaphore)
    async with slots:
        assert slots.held == 1
    assert slots.held == 0
    with pytest.raises(ValueError, match="released more often than acquired"):
        slots.release()
    with pytest.raises(ValueError, match="at least 1"):
        slots.limit = 0
