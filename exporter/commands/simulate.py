"""`exporter simulate`: the simulator's own command (flags to a `SimulatorConfig`, served until a signal)."""

from __future__ import annotations

from exporter.simulator.cli import simulate

__all__ = ["simulate"]
