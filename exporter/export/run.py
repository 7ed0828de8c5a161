"""One export run, end to end: prepare the output directory, resume or plan, crawl, commit, write the manifest.

Order of a run:
1. check the output directory is writable and take its lock; read its checkpoint and manifest;
2. refuse what needs no request; then one request confirms the credentials and whose data the
   base URL serves (`account.identify`), and a backup of another account is refused; a finished
   backup of this account without --incremental is `FinishedExport` (use another --out,
   --incremental or --restart);
3. only then delete, and only files of ours in a folder holding our checkpoint or manifest:
   --restart removes the backup; every other run removes part files of our naming that no
   checkpoint names; an unfinished run from the same account is resumed past what it committed;
4. committed files are checked (size; with --repair, sha256): a damaged one stops the run, named,
   or with --repair is set aside and its records fetched again before anything else;
5. crawl (fetch workers) and writer run side by side; on a failure or a stop request the crawl
   stops starting requests, the writer commits every page already fetched, and the checkpoint
   stays valid for the next run;
6. on success, the checkpoint is marked complete and `_manifest.json` is written last.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pyarrow as pa

from exporter import __version__
from exporter.api.account import Account, canonical_base_url, identify
from exporter.api.auth import TokenSource
from exporter.api.client import ApiClient, ClientSettings
from exporter.api.pagination import collection_url
from exporter.backup import checkpoint, manifest
from exporter.backup.checkpoint import ResourceState, RunState
from exporter.backup.damage import damaged_error, inspect, shown
from exporter.backup.detail import NOT_ASKED_BY_STEP
from exporter.backup.lock import OutputLock
from exporter.backup.sink import part_run_id
from exporter.backup.storage import OpenFile, Storage
from exporter.core.config import ExportSettings
from exporter.core.errors import Interrupted, OutputError, UsageError, redact_url
from exporter.core.progress import Reporter, ResourceProgress, Snapshot, event
from exporter.export.crawl import CollectionCrawl, CrawlStats, Flush, Message, RowSelector
from exporter.export.deletes import DeleteScan
from exporter.export.history import (
    BackupIndex,
    BelongsToBackup,
    SkipKnownVersions,
    _micros,
    load_index,
)
from exporter.export.relationships import (
    IdSet,
    Link,
    RelationshipWalk,
    WalkStats,
    owner_column,
    parse_selection,
    resume_walk,
    step_back_link,
)
from exporter.export.repair import (
    Keep,
    covered,
    drop_file,
    from_manifest,
    refetch_range,
    set_aside,
)
from exporter.export.writer import CommitPolicy, Writer
from exporter.model.normalize import TOMBSTONE_TYPE
from exporter.model.schema import RESOURCE_TYPES, resource_type

MAX_CLOCK_SKEW = 300.0  # seconds the API's clock and ours may differ before the earlier is taken


def utc_now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def new_run_id() -> str:
    return datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ") + "-" + secrets.token_hex(3)


@dataclass
class ExportResult:
    state: RunState
    manifest: dict[str, Any]
    resumed: bool
    seconds: float
    requests: int
    crawl: dict[str, CrawlStats] = field(default_factory=dict)
    client: dict[str, Any] = field(default_factory=dict)
    walk: dict[str, WalkStats] = field(default_factory=dict)

    @property
    def rows(self) -> dict[str, int]:
        return {k: v.rows for k, v in self.state.resources.items()}


@dataclass
class Found:
    """What `--out` holds of ours, as read before anything is decided."""

    checkpoint_present: bool
    manifest_present: bool
    state: RunState | None = None
    unreadable: UsageError | None = None  # why the checkpoint could not be read
    document: dict[str, Any] | None = None  # the manifest, when it could be read


class FinishedExport(UsageError):
    """A run without --incremental met a finished backup of the very account it exports
    (confirmed by `Export._check_account`): nothing to do, nothing was changed. The fleet
    counts exactly this as "already done"."""

    def __init__(self, message: str, state: RunState) -> None:
        super().__init__(message)
        self.state = state


TOMBSTONE_DIRECTORY = "tombstones"


# Every directory an export writes into (an earlier selection's types included), tombstones last.
BACKUP_DIRECTORIES = [
    *(resource_type(t).collection for t in RESOURCE_TYPES),
    TOMBSTONE_DIRECTORY,
]


def _is_ours(relative: str) -> bool:
    """A part file or a temporary one of our naming (`sink.part_run_id`), where an export puts
    them: in one of our type directories (tombstones: only in a `run=<id>/`). Nothing else is ours."""
    parts = relative.split("/")
    if parts[0] not in BACKUP_DIRECTORIES or part_run_id(relative) is None:
        return False
    return parts[0] != TOMBSTONE_DIRECTORY or len(parts) == 3


def uncommitted(storage: Storage, named: set[str], directories: list[str]) -> list[str]:
    """Part files of our naming below our directories that `named` (every file a checkpoint
    names, earlier runs' included) does not hold: uploads completed but never committed, and
    temporary files. Files of any other name stay, whoever wrote them."""
    return [
        relative
        for directory in directories
        for relative in storage.list_files(directory)
        if _is_ours(relative) and relative not in named
    ]


class ClaimingStorage(Storage):
    """The writer's view of a backup it starts: `claim` runs once, before the first data file
    is opened (a file is opened when its first row group is written, at the latest when it is
    committed)."""

    def __init__(self, storage: Storage, claim: Callable[[], None]) -> None:
        # The same root as `storage`, whatever it holds (not its constructor's arguments).
        self.__dict__.update(storage.__dict__)
        self._claim: Callable[[], None] | None = claim

    def open_data(self, relative: str) -> OpenFile:
        claim, self._claim = self._claim, None
        if claim is not None:
            claim()
        return super().open_data(relative)


def _safe_named(storage: Storage, relative: str) -> bool:
    """A path a state file names that we may move or delete: inside the root, of our naming."""
    return storage.inside(relative) == relative and _is_ours(relative)


def remove_uncommitted(storage: Storage, state: RunState | None, directories: list[str]) -> int:
    """Delete the `uncommitted` files of a folder holding `state` (our checkpoint); returns the
    count. Without a checkpoint nothing proves a file ours, so nothing is deleted."""
    if state is None:
        return 0
    named = {f.path for f in state.committed_files()}
    found = uncommitted(storage, named, directories)
    for relative in found:
        storage.delete(relative)
    return len(found)


def discard_run(
    storage: Storage,
    state: RunState | None,
    document: dict[str, Any] | None,
    directories: list[str],
) -> int:
    """`--restart` in a folder holding our checkpoint or manifest (the caller checks): delete the
    part files they name (every run's) and every other part file of our naming below our
    directories, then the checkpoint and the manifest, then the directories left empty.
    A named path that is not of our naming where we write is not deleted (a tampered state
    file must not make us delete a user's file). Returns how many data files were deleted."""
    named: set[str] = set()
    if state is not None:
        named.update(f.path for f in state.committed_files())
    if document is not None and isinstance(document.get("files"), list):
        named.update(
            str(f["path"]) for f in document["files"] if isinstance(f, dict) and "path" in f
        )
    ours = {p for p in named if _safe_named(storage, p)}
    ours.update(uncommitted(storage, set(), directories))
    for relative in sorted(ours):
        storage.delete(relative)
    for name in (checkpoint.CHECKPOINT_NAME, manifest.MANIFEST_NAME):
        storage.delete(name)
    for directory in directories:
        remove_empty_directories(storage, directory)
    return len(ours)


def remove_empty_directories(storage: Storage, directory: str) -> None:
    """Remove `directory` and its subdirectories, deepest first, where they are empty (local
    only: an object store has no directories to leave behind)."""
    if not storage.local:
        return
    root = Path(storage.path(directory))
    if not root.is_dir():
        return
    for sub in sorted((p for p in root.rglob("*") if p.is_dir()), key=lambda p: -len(p.parts)):
        with contextlib.suppress(OSError):
            sub.rmdir()  # fails, and is meant to, when anything is left inside
    with contextlib.suppress(OSError):
        root.rmdir()


def iso(seconds: float) -> str:
    stamp = datetime.fromtimestamp(seconds, UTC).isoformat(timespec="milliseconds")
    return stamp.replace("+00:00", "Z")


def micros(text: str) -> int:
    return int(datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp() * 1_000_000)


def updated_at_filterable(type_name: str) -> bool:
    attribute = resource_type(type_name).attribute("updatedAt")
    return attribute is not None and attribute.filterable


class Export:
    """A run of `exporter export`; `request_stop()` makes it stop cleanly (SIGINT/SIGTERM).

    Phases, each resumable: `crawl` (the steps, and the records their data links name),
    `deltas` (incremental runs: what changed in each related type), `deletes` (with
    --detect-deletes: tombstones for ids the API no longer has)."""

    def __init__(
        self,
        settings: ExportSettings,
        tokens: TokenSource,
        reporter: Callable[[Callable[[], Snapshot]], Reporter] | None = None,
        *,
        repair: bool = False,
    ) -> None:
        self.settings = settings
        self.repair = repair  # --repair: mend damaged files, rebuild a lost checkpoint
        self.storage = Storage.open(settings.out)
        self.tokens = tokens
        self.make_reporter = reporter
        self._started_at = time.monotonic()
        self.phase = "starting"
        self.crawl_stats = {}
        self.walk_stats = {}
        self.root_type = settings.root_type  # crawled whole; the other types are reached from it
        self.links = parse_selection(settings.relationships, self.root_type)
        targets = list(dict.fromkeys(link.target for link in self.links))
        self.type_names = [self.root_type, *targets]
        # Every type's directory, so files of an earlier selection are cleaned up too.
        self.directories = list(BACKUP_DIRECTORIES)
        self._stoppables: list[CollectionCrawl | RelationshipWalk | DeleteScan] = []
        self._stop_requested = False
        self.client: ApiClient | None = None
        self.stats: dict[str, Any] = {}
        self.lock = OutputLock(self.storage, "export")

    def request_stop(self) -> None:
        self._stop_requested = True
        for part in self._stoppables:
            part.stop()

    def _started(self, part: CollectionCrawl | RelationshipWalk | DeleteScan) -> None:
        self._stoppables.append(part)
        if self._stop_requested:
            part.stop()

    # -- preparing the directory ----------------------------------------------------------
    #
    # In this order, so nothing is deleted on a guess: 1. the lock is held (`run`); 2. the
    # folder's state is read, and what needs no request is refused (`_refuse_early`); 3. one
    # request confirms the credentials and says whose data the base URL serves
    # (`account.identify`); 4. a backup of another account is refused; 5. only then is anything
    # deleted, and only what is provably ours (`_prepare`).

    def _read_state(self) -> Found:
        """What the folder holds of ours (nothing is changed)."""
        storage = self.storage
        found = Found(
            checkpoint_present=storage.exists(checkpoint.CHECKPOINT_NAME),
            manifest_present=storage.exists(manifest.MANIFEST_NAME),
        )
        if found.checkpoint_present:
            try:
                found.state = checkpoint.load(storage)
            except UsageError as exc:
                found.unreadable = exc
        if found.manifest_present:
            with contextlib.suppress(UsageError):
                found.document = manifest.load(storage)
        return found

    def _refuse_early(self, found: Found) -> None:
        """Refusals that need no request (and must not spend one)."""
        s = self.settings
        root = self.storage.display
        if s.restart:
            if self.repair:
                raise UsageError(
                    "--repair mends the backup in --out and --restart discards it: pass one of them"
                )
            return
        state = found.state
        if state is None and found.manifest_present:
            # A finished backup whose checkpoint is gone or damaged: starting over would delete
            # every file it holds. The manifest still describes it, so it can be rebuilt.
            what = "is missing" if found.unreadable is None else "is damaged"
            if isinstance(found.unreadable, checkpoint.UnreadableCheckpoint):
                # why, without the loader's own advice (which this message replaces)
                what = f"is damaged ({found.unreadable.reason})"
            if found.document is None:
                raise UsageError(
                    f"{root} holds a finished backup but its {checkpoint.CHECKPOINT_NAME} {what} "
                    f"and its {manifest.MANIFEST_NAME} cannot be read; nothing was changed. Put "
                    "either back (from wherever the backup was copied from), or choose another --out"
                )
            if not (self.repair and s.incremental):
                raise UsageError(
                    f"{root} holds a finished backup ({manifest.MANIFEST_NAME}) but its "
                    f"{checkpoint.CHECKPOINT_NAME} {what}, so it can neither be resumed nor "
                    "extended; nothing was changed. Pass --incremental --repair to rebuild the "
                    "checkpoint from the manifest and extend the backup, or put the checkpoint "
                    "back (from wherever the backup was copied from)"
                )
            return
        if found.unreadable is not None:
            raise found.unreadable  # an unfinished run's checkpoint: nothing else describes it
        if self.repair and state is None:
            raise UsageError(f"{root} holds no backup to repair; run without --repair to start one")

    def _prepare(self, found: Found, account: Account) -> tuple[RunState, bool]:
        """The run's state, once the account is confirmed; deletes only files of ours."""
        s = self.settings
        storage = self.storage
        root = storage.display
        if s.restart:
            if found.checkpoint_present or found.manifest_present:
                removed = discard_run(storage, found.state, found.document, self.directories)
                event(
                    "run.discard",
                    f"--restart: removed the checkpoint, the manifest and {removed} data file(s)",
                    removed=removed,
                )
            # else: a folder holding no backup of ours; nothing in it is touched.
            return self._new_state(None, account), False
        state = found.state
        if state is None and found.document is not None:
            state = from_manifest(found.document, root)
            self._check_account(state, account)
            unsafe = [f.path for f in state.committed_files() if not _safe_named(storage, f.path)]
            if unsafe:
                raise UsageError(
                    f"{root}: the manifest names {unsafe[0]!r}, which is not a part file of this "
                    "tool where it writes them; the checkpoint is not rebuilt from it"
                )
            self.lock.check()
            checkpoint.save(storage, state)
            event(
                "run.repair",
                f"rebuilt {checkpoint.CHECKPOINT_NAME} from {manifest.MANIFEST_NAME} "
                f"(run {state.run_id})",
                run_id=state.run_id,
            )
        if state is None:
            return self._new_state(None, account), False
        self._check_account(state, account)
        if state.status == "complete" and not s.incremental:
            # Only now, with the account confirmed: a fleet counts this as "already done".
            raise FinishedExport(
                f"{root} already holds a finished export (run {state.run_id}); pass "
                "--incremental to add what changed since (with --repair to mend damaged files), "
                "--restart to replace it, or choose another --out",
                state,
            )
        if state.status == "complete":
            remove_uncommitted(storage, state, self.directories)
            return self._new_state(state, account), False
        expected = sorted(self._resource_names(state.kind))
        if sorted(state.resources) != expected:
            raise UsageError(
                f"{root} holds an unfinished export of {', '.join(sorted(state.resources))}; "
                "resume it with the same --relationships and --detect-deletes, or pass "
                "--restart to discard it"
            )
        if state.account is None:
            state.account = account.to_json()  # an older checkpoint: record whose it is now
        remove_uncommitted(storage, state, self.directories)
        return state, True

    def _check_account(self, state: RunState, account: Account) -> None:
        """Refuse a backup of another account, however the path or the URL is spelled: the
        org ids when both are known; otherwise the canonical base URLs (an older state file
        without `account`: its recorded source); a named source (the demo) must match too."""
        s = self.settings
        recorded = Account.from_json(state.account)
        both_orgs = recorded is not None and recorded.org is not None and account.org is not None
        same = recorded.same_as(account) if both_orgs and recorded is not None else True
        if s.source is not None:
            same = same and state.source == s.source
        elif not both_orgs:
            if recorded is not None:
                same = recorded.origin == account.origin
            else:
                try:
                    same = canonical_base_url(state.source) == account.origin
                except ValueError:
                    same = False
        if not same:
            theirs = recorded.label if recorded is not None else state.source
            mine = s.source or account.label
            raise UsageError(
                f"{self.storage.display} holds a backup of {theirs}, not of {mine}; nothing was "
                "changed. Use another --out for this account (or --restart to discard that backup)"
            )

    # -- damaged files ------------------------------------------------------------------------

    def _check_files(self, state: RunState) -> None:
        """Every committed file is where the checkpoint says, at its size (with --repair: and
        its sha256). Damaged ones stop the run, named; with --repair they are set aside,
        dropped from the checkpoint and recorded to be fetched again (`_refetch_damaged`)."""
        storage = self.storage
        damage = inspect(storage, state.committed_files(), thorough=self.repair)
        if not damage:
            return
        if not self.repair:
            raise damaged_error(storage, damage)
        root = storage.display
        for item in damage:
            data_file = item.file
            if not _safe_named(storage, data_file.path):
                raise UsageError(
                    f"{root}: the checkpoint names {data_file.path!r}, which is not a part file "
                    "of this tool where it writes them; nothing was changed"
                )
            if data_file.type_name == TOMBSTONE_TYPE:
                if TOMBSTONE_TYPE not in state.resources:
                    raise UsageError(
                        f"{shown(storage, data_file.path)} holds tombstones ({item.reason}); "
                        "pass --detect-deletes with --repair, so their ids are checked again "
                        "(an unfinished run without it: let it finish first)"
                    )
            elif data_file.type_name not in state.resources:
                raise UsageError(
                    f"{shown(storage, data_file.path)} holds {data_file.type_name} records "
                    f"({item.reason}), which this run does not export; repair it with the "
                    "--relationships of the run that wrote it"
                )
        for item in damage:
            data_file = item.file
            current = any(data_file in r.files for r in state.resources.values())
            moved = set_aside(storage, data_file.path, state.run_id)
            drop_file(state, data_file.path)
            needs = state.resources[self.root_type].detail.take_file_needs(data_file.path)
            event(
                "run.repair",
                f"{data_file.path} is damaged ({item.reason}): "
                + (f"set aside as {moved}" if moved else "dropped")
                + f"; its {data_file.rows:,} {data_file.type_name} records are fetched again",
                path=data_file.path,
                moved_to=moved,
            )
            if data_file.type_name == TOMBSTONE_TYPE or data_file.min_id is None:
                continue  # tombstones: the --detect-deletes phase checks their ids again
            assert data_file.max_id is not None
            state.resources[data_file.type_name].detail.add_repair(
                {
                    "path": data_file.path,
                    "low": data_file.min_id,
                    "high": data_file.max_id,
                    "rows": data_file.rows,
                    # A full run's own file: its ids are missing; otherwise versions may be.
                    "by": "ids" if current and state.kind == "full" else "versions",
                    "needs": needs,
                }
            )
        self.lock.check()
        checkpoint.save(storage, state)

    async def _refetch_damaged(
        self,
        state: RunState,
        client: ApiClient,
        inbox: asyncio.Queue[Message | None],
        credits: asyncio.Semaphore,
    ) -> None:
        """Fetch again what the damaged files held (steps first: related records are chosen
        by what the steps reach), commit it, then clear the pending repairs."""
        pending = {t: r.detail.repairs for t, r in state.resources.items() if r.detail.repairs}
        if not pending:
            return
        self.phase = "repair"

        async def flush() -> None:
            message = Flush()
            inbox.put_nowait(message)
            await message.done.wait()

        every_type: dict[str, int | None] = {t: None for t in RESOURCE_TYPES}
        rounds = [[self.root_type], [t for t in pending if t != self.root_type]]
        for types in rounds:
            types = [t for t in types if t in pending]
            if not types:
                continue
            index = await asyncio.to_thread(
                load_index,
                self.storage,
                state.committed_files(),
                version_since=every_type,
                links=self.links,
                root_type=self.root_type,
            )
            for type_name in types:
                for entry in pending[type_name]:
                    if self._stop_requested:
                        return
                    await refetch_range(
                        client,
                        base_url=self.settings.base_url,
                        type_name=type_name,
                        low=int(entry["low"]),
                        high=int(entry["high"]),
                        page_size=self.settings.page_size,
                        keep=self._keep(state, type_name, entry["by"] == "ids", index),
                        inbox=inbox,
                        credits=credits,
                        needs=entry.get("needs"),
                    )
            await flush()
        for type_name in pending:
            state.resources[type_name].detail.clear_repairs()
        await flush()  # the repaired rows are committed: the pending repairs go with them

    def _keep(self, state: RunState, type_name: str, by_ids: bool, index: BackupIndex) -> Keep:
        """Which refetched rows a damaged file of `type_name` held: those that belong to the
        backup (steps its partitions had committed; related records its steps reach) and that
        no intact file holds (that id in a full run; that version or a newer one otherwise)."""
        held = index.ids.get(type_name, IdSet())
        versions = index.versions.get(type_name, {})
        steps = index.ids.get(self.root_type, IdSet())
        referenced = index.referenced.get(type_name, IdSet())
        link_only = any(k.link_only for k in self.links if k.target == type_name)
        in_partitions = covered(state.resources[self.root_type].partitions)
        owner = owner_column(self.root_type)

        def keep(table: pa.Table) -> list[bool]:
            ids = table.column("id").to_pylist()
            stamps = (
                _micros(table.column("updatedAt"))
                if "updatedAt" in table.column_names
                else [None] * len(ids)
            )
            if type_name == self.root_type:
                belongs = [in_partitions(i) if by_ids else True for i in ids]
            elif link_only and owner in table.column_names:
                owners = table.column(owner).to_pylist()
                belongs = [o in steps if o is not None else False for o in owners]
            else:
                belongs = [i in referenced for i in ids]
            result = []
            for value, stamp, member in zip(ids, stamps, belongs, strict=True):
                if not (member or value in held):
                    result.append(False)
                elif by_ids or stamp is None:
                    result.append(value not in held)
                else:
                    result.append(versions.get(value, -1) < stamp)
            return result

        return keep

    def _resource_names(self, kind: str) -> list[str]:
        names = list(self.type_names)
        if self.settings.detect_deletes:
            names.append(TOMBSTONE_TYPE)
        return names

    def _new_state(self, previous: RunState | None, account: Account) -> RunState:
        s = self.settings
        run_id = new_run_id()
        state = RunState(
            run_id=run_id,
            started_at=utc_now(),
            source=s.source or redact_url(s.base_url),
            parameters=s.parameters(),
            tool_version=__version__,
            account=account.to_json(),
        )
        if previous is not None:
            assert previous.window_end is not None
            state.kind = "incremental"
            state.history = [*previous.history, previous.summary()]
            since = micros(previous.window_end) / 1_000_000 - s.overlap
            state.window_start = iso(since)
        for type_name in self._resource_names(state.kind):
            if type_name == TOMBSTONE_TYPE:
                directory = f"{TOMBSTONE_DIRECTORY}/run={run_id}"
            else:
                directory = resource_type(type_name).collection
                if state.kind == "incremental":
                    directory += f"/run={run_id}"
            state.resources[type_name] = ResourceState(type_name=type_name, directory=directory)
        return state

    # -- the run ----------------------------------------------------------------------------

    def snapshot(self) -> Snapshot:
        """Counters for the progress display (read-only, no secrets)."""
        resources: dict[str, ResourceProgress] = {}
        for type_name, stats in self.crawl_stats.items():
            item = resources.setdefault(type_name, ResourceProgress())
            item.records += stats.records
            item.pages += stats.pages
            item.total = stats.total
        for type_name, walked in self.walk_stats.items():
            item = resources.setdefault(type_name, ResourceProgress())
            item.records += walked.records
            item.pages += walked.requests
        client = self.client
        return Snapshot(
            elapsed=time.monotonic() - self._started_at,
            phase=self.phase,
            resources=resources,
            requests=client.stats.requests if client else 0,
            retries=client.stats.retries if client else 0,
            rate_remaining=client.stats.rate_remaining if client else None,
            waited=client.stats.rate_wait_seconds if client else 0.0,
        )

    async def run(self) -> ExportResult:
        started = self._started_at = time.monotonic()
        await asyncio.to_thread(self.storage.check_writable)
        # One writer per backup, from before the checkpoint is read to after the last commit.
        await asyncio.to_thread(self.lock.acquire)
        try:
            return await self._run_locked(started)
        finally:
            await asyncio.to_thread(self.lock.release)

    async def _run_locked(self, started: float) -> ExportResult:
        found = await asyncio.to_thread(self._read_state)
        self._refuse_early(found)
        async with ApiClient(self._client_settings(), self.tokens) as client:
            self.client = client
            # One request confirms the credentials and whose data this is, before anything
            # in the folder is deleted (a refused token ends the run here: AuthError).
            account = await identify(client, self.settings.base_url)
            state, resumed = await asyncio.to_thread(self._prepare, found, account)
            # Damaged files stop the run before its checkpoint replaces the backup's.
            await asyncio.to_thread(self._check_files, state)
            event(
                "run.start",
                f"{'resuming' if resumed else 'starting'} {state.kind} run {state.run_id} "
                f"into {self.storage}"
                + (f" (changes since {state.window_start})" if state.window_start else ""),
                run_id=state.run_id,
                kind=state.kind,
                resumed=resumed,
                window_start=state.window_start,
            )
            reporter = self.make_reporter(self.snapshot) if self.make_reporter else None
            display = asyncio.create_task(reporter.run()) if reporter else None
            try:
                return await self._run(state, resumed, started, client)
            finally:
                if display is not None:
                    display.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await display

    def _client_settings(self) -> ClientSettings:
        s = self.settings
        return ClientSettings(
            base_url=s.base_url,
            concurrency=s.concurrency,
            rate_limit=s.rate_limit.requests,
            rate_period=s.rate_limit.seconds,
            read_timeout=s.read_timeout,
            request_deadline=s.request_deadline,
            max_response_bytes=s.max_response_mib * 1024 * 1024,
        )

    async def _run(
        self, state: RunState, resumed: bool, started: float, client: ApiClient
    ) -> ExportResult:
        s = self.settings
        incremental = state.kind == "incremental"
        inbox: asyncio.Queue[Message | None] = asyncio.Queue()
        credits = asyncio.Semaphore(max(4, 2 * s.concurrency))
        policy = CommitPolicy(
            file_rows=s.file_rows, file_bytes=s.file_bytes, commit_interval=s.commit_interval
        )

        async def work() -> None:
            # Damaged files first: the index of the backup is read once they are whole again.
            await self._refetch_damaged(state, client, inbox, credits)
            if self._stop_requested:
                return
            index: BackupIndex | None = None
            if incremental or s.detect_deletes:
                index = await asyncio.to_thread(self._load_index, state)
            await self._phases(state, resumed, index, client, inbox, credits)

        claim: Callable[[], None] | None = None
        if not resumed and state.kind == "full":
            # A folder without our checkpoint: write it before the first part file, so part
            # files of ours never exist without it (what proves them ours to a later run).
            def claim() -> None:
                self.lock.check()
                checkpoint.save(self.storage, state)

        storage = ClaimingStorage(self.storage, claim) if claim is not None else self.storage
        writer = Writer(storage, state, inbox, credits, policy, guard=self.lock.check)
        writer_task = asyncio.create_task(writer.run(), name="writer")
        phases = asyncio.create_task(work(), name="phases")
        failure: BaseException | None = None
        try:
            await asyncio.wait({phases, writer_task}, return_when=asyncio.FIRST_COMPLETED)
            if writer_task.done() and not phases.done():
                # The writer failed (a full disk): nothing will return the page credits the
                # fetchers wait for, so stop them; the writer's error is the one to report.
                phases.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await phases
            await phases
        except BaseException as exc:  # noqa: BLE001 - re-raised below after the commit
            failure = exc
            self.request_stop()
        inbox.put_nowait(None)
        try:
            await writer_task  # commits every page already fetched
        except BaseException:
            writer.discard()
            raise
        if failure is not None:
            raise _unwrap(failure)

        if self._stop_requested or state.phase != "done":
            raise Interrupted(
                f"stopped before the export finished; {state.resources[self.root_type].rows:,} "
                f"{self.root_type} rows of run {state.run_id} are committed. Run the same command "
                "again to resume"
            )
        for resource in state.resources.values():
            resource.finished = True
        state.status = "complete"
        state.finished_at = utc_now()
        seconds = time.monotonic() - started
        self.stats.update(
            {
                "seconds": round(seconds, 3),
                "requests": client.stats.requests,
                "retries": client.stats.retries,
                "rate_limited": client.stats.rate_limited,
                "rate_wait_seconds": round(client.stats.rate_wait_seconds, 3),
                "bytes_received": client.stats.bytes_received,
                "resumed": resumed,
            }
        )
        not_asked = {
            t: how
            for t, r in state.resources.items()
            if (how := r.detail.not_asked_by_step) is not None
        }
        if not_asked:
            self.stats[NOT_ASKED_BY_STEP] = not_asked
        # The manifest first, then the checkpoint that says the run is complete: a kill between
        # the two leaves a run that resumes, finds nothing left to do, and writes both again.
        self.lock.check()
        document = manifest.write(self.storage, state, self.stats)
        checkpoint.save(self.storage, state)
        event(
            "run.finish",
            f"run {state.run_id} finished in {seconds:,.1f}s",
            run_id=state.run_id,
            rows={k: v.rows for k, v in state.resources.items()},
            **{k: v for k, v in self.stats.items() if k in ("seconds", "requests", "retries")},
        )
        return ExportResult(
            state=state,
            manifest=document,
            resumed=resumed,
            seconds=seconds,
            requests=client.stats.requests,
            crawl=self.crawl_stats,
            client={"retries": client.stats.retries, "rate_limited": client.stats.rate_limited},
            walk=self.walk_stats,
        )

    def _load_index(self, state: RunState) -> BackupIndex:
        return load_index(
            self.storage,
            state.committed_files(),
            version_since=self._version_since(state),
            links=self.links,
            root_type=self.root_type,
        )

    def _version_since(self, state: RunState) -> dict[str, int | None]:
        """Per type, from when exported versions are needed to skip boundary duplicates: the
        window's start, or all of them for a type the API cannot filter by `updatedAt`."""
        start = micros(state.window_start) if state.window_start else None
        return {t: (start if updated_at_filterable(t) else None) for t in self.type_names}

    crawl_stats: dict[str, CrawlStats]
    walk_stats: dict[str, WalkStats]

    def _phase(self, state: RunState, name: str) -> None:
        state.phase = self.phase = name
        event("run.phase", f"phase {name}", phase=name, run_id=state.run_id)

    async def _phases(
        self,
        state: RunState,
        resumed: bool,
        index: BackupIndex | None,
        client: ApiClient,
        inbox: asyncio.Queue[Message | None],
        credits: asyncio.Semaphore,
    ) -> None:
        s = self.settings
        incremental = state.kind == "incremental"
        root = state.resources[self.root_type]
        if state.window_end is None:
            start = state.window_start
            await self._mark_window(state, client)
            if index is not None and state.window_start != start:
                # The window now starts earlier: load the versions it needs to skip duplicates.
                index = await asyncio.to_thread(self._load_index, state)
            if incremental:
                # The new run's checkpoint, with its mark, is saved before any data file is
                # begun: a kill from here on leaves an unfinished run, whose next start removes
                # the temporary files it left. (Before, a kill left the previous run's finished
                # checkpoint, and the next run never removed them. A first run needs no such
                # save: with no checkpoint at all, the next start removes every part file.)
                saved = Flush()
                inbox.put_nowait(saved)
                await saved.done.wait()
        since = [("filter[updatedAt]", f"{state.window_start}..inf")] if incremental else []

        def walk_for(
            links: list[Link],
            select: dict[str, RowSelector] | None = None,
            *,
            unsure_filter: bool = False,
        ) -> RelationshipWalk:
            walk = RelationshipWalk(
                client,
                base_url=s.base_url,
                links=links,
                inbox=inbox,
                credits=credits,
                page_size=s.page_size,
                workers=s.concurrency,
                max_url_length=s.max_url_length,
                select=select,
                unsure_filter=unsure_filter,
                root=self.root_type,
            )
            self._started(walk)
            self.walk_stats.update(walk.stats)  # live counters, for the progress display
            return walk

        def crawl_for(
            type_name: str, select: RowSelector | None, walk: RelationshipWalk | None = None
        ) -> CollectionCrawl:
            crawl = CollectionCrawl(
                client,
                base_url=s.base_url,
                type_name=type_name,
                page_size=s.page_size,
                workers=s.concurrency,
                inbox=inbox,
                credits=credits,
                initial_partitions=s.initial_partitions,
                extra_params=since,
                announcer=walk,
                select=select,
            )
            self._started(crawl)
            self.crawl_stats[type_name] = crawl.stats
            return crawl

        async def flush() -> None:
            message = Flush()
            inbox.put_nowait(message)
            await message.done.wait()

        # Phase 1: the steps, and the records their links name (all links in a full run; in an
        # incremental one, only new references of data links: the rest is phase 2's).
        step_links = [link for link in self.links if not (incremental and link.link_only)]
        # Always run: a resumed run whose partitions are all finished still walks the
        # relationships of committed step files that are not yet complete (`resume_walk`).
        walk: RelationshipWalk | None = None
        emitted_steps: list[int] = []
        self._phase(state, "crawl")
        if step_links:
            walk = walk_for(step_links)
            if index is not None:
                for target in walk.targets:
                    walk.seed(target, index.ids.get(target, IdSet()), 0)
            if resumed:
                await asyncio.to_thread(resume_walk, self.storage, state, walk)
        versions = index.versions.get(self.root_type, {}) if index is not None else {}
        crawl = crawl_for(
            self.root_type, SkipKnownVersions(versions) if incremental else None, walk
        )
        async with asyncio.TaskGroup() as group:
            group.create_task(self._crawl_then_close(crawl, walk, root))
            if walk is not None:
                group.create_task(walk.run())
        if walk is not None:
            for type_name, missing in walk.missing().items():
                state.resources[type_name].detail.missing = missing
            for type_name, dropped in walk.unrequested().items():
                state.resources[type_name].detail.unrequested = dropped
        emitted_steps = crawl.emitted_ids()
        if self._stop_requested:
            return
        await flush()

        # Phase 2 (incremental): what changed in each related type that belongs to the backup.
        # A record belongs when the backup holds its id (kept current even once no step names it:
        # its step deleted, or it moved away) or when a step of the backup reaches it now.
        if incremental and index is not None:
            self._phase(state, "deltas")
            members_steps = IdSet(index.ids.get(self.root_type, IdSet()))
            for value in emitted_steps:
                members_steps.add(value)
            refreshed: list[ResourceState] = []
            async with asyncio.TaskGroup() as group:
                for target in dict.fromkeys(link.target for link in self.links):
                    resource = state.resources[target]
                    if resource.planned and all(p.finished for p in resource.partitions):
                        continue
                    link_only = any(k.link_only for k in self.links if k.target == target)
                    held = index.ids.get(target, IdSet())
                    # Versions this run's phase 1 wrote (new references) count as held too.
                    versions = dict(index.versions.get(target, {}))
                    if walk is not None:
                        versions.update(walk.versions.get(target, {}))
                    # Data links: the ids held, those the backup's steps name, and new references.
                    members = IdSet() if link_only else IdSet(held)
                    if not link_only:
                        for value in index.referenced.get(target, IdSet()):
                            members.add(value)
                        if walk is not None and target in walk.targets:
                            for value in walk.targets[target].requested:
                                members.add(value)
                    if updated_at_filterable(target):
                        if link_only:
                            select: RowSelector = BelongsToBackup(
                                members_steps, owner_column(self.root_type), versions, held
                            )
                        else:
                            select = BelongsToBackup(members, "id", versions)
                        crawl = crawl_for(target, select)
                        group.create_task(
                            crawl.run(resource.partitions if resource.planned else None)
                        )
                    else:
                        # No updatedAt filter on this type: ask again for every id the backup
                        # holds or its steps name, then (when the type points back at its step)
                        # for every record of the backup's steps, which finds new and moved
                        # ones; keep only versions not written yet.
                        remembered = SkipKnownVersions(versions, remember=True)
                        refreshes = [
                            walk_for(
                                [k for k in self.links if k.target == target],
                                {target: remembered},
                            )
                        ]
                        refreshes[0].request(target, members)
                        back = step_back_link(target, self.root_type)
                        if back is not None:
                            # API-FACTS states `filter[sequenceStep][id]` for calls, mailings
                            # and tasks only: should the API refuse or ignore it here, the
                            # walk stops asking by step and says so (`NOT_ASKED_BY_STEP`).
                            by_step = walk_for([back], {target: remembered}, unsure_filter=True)
                            by_step.request_steps(target, members_steps)
                            refreshes.append(by_step)
                        group.create_task(self._finish_refresh(refreshes, resource, refreshed))
            if self._stop_requested:
                return
            await flush()
            for resource in refreshed:
                resource.planned = True  # recorded only once its pages are committed
            await flush()

        # Phase 3: tombstones for ids the API no longer has.
        if s.detect_deletes:
            self._phase(state, "deletes")
            fresh = await asyncio.to_thread(self._load_index, state)
            scan = DeleteScan(
                client,
                base_url=s.base_url,
                inbox=inbox,
                credits=credits,
                run_id=state.run_id,
                page_size=s.page_size,
                workers=s.concurrency,
                max_url_length=s.max_url_length,
            )
            self._started(scan)
            for type_name in self.type_names:
                await scan.scan(type_name, fresh.live_ids(type_name))
            self.stats["deletes"] = {
                t: {"checked": d.checked, "tombstones": d.tombstones, "requests": d.requests}
                for t, d in scan.stats.items()
            }
            if self._stop_requested:
                return
            await flush()
        self._phase(state, "done")

    async def _finish_refresh(
        self, refreshes: list[RelationshipWalk], resource: ResourceState, done: list[ResourceState]
    ) -> None:
        """Run the refresh walks of one type one after the other (they share a selector)."""
        for refresh in refreshes:
            refresh.close()
            await refresh.run()
            for dropped in refresh.unrequested().values():
                resource.detail.unrequested = dropped
            for how in refresh.not_asked.values():
                resource.detail.not_asked_by_step = how  # in the checkpoint, then the manifest
            if self._stop_requested:
                return
        done.append(resource)

    async def _mark_window(self, state: RunState, client: ApiClient) -> None:
        """Take the run's mark, the end of its window (the next window starts there, less the
        overlap), before any data is read; say in the root type's `detail.mark` what it is
        based on.

        1. The API's clock (its Date header at its first answer; a first small request when
           there was none yet) and this machine's clock.
        2. When they disagree by more than `MAX_CLOCK_SKEW`, the earlier of the two, with a
           warning: a mark too late loses the changes between the two for good (the next
           window starts after them), one too early only fetches some records again.
        3. A window that would start after its end (a previous mark taken from a wrong clock)
           is never accepted: it starts where the previous run began by this machine's clock,
           less the overlap, with a warning; when even that is after the end, the run stops
           with a usage error and exports nothing.
        """
        if client.stats.server_time is None:
            await client.get_document(
                collection_url(
                    self.settings.base_url,
                    resource_type(self.root_type).collection,
                    [("page[size]", "1"), (f"fields[{self.root_type}]", "")],
                )
            )
        local = time.time()
        server = client.stats.server_time
        basis: dict[str, Any] = {"local_clock": iso(local)}
        if server is None:
            mark = local
            basis["based_on"] = "local clock"
            basis["reason"] = "the API sent no usable Date header"
        else:
            skew = server - local
            basis.update(server_clock=iso(server), skew_seconds=round(skew, 3))
            mark = min(server, local) if abs(skew) > MAX_CLOCK_SKEW else server
            basis["based_on"] = "server clock" if mark == server else "local clock"
            if abs(skew) > MAX_CLOCK_SKEW:
                event(
                    "clock.skew",
                    f"the API's clock ({iso(server)}, its Date header) is "
                    f"{abs(skew):,.0f} s {'ahead of' if skew > 0 else 'behind'} this machine's "
                    f"({iso(local)}); the run's mark is the earlier, {iso(mark)}",
                    logging.WARNING,
                    server_clock=iso(server),
                    local_clock=iso(local),
                    skew_seconds=round(skew, 3),
                )
        if state.window_start is not None and micros(state.window_start) > mark * 1_000_000:
            previous = state.history[-1] if state.history else {}
            began = previous.get("started_at")
            fallback = micros(began) / 1_000_000 - self.settings.overlap if began else None
            if fallback is None or fallback > mark:
                raise UsageError(
                    f"the incremental window would start at {state.window_start}, after its end "
                    f"{iso(mark)} (a clock, the API's or this machine's, is wrong); nothing was "
                    "exported. Check this machine's clock and run again"
                )
            event(
                "window.clamped",
                f"the incremental window would start at {state.window_start} (the last run's "
                f"mark less the overlap), after its end {iso(mark)}: that mark came from a wrong "
                f"clock. Starting instead where the last run began, {iso(fallback)}",
                logging.WARNING,
                window_start=state.window_start,
                window_end=iso(mark),
                clamped_to=iso(fallback),
            )
            basis["window_start_clamped_from"] = state.window_start
            state.window_start = iso(fallback)
        state.resources[self.root_type].detail.mark = basis
        state.window_end = iso(mark)

    @staticmethod
    async def _crawl_then_close(
        crawl: CollectionCrawl, walk: RelationshipWalk | None, root: ResourceState
    ) -> None:
        await crawl.run(root.partitions if root.planned else None)
        if walk is not None:
            walk.close()  # no more steps: flush the partial batches


def _unwrap(exc: BaseException) -> BaseException:
    """The first real error inside TaskGroup's ExceptionGroup."""
    while isinstance(exc, BaseExceptionGroup):
        exc = exc.exceptions[0]
    return exc


__all__ = ["Export", "ExportResult", "FinishedExport", "OutputError"]
