"""Shared fixtures: a real simulator on a loopback port, and export helpers."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AsyncExitStack
from dataclasses import dataclass
from typing import Any

import pytest

from exporter.simulator import Simulator, SimulatorConfig, serve

TOKEN = "test-token-3b9f"  # the simulator's static token in tests


@dataclass
class Running:
    sim: Simulator
    root_url: str

    @property
    def base_url(self) -> str:
        return self.root_url + "/api/v2"


StartSimulator = Callable[..., Awaitable[Running]]


@pytest.fixture
async def start_simulator() -> AsyncIterator[StartSimulator]:
    """Start simulators on free loopback ports; all are stopped at the end of the test."""
    async with AsyncExitStack() as stack:

        async def start(**config: Any) -> Running:
            config.setdefault("static_token", TOKEN)
            sim = Simulator(SimulatorConfig(**config))
            root_url = await stack.enter_async_context(serve(sim, host="127.0.0.1", port=0))
            return Running(sim, root_url)

        yield start
