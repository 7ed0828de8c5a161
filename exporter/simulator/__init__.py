"""An Outreach-compatible REST API v2 simulator over deterministic data, with faults, for tests and demos."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .config import Faults, SimulatorConfig

if TYPE_CHECKING:
    from .server import Counters, Simulator, Truth, serve, serve_in_thread

# The server (aiohttp) is imported when one of its names is first used, not with the package:
# `exporter simulate --help` and the exporter's own commands never wait for it.
_SERVER_NAMES = frozenset({"Counters", "Simulator", "Truth", "serve", "serve_in_thread"})


def __getattr__(name: str) -> Any:
    if name in _SERVER_NAMES:
        from . import server

        return getattr(server, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "Counters",
    "Faults",
    "Simulator",
    "SimulatorConfig",
    "Truth",
    "serve",
    "serve_in_thread",
]
