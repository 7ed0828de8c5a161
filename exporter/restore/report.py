"""What a restore did, or plans to do: the report, its exit code and error line, the table and the summary line."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from exporter.api.account import Account
from exporter.core.errors import (
    ExitCode,
)
from exporter.restore.modes import Mode
from exporter.restore.plan import Action, PlanEntry


@dataclass
class RestoreReport:
    plan: list[PlanEntry]
    applied: bool
    mode: Mode
    created: dict[int, int]  # old id -> new id (every create the journal has recorded)
    recovered: list[str] = field(default_factory=list)  # unresolved writes settled at start
    warnings: list[str] = field(default_factory=list)
    journal: Path | None = None
    mapping: Path | None = None
    seconds: float = 0.0
    requests: int = 0
    writes: int = 0
    target: Account | None = None

    def count(self, action: Action) -> int:
        return sum(1 for e in self.plan if e.action is action)

    @property
    def failed(self) -> list[PlanEntry]:
        return [e for e in self.plan if e.result == "failed"]

    @property
    def unresolved(self) -> list[PlanEntry]:
        """Steps whose create was sent, its answer lost, and that are not on the target."""
        return [e for e in self.plan if e.result == "unresolved" or e.action is Action.UNRESOLVED]

    @property
    def exit_code(self) -> ExitCode:
        return ExitCode.FAILED if self.failed or self.unresolved else ExitCode.OK

    def error_line(self) -> str | None:
        """One line for stderr when the restore did not finish every step."""
        unresolved = self.unresolved
        if unresolved:
            shown = ", ".join(str(e.old_id) for e in unresolved[:10])
            more = f" and {len(unresolved) - 10} more" if len(unresolved) > 10 else ""
            return (
                f"{len(unresolved)} create(s) unresolved (steps {shown}{more}): each was sent, "
                "its answer was lost and it is not on the target (yet), so it was not sent "
                "again; run the same restore later to look again, or, once you have checked "
                "the target yourself, add --resend-lost to send them again"
            )
        if self.failed:
            return f"{len(self.failed)} step(s) failed (see the table above); fix and run again"
        return None


def _shown(value: Any, limit: int = 40) -> str:
    text = "null" if value is None else repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def render(report: RestoreReport) -> list[str]:
    """The plan (or what was done) as a table, then the summary line."""
    lines: list[str] = []
    rows = [e for e in report.plan if e.action is not Action.EQUAL or e.result == "failed"]
    if rows:
        lines.append(
            f"{'action':<8} {'step':>10} {'target':>10} {'sequence':>9} {'order':>5}  {'stepType':<12} detail"
        )
    for entry in rows:
        action = entry.result or entry.action.value
        target = entry.new_id or entry.target_id
        detail = entry.note
        if entry.result == "failed":
            detail = entry.detail if entry.status is None else f"{entry.status}: {entry.detail}"
        elif entry.changes and entry.action in (Action.PATCH, Action.SKIP):
            changed = "; ".join(
                f"{k}: {_shown(a)} -> {_shown(b)}" for k, (a, b) in entry.changes.items()
            )
            detail = f"{detail + ': ' if detail else ''}{changed}"
        v = entry.values
        lines.append(
            f"{action:<8} {entry.old_id:>10} {target or '-':>10} {v.get('sequence') or '-':>9} "
            f"{'-' if v.get('order') is None else v['order']:>5}  {v.get('stepType') or '-':<12} {detail}".rstrip()
        )
    for note in report.recovered:
        lines.append(f"journal: {note}")
    for warning in report.warnings:
        lines.append(f"warning: {warning}")
    lines.append(summary(report))
    return lines


def summary(report: RestoreReport) -> str:
    counts = Counter(e.result for e in report.plan)
    equal = report.count(Action.EQUAL)
    skipped = report.count(Action.SKIP)
    unresolved = len(report.unresolved)
    waiting = f", {unresolved} unresolved (not sent again)" if unresolved else ""
    if not report.applied:
        return (
            f"plan ({report.mode.value}): {report.count(Action.CREATE)} to create, "
            f"{report.count(Action.PATCH)} to patch, {equal} equal{waiting}"
            + (f", {skipped} outside --mode {report.mode.value}" if skipped else "")
            + f" of {len(report.plan)} steps; nothing written (pass --apply to write), "
            f"{report.requests} requests"
        )
    text = (
        f"restored ({report.mode.value}): {counts['created']} created, {counts['patched']} "
        f"patched, {equal} equal, {counts['failed']} failed{waiting}"
        + (f", {skipped} outside --mode {report.mode.value}" if skipped else "")
        + f" of {len(report.plan)} steps in {report.seconds:.1f}s, {report.requests} requests"
    )
    if report.created:
        pairs = sorted(report.created.items())
        shown = ", ".join(f"{old}->{new}" for old, new in pairs[:20])
        more = f" and {len(pairs) - 20} more" if len(pairs) > 20 else ""
        text += f"; created ids (old->new, all restores to this target) {shown}{more} in {report.mapping}"
    return text
