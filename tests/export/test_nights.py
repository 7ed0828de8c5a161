"""Nights of inserts, updates, deletes and relationship moves in every exported type, each followed by a killed and resumed `--incremental --detect-deletes` run, then compared with the simulator's ground truth."""

from __future__ import annotations

import os
import random
import shutil
import signal
from collections import Counter
from pathlib import Path

import pytest

from exporter.model.schema import RESOURCE_TYPES
from exporter.simulator import Faults
from tests.helpers.checks import assert_consistent, assert_current_state_is_the_truth
from tests.helpers.runs import (
    export_command,
    run_killed_after_commits,
    run_to_completion,
    timed_run,
)
from tests.helpers.sim import KINDS, StartSimulator, night

pytestmark = pytest.mark.slow  # nights of incremental runs killed on commits or at random: a minute

NIGHTS = int(os.environ.get("NIGHTS", "4"))
SEED = int(os.environ.get("NIGHTS_SEED", "71"))
INCREMENTAL = ("--incremental", "--detect-deletes")


async def test_nights_of_changes_with_kills_end_as_the_ground_truth(
    start_simulator: StartSimulator, tmp_path: Path
) -> None:
    running = await start_simulator(
        steps=600, seed=SEED, faults=Faults(latency_s=0.003), rate_limit=10**9
    )
    rng = random.Random(SEED)
    out = tmp_path / "backup"
    code, _codes = await run_to_completion(export_command(running, out), [])
    assert code == 0
    held: dict[str, set[int]] = {t: set() for t in RESOURCE_TYPES}
    assert_current_state_is_the_truth(running, out, held)

    changes: Counter[str] = Counter()
    kills_landed = 0
    duration = 0.0
    for number in range(NIGHTS):
        changes += night(running, rng)
        command = export_command(running, out, *INCREMENTAL)
        if number % 2 == 0:
            # Even nights: kills synchronised on commits, the first after the run's first
            # commit (its mark, before any data), so it lands however loaded the machine is;
            # the next ones after one to three further commits, when the run has them.
            commits = [1, *(rng.randint(1, 3) for _ in range(rng.randint(0, 2)))]
            code, codes = await run_killed_after_commits(command, out, commits)
            assert code == 0, codes
            assert codes[0] == -signal.SIGKILL, codes  # the first kill landed
        else:
            if duration == 0.0:
                # An uninterrupted run on a copy says how long a night's run takes: the
                # kills are spread over that.
                reference = tmp_path / "reference"
                shutil.copytree(out, reference, ignore=shutil.ignore_patterns("_current", "_lock"))
                _startup, duration = await timed_run(command, reference)
                shutil.rmtree(reference)
            # Odd nights: one to three kills at any instant of a run (its start-up included:
            # a run killed before its first commit is a case too); a resumed run has less to
            # do, so a later kill may come after it finished: only those that landed count.
            kills = [rng.uniform(0.1, 0.6 * duration)]
            kills += [rng.uniform(0.1, duration) for _ in range(rng.randint(0, 2))]
            code, codes = await run_to_completion(command, kills)
            assert code == 0, codes
        kills_landed += sum(1 for c in codes[:-1] if c == -signal.SIGKILL)
        assert_consistent(out)
        assert_current_state_is_the_truth(running, out, held)

    for type_name in RESOURCE_TYPES:
        for kind in KINDS:
            if kind == "move" and type_name == "taskPriority":
                continue
            assert changes[f"{kind} {type_name}"] > 0, (kind, type_name, changes)
    print(f"{NIGHTS} nights, {sum(changes.values())} changes, {kills_landed} runs killed")
