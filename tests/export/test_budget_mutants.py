"""Request budgets as assertions: an incremental run on small data spends a stated number of requests, and never asks again for related records the backup holds."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.helpers.requests import watch
from tests.helpers.runs import run_export
from tests.helpers.sim import StartSimulator

# The fewest requests an incremental run with relationships=sequence can make: identify, the
# first page of the steps' changes (count=true), the first page of the sequences' changes.
MINIMUM = 3
# What it may spend over that: nothing. The changes fit one page, and a crawl whose changes fit
# one page asks for no more (before issue 16 it probed both ends of the changed id range and cut
# it into partitions: 17 requests on this data).
OVER = 0


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
