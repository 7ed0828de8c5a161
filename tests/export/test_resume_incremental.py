"""Kill nightly incremental runs (`--incremental --detect-deletes`) at random instants (SIGKILL), resume them, and get exactly the simulator's ground truth after compaction."""

from __future__ import annotations

import os
import random
import shutil
import signal
from pathlib import Path

import orjson
import pytest

from exporter.simulator import Faults
from tests.helpers.checks import (
    assert_compacted_equals_truth,
    assert_consistent,
)
from tests.helpers.runs import export_command, run_to_completion, timed_run
from tests.helpers.sim import Running, StartSimulator, mutate

pytestmark = pytest.mark.slow  # nightly runs killed at random instants: minutes

ROUNDS = int(os.environ.get("RESUME_INCREMENTAL_ROUNDS", "7"))
MUTATIONS = 60  # per round, of every kind `mutate` makes
INCREMENTAL = ("--incremental", "--detect-deletes")


def assert_round_exact(running: Running, out: Path) -> None:
    """The backup is consistent, and compacts (in place) to the simulator's ground truth."""
    assert_consistent(out)
    assert_compacted_equals_truth(running, out)  # compacts `out` first


def kill_delays(rng: random.Random, startup: float, duration: float) -> list[float]:
    """One to three kill instants, each after a (re)started run's first commit and before the
    work that the earlier kills left is done (a resumed run has only the rest to do)."""
    delays: list[float] = []
    left = duration - startup  # seconds of work after the first commit
    for _ in range(rng.randint(1, 3)):
        delays.append(rng.uniform(startup, startup + max(left, 0.05)))
        left -= delays[-1] - startup
    return delays


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
    # An uninterrupted incremental run, from a copy of the backup, says when a run starts to
    # commit and how long it takes: the kills are spread over that. Every round's delta is
    # about as large, so one measure serves all rounds.
    reference = tmp_path / "reference"
    shutil.copytree(out, reference, ignore=shutil.ignore_patterns("_current", "_lock"))
    changes = mutate(running, rng, MUTATIONS)
    assert sum(changes.values()) == MUTATIONS
    startup, duration = await timed_run(export_command(running, reference, *INCREMENTAL), reference)
    assert_consistent(reference)
    shutil.rmtree(reference)

    kills_done = resumed = 0
    for round_number in range(ROUNDS):
        if round_number > 0:
            changes = mutate(running, rng, MUTATIONS)
            assert sum(changes.values()) == MUTATIONS
        kills = kill_delays(rng, startup, duration)
        code, codes = await run_to_completion(export_command(running, out, *INCREMENTAL), kills)
        assert code == 0, codes
        kills_done += sum(1 for c in codes[:-1] if c == -signal.SIGKILL)
        assert_round_exact(running, out)
        # Whether the round's last run resumed what a kill left (not when no kill landed, or
        # when the last one came after the run had finished: the next run was then a new one).
        resumed += orjson.loads((out / "_manifest.json").read_bytes())["stats"]["resumed"]

    manifest = orjson.loads((out / "_manifest.json").read_bytes())
    kinds = [r["kind"] for r in manifest["runs"]]
    # At least one incremental run per round (more when a kill landed after a run had finished).
    assert kinds[0] == "full" and kinds.count("incremental") >= ROUNDS, kinds
    assert kills_done > 0  # the kills are spread over a run's measured length: some land
    print(f"{kills_done} runs killed over {ROUNDS} rounds, {resumed} rounds finished by a resume")
