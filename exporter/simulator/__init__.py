"""An Outreach-compatible REST API v2 simulator over deterministic data, with faults, for tests and demos."""

from __future__ import annotations

from .config import Faults, SimulatorConfig
from .server import Counters, Simulator, Truth, serve, serve_in_thread

__all__ = [
    "Counters",
    "Faults",
    "Simulator",
    "SimulatorConfig",
    "Truth",
    "serve",
    "serve_in_thread",
]
