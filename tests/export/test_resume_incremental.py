"""Kill nightly incremental runs (`--incremental --detect-deletes`) at random instants (SIGKILL), resume them, and get exactly the simulator's ground truth after compaction."""

from __future__ import annotations

import os
import random
import signal
from pathlib import Path

import orjson
import pytest

from exporter.simulator import Faults
from tests.helpers.checks import (
    assert_compacted_equals_truth,
    assert_consistent,
)
from tests.helpers.runs import export_command, run_killed_after_commits, run_to_completion
from tests.helpers.sim import Running, StartSimulator, mutate

pytestmark = pytest.mark.slow  # nightly runs killed at random instants: minutes

ROUNDS = int(os.environ.get("RESUME_INCREMENTAL_ROUNDS", "7"))
MUTATIONS = 60  # per round, of every kind `mutate` makes
INCREMENTAL = ("--incremental", "--detect-deletes")


def assert_round_exact(running: Running, out: Path) -> None:
    """The backup is consistent, and compacts (in place) to the simulator's ground truth."""
    assert_consistent(out)
    assert_compacted_equals_truth(running, out)  # compacts `out` first


async def test_sigkill_incremental_runs_with_deletion_detection_then_resume_is_exact(
    start_simulator: StartSimulator, tmp_path: Path
) -> None:
    running = await start_simulator(
        steps=1500, seed=51, faults=Faults(latency_s=0.004), rate_limit=10**9
    )
    rng = random.Random(51)
    out = tmp_path / "killed"
    code, _codes = await run_to_completion(export_command(running, out), [])
    assert code == 0
    assert_round_exact(running, out)
    kills_done = resumed = 0
    for _round in range(ROUNDS):
        changes = mutate(running, rng, MUTATIONS)
        assert sum(changes.values()) == MUTATIONS
        # One to three kills, each after the restarted run's 1st to 3rd commit (an incremental
        # run commits its mark before any data, then as its pages are written).
        commits = [rng.randint(1, 3) for _ in range(rng.randint(1, 3))]
        command = export_command(running, out, *INCREMENTAL)
        code, codes = await run_killed_after_commits(command, out, commits)
        assert code == 0, codes
        landed = sum(1 for c in codes[:-1] if c == -signal.SIGKILL)
        # The first kill of a round always lands: a run's first commit comes before its data.
        assert landed >= 1, codes
        kills_done += landed
        assert_round_exact(running, out)
        # Whether the round's last run resumed what a kill left (not when no kill landed, or
        # when the last one came after the run had finished: the next run was then a new one).
        resumed += orjson.loads((out / "_manifest.json").read_bytes())["stats"]["resumed"]

    manifest = orjson.loads((out / "_manifest.json").read_bytes())
    kinds = [r["kind"] for r in manifest["runs"]]
    # At least one incremental run per round (more when a kill landed after a run had finished).
    assert kinds[0] == "full" and kinds.count("incremental") >= ROUNDS, kinds
    assert kills_done >= ROUNDS  # at least the first kill of every round landed
    print(f"{kills_done} runs killed over {ROUNDS} rounds, {resumed} rounds finished by a resume")
