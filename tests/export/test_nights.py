"""Nights of inserts, updates, deletes and relationship moves in every exported type, each followed by a killed and resumed `--incremental --detect-deletes` run, then compared with the simulator's ground truth."""

from __future__ import annotations

import os
import random
import shutil
import signal
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from exporter.backup.compact import compact, inverse_columns, read_current
from exporter.model.normalize import table_layout
from exporter.model.schema import RESOURCE_TYPES
from exporter.simulator import Faults
from tests.conftest import Running, StartSimulator
from tests.export.test_relationships import expected_related
from tests.export.test_resume import export_command, run_to_completion
from tests.export.test_resume_incremental import assert_consistent, timed_run
from tests.truth import expected_row

NIGHTS = int(os.environ.get("NIGHTS", "4"))
SEED = int(os.environ.get("NIGHTS_SEED", "71"))
PER_KIND = 3  # per type and night: inserts, updates, moves and deletes each
INCREMENTAL = ("--incremental", "--detect-deletes")
KINDS = ("insert", "update", "move", "delete")
# Lookup tables keep a few records: the API's accounts always have some.
KEEP_AT_LEAST = {"user": 3, "callPurpose": 3, "taskPriority": 3}


def night(running: Running, rng: random.Random) -> Counter[str]:
    """One night's changes: of every kind in every type (moves only where a type has a
    relationship to move: a task priority has none)."""
    store, truth = running.sim.store, running.sim.truth
    done: Counter[str] = Counter()
    for type_name in RESOURCE_TYPES:
        for kind in KINDS:
            for _ in range(PER_KIND):
                ids = truth.ids(type_name)
                if kind == "insert":
                    store.insert(type_name)
                elif kind == "update":
                    store.update(type_name, rng.choice(ids))
                elif kind == "move":
                    if store.move(type_name, rng.choice(ids)) is None:
                        continue
                elif len(ids) <= KEEP_AT_LEAST.get(type_name, 0):
                    continue
                else:
                    store.delete(type_name, rng.choice(ids))
                done[f"{kind} {type_name}"] += 1
    return done


def current(out: Path, type_name: str) -> dict[int, dict[str, Any]]:
    """The published current state of `type_name` (the set `_current/_current.json` names)."""
    _generation, tables = read_current(out)
    table = tables.get(type_name)
    return {} if table is None else {r["id"]: r for r in table.to_pylist()}


def columns_of(type_name: str) -> dict[str, str]:
    layout = table_layout(type_name)
    return {c.relationship.name: c.column for c in (*layout.to_one, *layout.to_many)}


def assert_current_state_is_the_truth(
    running: Running, out: Path, held: dict[str, set[int]]
) -> None:
    """Compact, then: every record the backup holds or the live steps reach is there, every
    field (relationship ids included) as the API serves it now; every deleted one is gone."""
    sim = running.sim
    compact(out)
    steps = list(sim.truth.records("sequenceStep"))
    reached = {t: {r["id"] for r in rows} for t, rows in expected_related(sim, steps).items()}
    reached["sequenceStep"] = {int(s["id"]) for s in steps}
    for type_name in RESOURCE_TYPES:
        rows = current(out, type_name)
        held[type_name] |= set(rows)
        deleted = sim.truth.deleted_ids(type_name)
        gone = deleted & set(rows)
        assert not gone, f"{type_name}: deleted by the API but current: {sorted(gone)[:10]}"
        missing = reached.get(type_name, set()) - set(rows)
        assert not missing, (
            f"{type_name}: reached by a live step but absent: {sorted(missing)[:10]}"
        )
        lost = (held[type_name] - deleted) - set(rows)
        assert not lost, f"{type_name}: held once, still live, but absent: {sorted(lost)[:10]}"
        for record_id, got in rows.items():
            truth = sim.truth.get(type_name, record_id)
            assert truth is not None
            want = expected_row(truth, columns_of(type_name))
            for column, _target, _back in inverse_columns(type_name):
                # Derived by compaction from the members' to-one column, ids ascending.
                want[column] = sorted(want[column] or [])
            differing = sorted(k for k in want if got[k] != want[k])
            assert not differing, (
                f"{type_name} {record_id}: {[(k, got[k], want[k]) for k in differing][:3]}"
            )
            assert got["_extra"] is None


@pytest.mark.slow
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
        if number == 0:
            # An uninterrupted run on a copy says how long a night's run takes: the kills are
            # spread over that.
            reference = tmp_path / "reference"
            shutil.copytree(out, reference, ignore=shutil.ignore_patterns("_current", "_lock"))
            _startup, duration = await timed_run(
                export_command(running, reference, *INCREMENTAL), reference
            )
            shutil.rmtree(reference)
        # One to three kills at any instant of a run (its start-up included: a run killed
        # before its first commit is a case too); a resumed run has less to do, so a later kill
        # may come after it finished: only the kills that landed are counted.
        # The first kill falls in the first 60% of a run's measured length, so it lands unless
        # the machine got much faster since the measure.
        kills = [rng.uniform(0.1, 0.6 * duration)]
        kills += [rng.uniform(0.1, duration) for _ in range(rng.randint(0, 2))]
        code, codes = await run_to_completion(export_command(running, out, *INCREMENTAL), kills)
        assert code == 0, codes
        kills_landed += sum(1 for c in codes[:-1] if c == -signal.SIGKILL)
        assert_consistent(out)
        assert_current_state_is_the_truth(running, out, held)

    for type_name in RESOURCE_TYPES:
        for kind in KINDS:
            if kind == "move" and type_name == "taskPriority":
                continue
            assert changes[f"{kind} {type_name}"] > 0, (kind, type_name, changes)
    assert kills_landed >= NIGHTS // 2, kills_landed
    print(f"{NIGHTS} nights, {sum(changes.values())} changes, {kills_landed} runs killed")
