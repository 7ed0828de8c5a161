"""Unit tests of the export's plan (`plan.plan_export`, `take_mark`, `window_at`) on plain values: no folder, no server."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime
from typing import Any

import pytest

from exporter.api.account import Account
from exporter.backup import manifest
from exporter.backup.catalog import Found
from exporter.backup.checkpoint import ResourceState, RunState, UnreadableCheckpoint
from exporter.backup.sink import DataFile
from exporter.core.errors import ExitCode, UsageError
from exporter.export.plan import (
    MAX_CLOCK_SKEW,
    ExportPlan,
    ExportRequest,
    Extend,
    FinishedExport,
    Refuse,
    Resume,
    StartFull,
    plan_export,
    refusal_before_request,
    take_mark,
    window_at,
    window_start,
)

URL = "https://api.outreach.io/api/v2"
ACME = Account(URL, "acme")
GLOBEX = Account(URL, "globex")
RUN = "20240301T110000Z-abcdef"
WHERE = "/backups/acme"
STEPS = ("sequenceStep",)
NOON = datetime(2024, 3, 1, 12, tzinfo=UTC).timestamp()  # 2024-03-01T12:00:00Z


def run_state(
    status: str = "complete",
    *,
    types: tuple[str, ...] = STEPS,
    account: Account | None = ACME,
    window_end: str | None = "2024-03-01T12:00:00.000Z",
    finished_at: str | None = "2024-03-01T12:30:00.000Z",
    files: int = 0,
) -> RunState:
    """A run of `RUN`, begun at 11:00, its mark at noon, finished at 12:30 (when complete)."""
    state = RunState(
        run_id=RUN,
        started_at="2024-03-01T11:00:00.000Z",
        source=URL,
        parameters={"relationships": "none"},
        status=status,
        finished_at=finished_at if status == "complete" else None,
        window_end=window_end,
        phase="done" if status == "complete" else "crawl",
        account=account.to_json() if account is not None else None,
    )
    for type_name in types:
        state.resources[type_name] = ResourceState(type_name, "sequenceSteps", finished=True)
    for sequence in range(1, files + 1):
        state.resources["sequenceStep"].files.append(
            DataFile(
                f"sequenceSteps/part-{RUN}-{sequence:05d}.parquet",
                "sequenceStep",
                rows=10,
                bytes=100,
                sha256="0" * 64,
                min_id=1,
                max_id=10,
            )
        )
    return state


def holding(state: RunState) -> Found:
    """A folder whose checkpoint is `state` (no manifest beside it)."""
    return Found(checkpoint_present=True, manifest_present=False, state=state)


def asked(**changes: Any) -> ExportRequest:
    return replace(ExportRequest(where=WHERE, type_names=STEPS), **changes)


def outcome(plan: ExportPlan) -> tuple[Any, ...]:
    """The plan as plain values to compare: its kind and what it carries."""
    if isinstance(plan, StartFull):
        return ("start", plan.discard)
    if isinstance(plan, Resume):
        return ("resume", plan.state.run_id)
    if isinstance(plan, Extend):
        return ("extend", plan.previous.run_id, plan.window_start, plan.rebuilt)
    return ("refuse", type(plan.error).__name__, int(plan.error.exit_code))


NOTHING = Found(checkpoint_present=False, manifest_present=False)
FINISHED = holding(run_state())
UNFINISHED = holding(run_state("running", window_end=None))


@pytest.mark.parametrize(
    ("found", "request_", "account", "expected"),
    [
        # Nothing of ours: a new full run; --restart has nothing to discard.
        (NOTHING, asked(), ACME, ("start", False)),
        (NOTHING, asked(restart=True), ACME, ("start", False)),
        (NOTHING, asked(incremental=True), ACME, ("start", False)),
        # --restart over our checkpoint: discard it, whoever's it is (the account is not asked).
        (FINISHED, asked(restart=True), GLOBEX, ("start", True)),
        (UNFINISHED, asked(restart=True, type_names=("user",)), ACME, ("start", True)),
        # An unfinished run of the same selection and account resumes.
        (UNFINISHED, asked(), ACME, ("resume", RUN)),
        (UNFINISHED, asked(incremental=True), ACME, ("resume", RUN)),
        # ... an older one that recorded no account is this account's when its URL is.
        (holding(run_state("running", account=None)), asked(), ACME, ("resume", RUN)),
        # A finished backup without --incremental: nothing to do.
        (FINISHED, asked(), ACME, ("refuse", "FinishedExport", int(ExitCode.USAGE))),
        # With it: changes since noon less the default 300 s overlap, 11:55.
        (
            FINISHED,
            asked(incremental=True),
            ACME,
            ("extend", RUN, "2024-03-01T11:55:00.000Z", False),
        ),
        # ... or less 90.5 s: 11:58:29.5.
        (
            FINISHED,
            asked(incremental=True, overlap=90.5),
            ACME,
            ("extend", RUN, "2024-03-01T11:58:29.500Z", False),
        ),
        # Finished since the fleet began (12:30 >= 12:00): done, even with --incremental ...
        (
            FINISHED,
            asked(incremental=True, finished_since="2024-03-01T12:00:00.000Z"),
            ACME,
            ("refuse", "FinishedExport", int(ExitCode.USAGE)),
        ),
        # ... but a backup finished before the fleet began (12:30 < 13:00) is extended.
        (
            FINISHED,
            asked(incremental=True, finished_since="2024-03-01T13:00:00.000Z"),
            ACME,
            ("extend", RUN, "2024-03-01T11:55:00.000Z", False),
        ),
        # Another account's backup: refused, finished or not, whatever was asked.
        (FINISHED, asked(incremental=True), GLOBEX, ("refuse", "UsageError", int(ExitCode.USAGE))),
        (UNFINISHED, asked(), GLOBEX, ("refuse", "UsageError", int(ExitCode.USAGE))),
        # Unknown account (`status` asks no request): the backup is taken to be its own.
        (
            FINISHED,
            asked(incremental=True),
            None,
            ("extend", RUN, "2024-03-01T11:55:00.000Z", False),
        ),
        # An unfinished run of another selection is not resumed with this one.
        (UNFINISHED, asked(type_names=("sequenceStep", "user")), ACME, ("refuse", "UsageError", 2)),
        # --repair with nothing to repair; --repair with --restart.
        (NOTHING, asked(repair=True), ACME, ("refuse", "UsageError", int(ExitCode.USAGE))),
        (FINISHED, asked(repair=True, restart=True), ACME, ("refuse", "UsageError", 2)),
    ],
)
def test_the_plan(
    found: Found, request_: ExportRequest, account: Account | None, expected: tuple[Any, ...]
) -> None:
    assert outcome(plan_export(found, request_, account)) == expected


def test_a_finished_backup_is_refused_with_the_exports_message() -> None:
    plan = plan_export(FINISHED, asked(), ACME)
    assert isinstance(plan, Refuse) and isinstance(plan.error, FinishedExport)
    assert str(plan.error) == (
        f"{WHERE} already holds a finished export (run {RUN}); pass --incremental to add what "
        "changed since (with --repair to mend damaged files), --restart to replace it, or "
        "choose another --out"
    )
    assert plan.error.state is FINISHED.state and not plan.error.recent
    again = plan_export(FINISHED, asked(finished_since="2024-03-01T12:30:00.000Z"), ACME)
    assert isinstance(again, Refuse) and isinstance(again.error, FinishedExport)
    assert again.error.recent  # finished exactly when the fleet began counts as this run's


def test_a_finished_run_without_a_mark_is_refused_not_asserted() -> None:
    """Bug caught: a finished checkpoint that recorded no `window_end` (an older release's, or
    hand-edited) met `--incremental` with an AssertionError, a traceback; now a refusal (exit 2)."""
    plan = plan_export(holding(run_state(window_end=None)), asked(incremental=True), ACME)
    assert outcome(plan) == ("refuse", "UsageError", int(ExitCode.USAGE))
    assert isinstance(plan, Refuse)
    assert f"finished run {RUN} recorded no mark" in str(plan.error)
    assert "pass --restart" in str(plan.error)


def test_another_account_is_named_in_the_refusal() -> None:
    plan = plan_export(FINISHED, asked(incremental=True), GLOBEX)
    assert isinstance(plan, Refuse)
    assert str(plan.error) == (
        f"{WHERE} holds a backup of {URL} (org acme), not of {URL} (org globex); nothing was "
        "changed. Use another --out for this account (or --restart to discard that backup)"
    )


@pytest.mark.parametrize(
    ("recorded", "source", "account", "same"),
    [
        (ACME, None, Account(URL, "acme"), True),  # the org ids decide
        (ACME, None, Account("https://eu.api.example/api/v2", "acme"), True),  # ... over the URL
        (Account(URL), None, Account(URL, "acme"), True),  # one org unknown: the URLs decide
        (Account(URL), None, Account("https://other.example/api/v2", "acme"), False),
        (None, None, ACME, True),  # an older checkpoint: its recorded source, canonical
        (None, None, Account("https://other.example/api/v2"), False),
        (ACME, "demo", ACME, False),  # a named source must be the recorded one (`URL` here)
    ],
)
def test_whose_backup_it_is(
    recorded: Account | None, source: str | None, account: Account, same: bool
) -> None:
    found = holding(run_state(account=recorded))
    plan = plan_export(found, asked(incremental=True, source=source), account)
    assert isinstance(plan, Extend) is same, plan


def test_a_checkpoint_lost_beside_the_manifest() -> None:
    document = manifest.build(run_state(files=2))
    missing = Found(checkpoint_present=False, manifest_present=True, document=document)
    refused = refusal_before_request(missing, asked(incremental=True))
    assert refused is not None and "_checkpoint.json is missing" in str(refused)
    assert "Pass --incremental --repair to rebuild the checkpoint" in str(refused)
    damaged = replace(
        missing,
        checkpoint_present=True,
        unreadable=UnreadableCheckpoint("long message", "it is truncated"),
    )
    refused = refusal_before_request(damaged, asked())
    assert refused is not None and "_checkpoint.json is damaged (it is truncated)," in str(refused)
    unread = replace(missing, document=None)
    refused = refusal_before_request(unread, asked(incremental=True, repair=True))
    assert refused is not None and "its _manifest.json cannot be read" in str(refused)
    # --incremental --repair: rebuilt from the manifest and extended from its mark.
    plan = plan_export(missing, asked(incremental=True, repair=True), ACME)
    assert outcome(plan) == ("extend", RUN, "2024-03-01T11:55:00.000Z", True)
    assert isinstance(plan, Extend) and len(plan.previous.committed_files()) == 2
    # ... but not another account's, nor one whose digest no longer matches.
    assert isinstance(plan_export(missing, asked(incremental=True, repair=True), GLOBEX), Refuse)
    altered = replace(missing, document={**document, "source": "https://other.example/api/v2"})
    plan = plan_export(altered, asked(incremental=True, repair=True), ACME)
    assert isinstance(plan, Refuse) and "the manifest was altered" in str(plan.error)


def test_a_manifest_naming_a_file_not_ours_is_not_rebuilt_from() -> None:
    document = manifest.build(run_state(files=1))
    document["files"][0]["path"] = "sequenceSteps/notes.parquet"  # a user's file
    document["manifest_sha256"] = manifest.canonical_digest(document)
    found = Found(checkpoint_present=False, manifest_present=True, document=document)
    plan = plan_export(found, asked(incremental=True, repair=True), ACME)
    assert isinstance(plan, Refuse)
    assert str(plan.error) == (
        f"{WHERE}: the manifest names 'sequenceSteps/notes.parquet', which is not a part file "
        "of this tool where it writes them; the checkpoint is not rebuilt from it"
    )


def test_an_unreadable_checkpoint_without_a_manifest_is_refused_as_read() -> None:
    unreadable = UsageError("the checkpoint is not readable")
    found = Found(checkpoint_present=True, manifest_present=False, unreadable=unreadable)
    assert refusal_before_request(found, asked()) is unreadable
    plan = plan_export(found, asked(), ACME)
    assert isinstance(plan, Refuse) and plan.error is unreadable
    assert outcome(plan_export(found, asked(restart=True), ACME)) == ("start", True)


def test_refusals_before_the_request_leave_the_account_questions_alone() -> None:
    """What needs a request (whose backup it is, what a finished one means) is not decided
    before it: those refusals come from `plan_export` only."""
    assert refusal_before_request(FINISHED, asked()) is None
    assert refusal_before_request(UNFINISHED, asked(type_names=("user",))) is None


# -- the window ---------------------------------------------------------------------------------


def test_window_start_is_the_mark_less_the_overlap() -> None:
    assert window_start("2024-03-01T12:00:00.000Z", 300) == "2024-03-01T11:55:00.000Z"
    assert window_start("2024-03-01T00:00:30.250Z", 60) == "2024-02-29T23:59:30.250Z"  # leap day
    assert window_start("2024-03-01T12:00:00.000Z", 0) == "2024-03-01T12:00:00.000Z"


@pytest.mark.parametrize(
    ("skew", "at", "based_on", "skewed"),
    [
        (10.0, NOON + 10, "server clock", False),  # the API's clock, a little ahead
        (-10.0, NOON - 10, "server clock", False),
        (MAX_CLOCK_SKEW, NOON + MAX_CLOCK_SKEW, "server clock", False),  # at the bound: trusted
        (600.0, NOON, "local clock", True),  # far ahead: ours, the earlier
        (-600.0, NOON - 600, "server clock", True),  # far behind: the API's, the earlier
    ],
)
def test_the_mark_takes_the_earlier_clock_when_they_disagree(
    skew: float, at: float, based_on: str, skewed: bool
) -> None:
    mark = take_mark(NOON + skew, NOON)
    assert (mark.at, mark.basis["based_on"], mark.skewed) == (at, based_on, skewed)
    assert mark.basis["local_clock"] == "2024-03-01T12:00:00.000Z"
    assert mark.basis["skew_seconds"] == skew
    # The keys in the order the checkpoint's `detail["mark"]` has always had them.
    assert list(mark.basis) == ["local_clock", "server_clock", "skew_seconds", "based_on"]


def test_the_mark_without_the_apis_clock() -> None:
    mark = take_mark(None, NOON)
    assert (mark.at, mark.skewed) == (NOON, False)
    assert mark.basis == {
        "local_clock": "2024-03-01T12:00:00.000Z",
        "based_on": "local clock",
        "reason": "the API sent no usable Date header",
    }


def test_a_window_that_starts_before_its_end_is_kept() -> None:
    assert window_at(None, NOON, None, 300) == window_at(None, NOON, "x", 300)
    full = window_at(None, NOON, None, 300)
    assert (full.start, full.end, full.clamped_from) == (None, "2024-03-01T12:00:00.000Z", None)
    kept = window_at("2024-03-01T11:55:00.000Z", NOON, None, 300)
    assert (kept.start, kept.clamped_from) == ("2024-03-01T11:55:00.000Z", None)
    assert window_at("2024-03-01T12:00:00.000Z", NOON, None, 300).clamped_from is None  # equal


def test_a_window_after_its_end_starts_where_the_last_run_began() -> None:
    """The last mark was taken from a clock an hour ahead: its window would start at 12:55,
    after this run's mark (noon); the last run began at 11:00 by this machine's clock."""
    window = window_at("2024-03-01T12:55:00.000Z", NOON, "2024-03-01T11:00:00.000Z", 300)
    assert window.start == "2024-03-01T10:55:00.000Z"  # 11:00 less the 300 s overlap
    assert window.end == "2024-03-01T12:00:00.000Z"
    assert window.clamped_from == "2024-03-01T12:55:00.000Z"


@pytest.mark.parametrize("began", [None, "2024-03-01T12:10:00.000Z"])
def test_a_window_that_cannot_start_before_its_end_stops_the_run(began: str | None) -> None:
    """No earlier run's start to fall back on, or that too after the mark (12:10 less 300 s is
    12:05): the run exports nothing."""
    with pytest.raises(
        UsageError, match=r"would start at 2024-03-01T12:55:00\.000Z, after its end"
    ):
        window_at("2024-03-01T12:55:00.000Z", NOON, began, 300)
