"""What an export does with the backup in `--out`: start, resume, extend (an incremental window) or refuse, decided on plain values without I/O.

`plan_export(found, request, account)` decides it, in this order, so nothing is deleted on a guess:
1. refusals that need no request (`refusal_before_request`, which `Export` asks before its
   identifying request): --restart with --repair; a finished backup whose checkpoint is lost
   or damaged, unless --incremental --repair rebuilds it from the manifest; an unfinished run's
   unreadable checkpoint; --repair with no backup to mend;
2. --restart: a new full run, after the backup of ours is discarded (`StartFull(discard=True)`);
3. a checkpoint lost beside a readable manifest is rebuilt from it (`repair.from_manifest`);
4. no backup of ours: a new full run;
5. a backup of another account (or another named source) is refused, once the account is known;
6. a finished backup: without --incremental, `FinishedExport` (also with it, when that run
   finished at or after `finished_since`: a fleet's earlier attempt of this task did it);
   with --incremental, a new incremental run whose window starts at the last run's mark less
   --overlap (`window_start`);
7. an unfinished run: refused when this run would export other types, else resumed.

The window's end, the run's mark, is taken later, once the API has answered: `take_mark`
chooses between the API's clock and this machine's, and `window_at` moves a window start that
would fall after its end (a mark taken from a wrong clock) back to where the last run began.
`status` asks the same functions what the next export would do; `fleet` passes `finished_since`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TypedDict

from exporter.api.account import Account, canonical_base_url
from exporter.backup import checkpoint, manifest
from exporter.backup.catalog import Found
from exporter.backup.checkpoint import RunState
from exporter.backup.layout import safe_named
from exporter.core.config import DEFAULT_RESOURCES, ExportSettings
from exporter.core.errors import UsageError
from exporter.core.times import iso, micros
from exporter.export.repair import from_manifest

MAX_CLOCK_SKEW = 300.0  # seconds the API's clock and ours may differ before the earlier is taken
DEFAULT_OVERLAP = ExportSettings.overlap  # seconds; `export --overlap`'s default


class FinishedExport(UsageError):
    """A run without --incremental met a finished backup of the very account it exports
    (confirmed by the plan's account check): nothing to do, nothing was changed. The fleet
    counts exactly this as "already done"; `recent`: that run finished at or after the
    request's `finished_since` (an earlier attempt of this fleet run)."""

    def __init__(self, message: str, state: RunState, recent: bool = False) -> None:
        super().__init__(message)
        self.state = state
        self.recent = recent


@dataclass(frozen=True)
class ExportRequest:
    """What the export is asked to do, as far as the plan needs it."""

    where: str  # how messages name --out (`Storage.display`)
    type_names: tuple[str, ...]  # what the run exports: steps, related types, tombstones
    incremental: bool = False
    restart: bool = False
    repair: bool = False
    source: str | None = None  # a named source (the demo) the backup must have recorded
    overlap: float = DEFAULT_OVERLAP
    # A finished run that finished at or after this (`utc_now()` text) counts as done even with
    # --incremental: an earlier attempt of the same fleet run finished it.
    finished_since: str | None = None
    resources: str = DEFAULT_RESOURCES  # `--resources`: a resumed run must have the same


@dataclass(frozen=True)
class StartFull:
    """A new full run. `discard`: --restart in a folder holding our checkpoint or manifest,
    whose backup (files of ours, checkpoint, manifest) is deleted first."""

    discard: bool = False


@dataclass(frozen=True)
class Resume:
    """The checkpoint's unfinished run goes on past what it committed (part files of ours that
    no checkpoint names are removed first)."""

    state: RunState


@dataclass(frozen=True)
class Extend:
    """A new incremental run on top of the finished `previous`: what changed since
    `window_start` (its mark less --overlap). `rebuilt`: `previous` was rebuilt from the
    manifest, and is saved as the checkpoint before anything else."""

    previous: RunState
    window_start: str
    rebuilt: bool = False


@dataclass(frozen=True)
class Refuse:
    """Nothing is changed: `error` says why, with the export's message and exit code."""

    error: UsageError


ExportPlan = StartFull | Resume | Extend | Refuse


def refusal_before_request(found: Found, request: ExportRequest) -> UsageError | None:
    """Step 1: what is refused before any request is made (and must not spend one)."""
    root = request.where
    if request.restart:
        if request.repair:
            return UsageError(
                "--repair mends the backup in --out and --restart discards it: pass one of them"
            )
        return None
    state = found.state
    if state is None and found.manifest_present:
        # A finished backup whose checkpoint is gone or damaged: starting over would delete
        # every file it holds. The manifest still describes it, so it can be rebuilt.
        what = "is missing" if found.unreadable is None else "is damaged"
        if isinstance(found.unreadable, checkpoint.UnreadableCheckpoint):
            # why, without the loader's own advice (which this message replaces)
            what = f"is damaged ({found.unreadable.reason})"
        if found.document is None:
            return UsageError(
                f"{root} holds a finished backup but its {checkpoint.CHECKPOINT_NAME} {what} "
                f"and its {manifest.MANIFEST_NAME} cannot be read; nothing was changed. Put "
                "either back (from wherever the backup was copied from), or choose another --out"
            )
        if not (request.repair and request.incremental):
            return UsageError(
                f"{root} holds a finished backup ({manifest.MANIFEST_NAME}) but its "
                f"{checkpoint.CHECKPOINT_NAME} {what}, so it can neither be resumed nor "
                "extended; nothing was changed. Pass --incremental --repair to rebuild the "
                "checkpoint from the manifest and extend the backup, or put the checkpoint "
                "back (from wherever the backup was copied from)"
            )
        return None
    if found.unreadable is not None:
        return found.unreadable  # an unfinished run's checkpoint: nothing else describes it
    if request.repair and state is None:
        return UsageError(f"{root} holds no backup to repair; run without --repair to start one")
    return None


def plan_export(found: Found, request: ExportRequest, account: Account | None = None) -> ExportPlan:
    """What an export asked `request` does with what `--out` holds (`found`), in the order of
    the module's docstring. `account` is whose data the base URL serves (`account.identify`);
    None when it is not known (`status` makes no request): the backup is taken to be its own."""
    refused = refusal_before_request(found, request)
    if refused is not None:
        return Refuse(refused)
    if request.restart:
        # A folder holding no backup of ours: nothing in it is touched.
        return StartFull(discard=found.checkpoint_present or found.manifest_present)
    state, rebuilt = found.state, False
    if state is None and found.document is not None:
        try:
            state = from_manifest(found.document, request.where)
        except UsageError as exc:
            return Refuse(exc)
        rebuilt = True
    if state is None:
        return StartFull()
    other = _another_account(state, request, account)
    if other is not None:
        return Refuse(other)
    if rebuilt:
        unsafe = [f.path for f in state.committed_files() if not safe_named(f.path)]
        if unsafe:
            return Refuse(
                UsageError(
                    f"{request.where}: the manifest names {unsafe[0]!r}, which is not a part "
                    "file of this tool where it writes them; the checkpoint is not rebuilt from it"
                )
            )
    if state.status == "complete":
        # `finished_since` is about the checkpoint the fleet's earlier attempt left.
        recent = not rebuilt and _finished_since(state, request.finished_since)
        if not request.incremental or recent:
            return Refuse(
                FinishedExport(
                    f"{request.where} already holds a finished export (run {state.run_id}); "
                    "pass --incremental to add what changed since (with --repair to mend "
                    "damaged files), --restart to replace it, or choose another --out",
                    state,
                    recent,
                )
            )
        if state.window_end is None:  # an older release's, or a hand-edited, state file
            return Refuse(
                UsageError(
                    f"{request.where}: its finished run {state.run_id} recorded no mark (when "
                    "the API's data was read), so --incremental cannot tell where to start; "
                    "pass --restart to replace it with a full export, or choose another --out"
                )
            )
        return Extend(state, window_start(state.window_end, request.overlap), rebuilt)
    recorded = state.parameters.get("resources", DEFAULT_RESOURCES)
    if sorted(state.resources) != sorted(request.type_names) or recorded != request.resources:
        return Refuse(
            UsageError(
                f"{request.where} holds an unfinished export of "
                f"{', '.join(sorted(state.resources))} (--resources {recorded}); resume it "
                "with the same --resources, --relationships and --detect-deletes, or pass "
                "--restart to discard it"
            )
        )
    return Resume(state)


def _finished_since(state: RunState, since: str | None) -> bool:
    # Both `utc_now()` text: ordered as the times they name.
    return since is not None and bool(state.finished_at) and str(state.finished_at) >= since


def _another_account(
    state: RunState, request: ExportRequest, account: Account | None
) -> UsageError | None:
    """Step 5: refuse a backup of another account, however the path or the URL is spelled:
    the org ids when both are known; otherwise the canonical base URLs (an older state file
    without `account`: its recorded source); a named source (the demo) must match too."""
    if account is None:
        return None
    recorded = Account.from_json(state.account)
    both_orgs = recorded is not None and recorded.org is not None and account.org is not None
    same = recorded.same_as(account) if both_orgs and recorded is not None else True
    if request.source is not None:
        same = same and state.source == request.source
    elif not both_orgs:
        if recorded is not None:
            same = recorded.origin == account.origin
        else:
            try:
                same = canonical_base_url(state.source) == account.origin
            except ValueError:
                same = False
    if same:
        return None
    theirs = recorded.label if recorded is not None else state.source
    mine = request.source or account.label
    return UsageError(
        f"{request.where} holds a backup of {theirs}, not of {mine}; nothing was "
        "changed. Use another --out for this account (or --restart to discard that backup)"
    )


# -- the incremental window -------------------------------------------------------------------


def window_start(mark: str, overlap: float) -> str:
    """Where an incremental run's window starts: the last run's mark less the overlap."""

    return iso(micros(mark) / 1_000_000 - overlap)


class MarkBasis(TypedDict, total=False):
    """What a run's mark is based on, as the root type's `detail["mark"]` records it."""

    local_clock: str
    based_on: str  # "server clock" | "local clock"
    reason: str  # why not the API's clock, when it sent none
    server_clock: str
    skew_seconds: float  # the API's clock less this machine's
    window_start_clamped_from: str  # the start a mark from a wrong clock would have given


@dataclass(frozen=True)
class Mark:
    """A run's mark, the end of its window (seconds since the epoch), and the clocks it came from."""

    at: float
    local: float
    server: float | None
    basis: MarkBasis

    @property
    def skewed(self) -> bool:
        """The two clocks disagree by more than `MAX_CLOCK_SKEW`: the earlier was taken."""
        return self.server is not None and abs(self.server - self.local) > MAX_CLOCK_SKEW


def take_mark(server: float | None, local: float) -> Mark:
    """The mark from the API's clock (its Date header; None when it sent no usable one) and
    this machine's: the API's, unless they disagree by more than `MAX_CLOCK_SKEW`, then the
    earlier of the two (a mark too late loses the changes between the two for good, one too
    early only fetches some records again)."""

    basis: MarkBasis = {"local_clock": iso(local)}
    if server is None:
        basis["based_on"] = "local clock"
        basis["reason"] = "the API sent no usable Date header"
        return Mark(local, local, None, basis)
    skew = server - local
    basis["server_clock"] = iso(server)
    basis["skew_seconds"] = round(skew, 3)
    mark = min(server, local) if abs(skew) > MAX_CLOCK_SKEW else server
    basis["based_on"] = "server clock" if mark == server else "local clock"
    return Mark(mark, local, server, basis)


@dataclass(frozen=True)
class Window:
    """A run's window once its mark is taken: records updated from `start` (None: every record)
    up to `end`. `clamped_from`: the start it would have had, after its end."""

    start: str | None
    end: str
    clamped_from: str | None = None


def window_at(
    start: str | None, mark: float, previous_started_at: str | None, overlap: float
) -> Window:
    """The window ending at `mark`. One that would start after its end (a previous mark taken
    from a wrong clock) is never accepted: it starts where the previous run began by this
    machine's clock (`previous_started_at`), less the overlap; when even that is after the end,
    UsageError (the run exports nothing)."""

    end = iso(mark)
    if start is None or micros(start) <= mark * 1_000_000:
        return Window(start, end)
    fallback = micros(previous_started_at) / 1_000_000 - overlap if previous_started_at else None
    if fallback is None or fallback > mark:
        raise UsageError(
            f"the incremental window would start at {start}, after its end "
            f"{end} (a clock, the API's or this machine's, is wrong); nothing was "
            "exported. Check this machine's clock and run again"
        )
    return Window(iso(fallback), end, clamped_from=start)
