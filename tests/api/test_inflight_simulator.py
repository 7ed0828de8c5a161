"""The adaptive in-flight bound against the simulator: it grows past 8 when pages wait on latency, it is cut by injected 429s and 5xx, and under a scaled-down rate limit its own pace earns no 429 (counts, never times)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import asynccontextmanager
from typing import Any

import pytest

from exporter.api.auth import StaticToken
from exporter.api.client import ApiClient, ClientSettings
from exporter.core.events import LOGGER
from exporter.core.secrets import Secret
from tests.helpers.sim import TOKEN, Running, StartSimulator

PAGE = "/sequenceSteps?page[size]=1"  # small: the round trip is the latency, not our CPU
FAST: dict[str, Any] = {"backoff_base": 0.001, "backoff_max": 0.01}


@asynccontextmanager
async def adaptive_client(running: Running, **settings: Any) -> AsyncIterator[ApiClient]:
    config = ClientSettings(
        base_url=running.base_url, concurrency=8, adaptive_ceiling=64, **{**FAST, **settings}
    )
    async with ApiClient(config, StaticToken(Secret(TOKEN))) as client:
        yield client


async def fetch(client: ApiClient, running: Running, count: int, workers: int = 64) -> None:
    """`count` GETs of one small page, by `workers` tasks (more than the bound can admit)."""
    left = iter(range(count))

    async def worker() -> None:
        for _ in left:
            await client.get_document(running.base_url + PAGE)

    async with asyncio.TaskGroup() as group:
        for _ in range(workers):
            group.create_task(worker())


class CutNotices(logging.Handler):
    """The client's DEBUG notices of a cut bound ("in-flight bound 24 -> 12 after a 429")."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        if getattr(record, "event", None) == "in_flight":
            self.messages.append(record.getMessage())


@contextlib.contextmanager
def cut_notices() -> Iterator[list[str]]:
    handler, level = CutNotices(), LOGGER.level
    LOGGER.addHandler(handler)
    LOGGER.setLevel(logging.DEBUG)
    try:
        yield handler.messages
    finally:
        LOGGER.removeHandler(handler)
        LOGGER.setLevel(level)


async def once_grown(client: ApiClient, bound: int, act: Callable[[], Awaitable[None]]) -> bool:
    """Run `act` once the client's bound reaches `bound`; whether it did (the caller cancels
    this when its requests are done: a bound that never grows fails the test, never hangs it)."""
    while client.stats.bound < bound:
        await asyncio.sleep(0.01)
    await act()
    return True


async def fetch_then(
    client: ApiClient, running: Running, count: int, trigger: asyncio.Task[bool]
) -> bool:
    """`fetch`, then whether `trigger` had run."""
    await fetch(client, running, count)
    if not trigger.done():
        trigger.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await trigger
        return False
    return trigger.result()


def halved(notice: str, cause: str) -> bool:
    """`notice` says the bound was halved (at least) by `cause`: "in-flight bound 24 -> 12
    after a 429"."""
    words = notice.split()
    return notice.endswith(cause) and int(words[4]) <= int(words[2]) // 2 < int(words[2])


async def test_the_bound_grows_past_8_when_pages_wait_on_latency(
    start_simulator: StartSimulator,
) -> None:
    running = await start_simulator(steps=50, seed=1, readable_text=True)
    running.sim.faults.latency_s = 0.25
    async with adaptive_client(running) as client:
        await fetch(client, running, 160)
    stats = client.stats
    assert stats.requests == 160 and stats.rate_limited == 0
    assert 8 < stats.peak_bound <= 64
    # The server saw it: more than 8 of our requests at once.
    assert running.sim.counters.max_in_flight > 8


async def test_a_pinned_bound_never_lets_more_through(start_simulator: StartSimulator) -> None:
    running = await start_simulator(steps=50, seed=1, readable_text=True)
    running.sim.faults.latency_s = 0.05
    config = ClientSettings(base_url=running.base_url, concurrency=8, **FAST)
    async with ApiClient(config, StaticToken(Secret(TOKEN))) as client:
        await fetch(client, running, 80)
    assert client.stats.peak_bound == 8 and client.stats.bound_cuts == 0
    assert running.sim.counters.max_in_flight <= 8


@pytest.mark.slow  # waits out the spent window (up to a second) and regrows
async def test_injected_429s_cut_the_bound(start_simulator: StartSimulator) -> None:
    """Another program spends the API's window while the bound is grown: the 429s that
    follow halve it."""
    running = await start_simulator(
        steps=50, seed=1, readable_text=True, rate_limit=100_000, rate_window=1.0
    )
    running.sim.faults.latency_s = 0.25
    history: list[int] = []

    async def spend() -> None:
        """Everything the window allows for 1.5 s: past a window's reset, so that requests
        sent after any earlier cut meet 429s too (a cut counts once per round trip)."""
        loop = asyncio.get_running_loop()
        until = loop.time() + 1.5
        while loop.time() < until:
            while running.sim.rate.acquire().allowed:
                pass
            await asyncio.sleep(0.005)

    with cut_notices() as notices:
        async with adaptive_client(running) as client:
            client.watch_bound(history.append)
            spender = asyncio.create_task(once_grown(client, 16, spend))
            assert await fetch_then(client, running, 100, spender), history
    assert client.stats.rate_limited > 0 and running.sim.counters.rate_limited > 0
    assert any(halved(n, "after a 429") for n in notices), notices


@pytest.mark.slow  # a second of failures, retried
async def test_injected_5xx_cut_the_bound(start_simulator: StartSimulator) -> None:
    running = await start_simulator(steps=50, seed=1, readable_text=True)
    running.sim.faults.latency_s = 0.25
    history: list[int] = []

    async def fail_a_while() -> None:
        running.sim.faults.error_rate = 0.3
        await asyncio.sleep(1.0)  # a few round trips of failures, then healthy again
        running.sim.faults.error_rate = 0.0

    with cut_notices() as notices:
        async with adaptive_client(running, max_attempts=20) as client:
            client.watch_bound(history.append)
            breaker = asyncio.create_task(once_grown(client, 16, fail_a_while))
            assert await fetch_then(client, running, 150, breaker), history
    assert client.stats.statuses[500] + client.stats.statuses[503] > 0
    assert any(halved(n, "after a 500") or halved(n, "after a 503") for n in notices), notices
    assert not client.in_flight.slow_start  # after a cut, one more per round trip at most


async def test_a_scaled_down_rate_limit_sees_no_429_from_our_own_pace(
    start_simulator: StartSimulator,
) -> None:
    """20 requests a second on both sides, 64 callers and 30 requests: the bound never grows past what the
    budget can start, and the API answers no 429."""
    running = await start_simulator(
        steps=50, seed=1, readable_text=True, rate_limit=20, rate_window=1.0
    )
    running.sim.faults.latency_s = 0.05
    async with adaptive_client(running, rate_limit=20, rate_period=1.0) as client:
        await fetch(client, running, 30)
    assert running.sim.counters.rate_limited == 0
    assert client.stats.rate_limited == 0 and client.stats.requests == 30
    assert client.stats.peak_bound <= 20
