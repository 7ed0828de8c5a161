"""A run's progress as data (`Snapshot`, read from the run's counters) and the `Reporter` that shows it while the run goes."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol


@dataclass
class ResourceProgress:
    records: int = 0
    pages: int = 0
    total: int | None = None  # from `count=true`, when the API gave one


@dataclass
class Snapshot:
    elapsed: float
    phase: str
    resources: dict[str, ResourceProgress] = field(default_factory=dict)
    requests: int = 0
    retries: int = 0
    rate_remaining: int | None = None
    waited: float = 0.0  # seconds spent waiting on the rate limit
    in_flight_bound: int | None = None  # requests allowed in flight now (adaptive: it moves)

    def records(self) -> int:
        return sum(r.records for r in self.resources.values())

    def to_json(self) -> dict[str, Any]:
        return {
            "elapsed": round(self.elapsed, 3),
            "phase": self.phase,
            "records": self.records(),
            "resources": {
                k: {"records": v.records, "pages": v.pages, "total": v.total}
                for k, v in self.resources.items()
            },
            "requests": self.requests,
            "retries": self.retries,
            "rate_remaining": self.rate_remaining,
            "rate_wait_seconds": round(self.waited, 3),
            "in_flight_bound": self.in_flight_bound,
        }


class Reporter(Protocol):
    """Shows a run's progress while it goes (`commands.display.ProgressDisplay` at the terminal)."""

    async def run(self) -> None:
        """Until cancelled."""
