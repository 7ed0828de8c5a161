"""Shared fixtures: a real simulator on a loopback port, and export helpers."""

from __future__ import annotations

import asyncio
import os
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


def clean_env(**extra: str) -> dict[str, str]:
    """This process's environment without OUTREACH_* (so no developer's settings leak into a
    test's subprocess), plus `extra`."""
    return {**{k: v for k, v in os.environ.items() if not k.startswith("OUTREACH_")}, **extra}


async def spawn(*command: str, env: dict[str, str] | None = None) -> asyncio.subprocess.Process:
    """Start a subprocess with its output piped, in `clean_env()` unless told otherwise."""
    return await asyncio.create_subprocess_exec(
        *command,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=clean_env() if env is None else env,
    )
