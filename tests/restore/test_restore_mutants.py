"""Mutants of restore/restore.py's lookups (settling lost answers) that the suite let live, each killed by a test naming its one-line bug."""

from __future__ import annotations

from pathlib import Path

import pytest

from exporter.core.errors import ExitCode
from exporter.restore.journal import Journal, replay
from exporter.restore.restore import create_body, default_journal, lookup_key, patch_body
from tests.helpers.restore import account, exported, post, restore, target, writes
from tests.helpers.sim import StartSimulator


@pytest.mark.slow  # an export, then a plan and an applied restore: seconds
async def test_lost_answers_settled_plan_only_then_applied(
    start_simulator: StartSimulator, tmp_path: Path
) -> None:
    """A create whose answer was lost, and that landed twice (both new steps equal to it), and
    a patch whose answer was lost. Bugs:
    - the lowest of several matches not taken, or no warning naming the others (`len(exact) >
      1` flipped);
    - plan only: the found step not planned as created (`self.state.created[...] = found`
      deleted) or the journal written to (`self.journal is not None` flipped);
    - a lost patch not closed as superseded (`intent.op != "create"` flipped: it would be
      looked up as a create), or closed in plan-only mode;
    - a new step of the same sequence that differs from the create (made first, so its id is
      the lowest) taken for it (`not in claimed and all(...)` as `or`)."""
    running, backup = await exported(start_simulator, tmp_path)
    lost, patched = sorted(backup)[5], sorted(backup)[10]
    running.sim.store.delete("sequenceStep", lost)
    path = default_journal(tmp_path, running.base_url)
    journal = Journal(path)
    journal.open(account(running))
    values = backup[lost]
    seen = frozenset(
        i for i, v in target(running).items() if v.get("sequence") == values["sequence"]
    )
    create = journal.new_intent(
        "create", lost, create_body(values), key=lookup_key(values), seen=seen
    )
    patch = journal.new_intent(
        "patch", patched, patch_body(patched, {"order": backup[patched]["order"]}),
        target_id=patched,
    )  # fmt: skip
    journal.close()
    other = await post(running, create_body({**values, "order": values["order"] + 50}))
    first = await post(running, create_body(values))  # it landed: its answer was lost
    second = await post(running, create_body(values))  # and a duplicate, made elsewhere
    lines_before = path.read_bytes()

    plan = await restore(running, tmp_path)  # plan only
    assert plan.created.get(lost) == min(first, second) and other < min(first, second)
    assert any(f"took {min(first, second)}, check {max(first, second)}" in w for w in plan.warnings)
    assert any(f"patch of step {patched}" in note for note in plan.recovered)
    assert path.read_bytes() == lines_before  # plan only writes nothing
    assert {i.write for i in replay(path).unresolved} == {create.write, patch.write}

    posts = writes(running)["POST"]
    applied = await restore(running, tmp_path, apply=True)
    assert applied.exit_code is ExitCode.OK
    assert applied.created[lost] == min(first, second)
    assert writes(running)["POST"] == posts  # found, so never sent again
    state = replay(path)
    assert state.unresolved == [] and state.created == {lost: min(first, second)}
    assert target(running)[min(first, second)] == values
