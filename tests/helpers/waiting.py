"""Waiting for what a test expects to happen: a condition polled until a deadline, failing with what was awaited (never a bare sleep that hopes it happened)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")

EVERY = 0.005  # seconds between two looks: short next to anything a test waits for


async def wait_until(
    condition: Callable[[], T],
    *,
    what: str,
    timeout: float = 30.0,
    process: asyncio.subprocess.Process | None = None,
) -> T:
    """Poll `condition()` until it is truthy and return that value; fail naming `what` after
    `timeout` seconds, or as soon as `process` (the run that should make it happen) has ended."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not (value := condition()):
        if process is not None and process.returncode is not None:
            raise AssertionError(f"the process ended (code {process.returncode}) before {what}")
        if loop.time() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        await asyncio.sleep(EVERY)
    return value


def wait_until_blocking(condition: Callable[[], T], *, what: str, timeout: float = 30.0) -> T:
    """`wait_until` for a test without an event loop (threads, a store's background renewal)."""
    deadline = time.monotonic() + timeout
    while not (value := condition()):
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(EVERY)
    return value
