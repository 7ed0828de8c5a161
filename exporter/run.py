"""One export run, end to end: prepare the output directory, resume or plan, crawl, commit, write the manifest.

Order of a run:
1. check the output directory is writable; read its checkpoint, if any;
2. a finished run there is refused (use another --out or --restart); an unfinished one from the
   same source is resumed: part files no checkpoint names are removed and every partition starts
   past what it had committed;
3. crawl (fetch workers) and writer run side by side; on a failure or a stop request the crawl
   stops starting requests, the writer commits every page already fetched, and the checkpoint
   stays valid for the next run;
4. on success, the checkpoint is marked complete and `_manifest.json` is written last.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from exporter import __version__, checkpoint, manifest
from exporter.auth import TokenSource
from exporter.checkpoint import ResourceState, RunState
from exporter.client import ApiClient, ClientSettings
from exporter.compact import ROOT_TYPE
from exporter.config import ExportSettings
from exporter.crawl import CollectionCrawl, CrawlStats, Flush, Message, RowSelector
from exporter.deletes import DeleteScan
from exporter.errors import Interrupted, OutputError, UsageError, redact_url
from exporter.history import BackupIndex, BelongsToBackup, SkipKnownVersions, load_index
from exporter.lock import OutputLock
from exporter.normalize import TOMBSTONE_TYPE
from exporter.pagination import collection_url
from exporter.progress import Reporter, ResourceProgress, Snapshot, event
from exporter.relationships import (
    IdSet,
    Link,
    RelationshipWalk,
    WalkStats,
    parse_selection,
    step_back_link,
)
from exporter.schema import RESOURCE_TYPES, resource_type
from exporter.sink import INPROGRESS_SUFFIX
from exporter.storage import Storage
from exporter.writer import CommitPolicy, Writer

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


TOMBSTONE_DIRECTORY = "tombstones"


def _is_ours(relative: str) -> bool:
    """A part file or a temporary one: what an export writes below its type directories."""
    name = relative.rsplit("/", 1)[-1]
    return (name.startswith("part-") and name.endswith(".parquet")) or (
        name.startswith(".part-") and name.endswith(INPROGRESS_SUFFIX)
    )


# Every directory an export writes into (an earlier selection's types included), tombstones last.
BACKUP_DIRECTORIES = [
    *(resource_type(t).collection for t in RESOURCE_TYPES),
    TOMBSTONE_DIRECTORY,
]


def uncommitted(storage: Storage, named: set[str], directories: list[str]) -> list[str]:
    """Part files below our directories that `named` (a checkpoint's files) does not hold:
    uploads completed but never committed, and temporary files. Files we did not write stay."""
    return [
        relative
        for directory in directories
        for relative in storage.list_files(directory)
        if _is_ours(relative) and relative not in named
    ]


def remove_uncommitted(storage: Storage, state: RunState | None, directories: list[str]) -> int:
    """Delete the `uncommitted` files of `state` (all part files when None); returns the count."""
    named = {f.path for f in state.committed_files()} if state else set()
    found = uncommitted(storage, named, directories)
    for relative in found:
        storage.delete(relative)
    return len(found)


def discard_run(storage: Storage, directories: list[str]) -> None:
    """`--restart`: remove every run's files, the checkpoint and the manifest."""
    for directory in directories:
        storage.delete_dir(directory)
    for name in (checkpoint.CHECKPOINT_NAME, manifest.MANIFEST_NAME):
        storage.delete(name)


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
    ) -> None:
        self.settings = settings
        self.storage = Storage.open(settings.out)
        self.tokens = tokens
        self.make_reporter = reporter
        self._started_at = time.monotonic()
        self.phase = "starting"
        self.crawl_stats = {}
        self.walk_stats = {}
        self.links = parse_selection(settings.relationships)
        targets = list(dict.fromkeys(link.target for link in self.links))
        self.type_names = [ROOT_TYPE, *targets]
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

    def _prepare(self) -> tuple[RunState, bool]:
        s = self.settings
        storage = self.storage
        root = storage.display
        if s.restart:
            discard_run(storage, self.directories)
        state = checkpoint.load(storage)
        if state is None and storage.exists(manifest.MANIFEST_NAME):
            # A finished backup whose checkpoint is gone (deleted, or not copied along): starting
            # over would delete every file it holds. Refuse; the manifest still describes it.
            raise UsageError(
                f"{root} holds a finished backup ({manifest.MANIFEST_NAME}) but its "
                f"{checkpoint.CHECKPOINT_NAME} is missing, so it can neither be resumed nor "
                "extended; nothing was changed. Put the checkpoint back (from wherever the "
                "backup was copied from), choose another --out, or pass --restart to discard "
                "the backup and start over"
            )
        source = s.source or redact_url(s.base_url)
        if state is not None and state.source != source:
            raise UsageError(
                f"{root} holds an export from {state.source}, not {source}; "
                "pass --restart to discard it, or choose another --out"
            )
        if state is not None and state.status == "complete":
            if not s.incremental:
                raise UsageError(
                    f"{root} already holds a finished export (run {state.run_id}); pass "
                    "--incremental to add what changed since, --restart to replace it, or "
                    "choose another --out"
                )
            return self._new_state(state), False
        if state is not None:
            expected = sorted(self._resource_names(state.kind))
            if sorted(state.resources) != expected:
                raise UsageError(
                    f"{root} holds an unfinished export of {', '.join(sorted(state.resources))}; "
                    "resume it with the same --relationships and --detect-deletes, or pass "
                    "--restart to discard it"
                )
            remove_uncommitted(storage, state, self.directories)
            return state, True
        remove_uncommitted(storage, None, self.directories)
        return self._new_state(None), False

    def _resource_names(self, kind: str) -> list[str]:
        names = list(self.type_names)
        if self.settings.detect_deletes:
            names.append(TOMBSTONE_TYPE)
        return names

    def _new_state(self, previous: RunState | None) -> RunState:
        s = self.settings
        run_id = new_run_id()
        state = RunState(
            run_id=run_id,
            started_at=utc_now(),
            source=s.source or redact_url(s.base_url),
            parameters=s.parameters(),
            tool_version=__version__,
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
        state, resumed = self._prepare()
        event(
            "run.start",
            f"{'resuming' if resumed else 'starting'} {state.kind} run {state.run_id} into {self.storage}"
            + (f" (changes since {state.window_start})" if state.window_start else ""),
            run_id=state.run_id,
            kind=state.kind,
            resumed=resumed,
            window_start=state.window_start,
        )
        reporter = self.make_reporter(self.snapshot) if self.make_reporter else None
        display = asyncio.create_task(reporter.run()) if reporter else None
        try:
            return await self._run(state, resumed, started)
        finally:
            if display is not None:
                display.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await display

    async def _run(self, state: RunState, resumed: bool, started: float) -> ExportResult:
        s = self.settings
        incremental = state.kind == "incremental"
        index: BackupIndex | None = None
        if incremental or s.detect_deletes:
            index = await asyncio.to_thread(self._load_index, state)
        inbox: asyncio.Queue[Message | None] = asyncio.Queue()
        credits = asyncio.Semaphore(max(4, 2 * s.concurrency))
        policy = CommitPolicy(
            file_rows=s.file_rows, file_bytes=s.file_bytes, commit_interval=s.commit_interval
        )
        client_settings = ClientSettings(
            base_url=s.base_url,
            concurrency=s.concurrency,
            rate_limit=s.rate_limit.requests,
            rate_period=s.rate_limit.seconds,
            read_timeout=s.read_timeout,
        )
        writer = Writer(self.storage, state, inbox, credits, policy, guard=self.lock.check)
        async with ApiClient(client_settings, self.tokens) as client:
            self.client = client
            writer_task = asyncio.create_task(writer.run(), name="writer")
            phases = asyncio.create_task(
                self._phases(state, resumed, index, client, inbox, credits), name="phases"
            )
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
                f"stopped before the export finished; {state.resources[ROOT_TYPE].rows:,} "
                f"{ROOT_TYPE} rows of run {state.run_id} are committed. Run the same command "
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
            root_type=ROOT_TYPE,
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
        root = state.resources[ROOT_TYPE]
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
            links: list[Link], select: dict[str, RowSelector] | None = None
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
        versions = index.versions.get(ROOT_TYPE, {}) if index is not None else {}
        crawl = crawl_for(ROOT_TYPE, SkipKnownVersions(versions) if incremental else None, walk)
        async with asyncio.TaskGroup() as group:
            group.create_task(self._crawl_then_close(crawl, walk, root))
            if walk is not None:
                group.create_task(walk.run())
        if walk is not None:
            for type_name, missing in walk.missing().items():
                state.resources[type_name].detail["missing"] = missing
            for type_name, dropped in walk.unrequested().items():
                state.resources[type_name].detail["unrequested"] = dropped
        emitted_steps = crawl.emitted_ids()
        if self._stop_requested:
            return
        await flush()

        # Phase 2 (incremental): what changed in each related type that belongs to the backup.
        # A record belongs when the backup holds its id (kept current even once no step names it:
        # its step deleted, or it moved away) or when a step of the backup reaches it now.
        if incremental and index is not None:
            self._phase(state, "deltas")
            members_steps = IdSet(index.ids.get(ROOT_TYPE, IdSet()))
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
                                members_steps, "sequenceStepId", versions, held
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
                        back = step_back_link(target)
                        if back is not None:
                            by_step = walk_for([back], {target: remembered})
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
                resource.detail["unrequested"] = dropped
            if self._stop_requested:
                return
        done.append(resource)

    async def _mark_window(self, state: RunState, client: ApiClient) -> None:
        """Take the run's mark, the end of its window (the next window starts there, less the
        overlap), before any data is read; say in the root type's `detail["mark"]` what it is
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
                    resource_type(ROOT_TYPE).collection,
                    [("page[size]", "1"), (f"fields[{ROOT_TYPE}]", "")],
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
        state.resources[ROOT_TYPE].detail["mark"] = basis
        state.window_end = iso(mark)

    @staticmethod
    async def _crawl_then_close(
        crawl: CollectionCrawl, walk: RelationshipWalk | None, root: ResourceState
    ) -> None:
        await crawl.run(root.partitions if root.planned else None)
        if walk is not None:
            walk.close()  # no more steps: flush the partial batches


def resume_walk(storage: Storage, state: RunState, walk: RelationshipWalk) -> None:
    """Resume the relationship walk from what the checkpoint proves.

    1. Related records already committed are neither fetched nor written again (their ids are
       read from the committed files).
    2. A committed step file whose references end above a type's committed watermark
       (`needs` > `positions_through`) is announced again for that type, and its `needs`
       rewritten to the new positions, so a second kill loses nothing either.
    """
    root = state.resources[ROOT_TYPE]
    needs_by_file: dict[str, dict[str, int]] = root.detail.setdefault("needs", {})
    watermark: dict[str, int] = {}
    for target in walk.targets:
        resource = state.resources[target]
        ids: list[int] = []
        for data_file in resource.files:
            ids.extend(read_column(storage, data_file.path, "id"))
        watermark[target] = int(resource.detail.get("positions_through", 0))
        highest = max(
            [
                watermark[target],
                *(int(end) for _start, end in resource.detail.get("ranges_above", [])),
                *(needs.get(target, 0) for needs in needs_by_file.values()),
            ]
        )
        walk.seed(target, ids, highest)
        # Every earlier position is now either committed or announced again below.
        resource.detail["positions_through"] = highest
        resource.detail["ranges_above"] = []
    for data_file in root.files:
        needs = needs_by_file.get(data_file.path, {})
        lagging = {t for t in walk.targets if needs.get(t, 0) > watermark[t]}
        if not lagging:
            continue
        renewed = dict(needs)
        for table in read_batches(storage, data_file.path):
            renewed.update(walk.announce(table, only=lagging))
        needs_by_file[data_file.path] = renewed


def read_column(storage: Storage, relative: str, column: str) -> list[int]:
    table = pq.read_table(storage.path(relative), columns=[column], filesystem=storage.fs)
    values: list[int] = table.column(column).to_pylist()
    return values


def read_batches(storage: Storage, relative: str) -> Iterator[pa.Table]:
    parquet = pq.ParquetFile(storage.fs.open_input_file(storage.path(relative)))
    for batch in parquet.iter_batches(batch_size=50_000):
        yield pa.Table.from_batches([batch])


def _unwrap(exc: BaseException) -> BaseException:
    """The first real error inside TaskGroup's ExceptionGroup."""
    while isinstance(exc, BaseExceptionGroup):
        exc = exc.exceptions[0]
    return exc


__all__ = ["Export", "ExportResult", "OutputError"]
