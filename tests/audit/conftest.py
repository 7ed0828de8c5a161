"""Fixtures of the audit tests: a finished export to verify."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.helpers.runs import run_export
from tests.helpers.sim import StartSimulator


@pytest.fixture
async def backup(start_simulator: StartSimulator, tmp_path: Path) -> Path:
    """A finished export: several step files (rolled at 200 rows) and two related types."""
    running = await start_simulator(steps=700, seed=21)
    out = tmp_path / "backup"
    await run_export(
        running.base_url, out, relationships="sequence,creator", file_rows=200, page_size=100
    )
    return out
