"""The plan of a restore, a pure function of the backup's steps and the target's: create what is gone, patch what differs, leave what is equal."""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from exporter.restore.fields import Values, differences
from exporter.restore.modes import Mode


class Action(StrEnum):
    CREATE = "create"
    PATCH = "patch"
    EQUAL = "equal"
    SKIP = "skip"  # needs a write the --mode does not make
    UNRESOLVED = "unresolved"  # gone, but an earlier create of it may yet land: not sent again


@dataclass
class PlanEntry:
    action: Action
    old_id: int
    target_id: int | None  # the step on the target (None: gone)
    values: Values  # the backup's
    changes: dict[str, tuple[Any, Any]] = field(default_factory=dict)  # target -> backup
    note: str = ""
    # After --apply:
    result: str = ""  # created | patched | failed | lost | stopped
    new_id: int | None = None
    status: int | None = None
    detail: str = ""


def make_plan(
    selected: dict[int, Values],
    target: dict[int, Values],
    created: dict[int, int],
    mode: Mode,
    *,
    unresolved: frozenset[int] = frozenset(),
    by_id: bool = True,
) -> list[PlanEntry]:
    """Pure: what to do for each selected backup step, given what the target holds now.

    A step gone from the target that this journal already re-created is compared with the
    step it created (so a finished restore, run again, creates nothing). A step with an
    unresolved create is left alone. `by_id=False` (a backup of another account): a target
    step with the backup step's id is not that step; only what this journal created is."""
    plan: list[PlanEntry] = []
    for old_id, values in selected.items():
        if old_id in unresolved:
            note = "an earlier create's answer was lost and it is not on the target (yet)"
            plan.append(PlanEntry(Action.UNRESOLVED, old_id, None, values, note=note))
            continue
        target_id: int | None = None
        if by_id and old_id in target:
            target_id = old_id
        elif created.get(old_id) in target:
            target_id = created[old_id]
        if target_id is None:
            if mode is Mode.ROLLBACK:
                plan.append(
                    PlanEntry(Action.SKIP, old_id, None, values, note="gone (--mode rollback)")
                )
            else:
                plan.append(PlanEntry(Action.CREATE, old_id, None, values))
            continue
        changes = differences(values, target[target_id])
        note = f"re-created as {target_id}" if target_id != old_id else ""
        if not changes:
            plan.append(PlanEntry(Action.EQUAL, old_id, target_id, values, note=note))
        elif mode is Mode.RECREATE:
            note = "differs (--mode recreate)"
            plan.append(PlanEntry(Action.SKIP, old_id, target_id, values, changes, note))
        else:
            plan.append(PlanEntry(Action.PATCH, old_id, target_id, values, changes, note))
    return plan
