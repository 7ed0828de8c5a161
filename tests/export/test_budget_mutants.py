"""Request budgets as assertions: an incremental run on small data spends a stated number of requests, and never asks again for related records the backup holds."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.helpers.requests import watch
from tests.helpers.runs import run_export
from tests.helpers.sim import StartSimulator

# The fewest requests an incremental run with relationships=sequence can make: identify, the
# root's two probes (count, newest), one page of changes, one probe of sequences.
MINIMUM = 5
# What it may spend over that: the crawl cuts the changed id range into partitions (13 single-id
# ranges on this data, measured 2026-12: 17 requests in all).
OVER = 12


@pytest.mark.slow
async def test_an_incremental_run_keeps_its_budget_and_refetches_nothing_held(
    start_simulator: StartSimulator, tmp_path: Path
) -> None:
    """Bug caught: the relationship walk asking again for sequences the backup already holds
    (the 50 sequences the full run fetched would come back as `filter[id]` batches), or any
    other request spent twice: the run's GETs counted by the simulator."""
    running = await start_simulator(steps=300, seed=62)
    log = watch(running)
    await run_export(running.base_url, tmp_path, relationships="sequence")
    held = log.asked_ids("sequences")
    assert set(held) == set(running.sim.truth.ids("sequence")) and set(held.values()) == {1}
    log.clear()
    for value in running.sim.truth.ids("sequenceStep")[:5]:
        running.sim.store.update("sequenceStep", int(value))
    _job, delta = await run_export(
        running.base_url, tmp_path, relationships="sequence", incremental=True
    )
    assert delta.rows["sequenceStep"] == 5
    assert log.asked_ids("sequences") == {}  # every referenced sequence is already held
    assert MINIMUM <= len(log.lines()) <= MINIMUM + OVER, log.lines()
