"""One export run, end to end: prepare the output directory, resume or plan, crawl, commit, write the manifest.

Order of a run:
1. check the output directory is writable and take its lock; read its checkpoint and manifest
   (`backup.catalog`);
2. refuse what needs no request; then one request confirms the credentials and whose data the
   base URL serves (`account.identify`), and the plan (`export.plan`) decides: a backup of
   another account is refused; a finished backup of this account without --incremental is
   `FinishedExport` (use another --out, --incremental or --restart);
3. only then, as the plan says, delete, and only files of ours in a folder holding our
   checkpoint or manifest (`backup.layout`):
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
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

from exporter import __version__
from exporter.api.account import Account, identify
from exporter.api.auth import TokenSource
from exporter.api.client import ApiClient, ClientSettings
from exporter.api.inflight import ResizableSemaphore
from exporter.backup import catalog, checkpoint, manifest
from exporter.backup.catalog import Found
from exporter.backup.checkpoint import ResourceState, RunState
from exporter.backup.detail import NOT_ASKED_BY_STEP
from exporter.backup.layout import (
    BACKUP_DIRECTORIES,
    ClaimingStorage,
    discard_run,
    new_run_id,
    remove_uncommitted,
    run_directory,
)
from exporter.backup.lock import OutputLock
from exporter.backup.manifest import ManifestDocument
from exporter.backup.storage import Storage
from exporter.core.config import DEFAULT_RESOURCES, Concurrency, ExportSettings
from exporter.core.errors import (
    ApiError,
    Interrupted,
    OutputError,
    redact_url,
)
from exporter.core.events import event
from exporter.core.progress import Reporter, ResourceProgress, Snapshot
from exporter.core.times import micros, utc_now
from exporter.export.crawl import (
    CollectionCrawl,
    CrawlStats,
    Message,
    PageFlow,
    RowSelector,
    cut_when_read_whole,
    flush,
)
from exporter.export.damaged import check_files, pending_repairs, refetch_damaged
from exporter.export.deletes import DeleteScan
from exporter.export.history import (
    BackupIndex,
    BelongsToBackup,
    SkipKnownVersions,
    load_index,
)
from exporter.export.idset import IdSet
from exporter.export.links import Link, owner_column, parse_selection, step_back_link
from exporter.export.plan import (
    ExportRequest,
    Extend,
    Refuse,
    Resume,
    StartFull,
    plan_export,
    refusal_before_request,
)
from exporter.export.relationships import RelationshipWalk, WalkStats
from exporter.export.selection import parse_resources
from exporter.export.walk_resume import resume_walk
from exporter.export.window import integer_ids, mark_window, root_window
from exporter.export.writer import CommitPolicy, Writer
from exporter.model.fastpage import PagePaths
from exporter.model.normalize import TOMBSTONE_TYPE
from exporter.model.schema import (
    resource_type,
)


@dataclass
class ExportResult:
    state: RunState
    manifest: ManifestDocument
    resumed: bool
    seconds: float
    requests: int
    crawl: dict[str, CrawlStats] = field(default_factory=dict)
    client: dict[str, Any] = field(default_factory=dict)
    walk: dict[str, WalkStats] = field(default_factory=dict)
    refused: dict[str, str] = field(default_factory=dict)  # type -> the scope the token lacks

    @property
    def rows(self) -> dict[str, int]:
        return {k: v.rows for k, v in self.state.resources.items()}


def updated_at_filterable(type_name: str) -> bool:
    attribute = resource_type(type_name).attribute("updatedAt")
    return attribute is not None and attribute.filterable


def fetch_workers(concurrency: Concurrency) -> int:
    """Requests one fetcher (a crawl, the walk, the delete scan) keeps going at once: a pinned
    bound's, or twice where an adaptive one starts (16), never past its ceiling. Not the
    ceiling: an idle crawl worker splits a partition before it waits for a slot, and each split
    costs a short page (64 workers took 109 requests where 8 took 64 for the demo's 38,473
    records). Several fetchers at once (roots, the walk) share the rest of the bound."""
    if concurrency.pinned is not None:
        return concurrency.pinned
    return min(concurrency.ceiling, 2 * concurrency.start)


def page_credits(bound: int) -> int:
    """Pages fetched but not yet written, at most: the requests in flight and as many more
    (at most 8) waiting for the writer. A bound of 8 keeps the 16 it always had; a grown one
    adds only the pages in flight, so memory follows the bound, not its ceiling."""
    return max(4, bound + min(bound, 8))


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
        finished_since: str | None = None,
    ) -> None:
        self.settings = settings
        self.repair = repair  # --repair: mend damaged files, rebuild a lost checkpoint
        # A fleet's start (`utc_now()` text): a backup finished since is done, even with
        # --incremental (`ExportRequest.finished_since`).
        self.finished_since = finished_since
        self.storage = Storage.open(settings.out)
        self.tokens = tokens
        self.make_reporter = reporter
        self._started_at = time.monotonic()
        self.phase = "starting"
        self.crawl_stats = {}
        self.walk_stats = {}
        # The collections crawled whole (`--resources`); the step root among them keeps its
        # relationship walk, whose targets that are roots themselves it does not fetch: each
        # record is fetched once per run.
        self.roots = parse_resources(settings.resources)
        self.default_selection = settings.resources == DEFAULT_RESOURCES
        walks = settings.root_type in self.roots
        # The root whose detail holds the run's mark: the step root, else the first selected.
        self.root_type = settings.root_type if walks else self.roots[0]
        links = parse_selection(settings.relationships, self.root_type) if walks else []
        self.links = [link for link in links if link.target not in self.roots]
        targets = list(dict.fromkeys(link.target for link in self.links))
        self.type_names = [*self.roots, *(t for t in targets if t not in self.roots)]
        # Roots the token may not read (403 unauthorizedOauthScope): type -> the scope to add.
        self.refused: dict[str, str] = {}
        # Every type's directory, so files of an earlier selection are cleaned up too.
        self.directories = list(BACKUP_DIRECTORIES)
        self._stoppables: list[CollectionCrawl | RelationshipWalk | DeleteScan] = []
        self._stop_requested = False
        self.client: ApiClient | None = None
        self.stats: dict[str, Any] = {}
        # Pages of this process's run read into records, by the path that read them.
        self.page_paths = PagePaths()
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
    # folder's catalog is read, and what needs no request is refused
    # (`plan.refusal_before_request`); 3. one request confirms the credentials and says whose
    # data the base URL serves (`account.identify`); 4. the plan is made (`plan.plan_export`:
    # a backup of another account is refused); 5. only then is anything deleted, and only what
    # is provably ours (`_prepare`).

    def _request(self) -> ExportRequest:
        s = self.settings
        return ExportRequest(
            where=self.storage.display,
            type_names=tuple(self._resource_names()),
            incremental=s.incremental,
            restart=s.restart,
            repair=self.repair,
            source=s.source,
            overlap=s.overlap,
            finished_since=self.finished_since,
            resources=s.resources,
        )

    def _prepare(self, found: Found, account: Account) -> tuple[RunState, bool]:
        """The run's state, as the plan says, once the account is confirmed; deletes only
        files of ours."""
        storage = self.storage
        plan = plan_export(found, self._request(), account)
        if isinstance(plan, Refuse):
            raise plan.error  # FinishedExport among them: a fleet counts it as "already done"
        if isinstance(plan, StartFull):
            if plan.discard:
                removed = discard_run(storage, found.state, found.document, self.directories)
                event(
                    "run.discard",
                    f"--restart: removed the checkpoint, the manifest and {removed} data file(s)",
                    removed=removed,
                )
            return self._new_state(account, None), False
        if isinstance(plan, Resume):
            state = plan.state
            if state.account is None:
                state.account = account.to_json()  # an older checkpoint: record whose it is now
            remove_uncommitted(storage, state, self.directories)
            return state, True
        previous = plan.previous
        if plan.rebuilt:
            self.lock.check()
            checkpoint.save(storage, previous)
            event(
                "run.repair",
                f"rebuilt {checkpoint.CHECKPOINT_NAME} from {manifest.MANIFEST_NAME} "
                f"(run {previous.run_id})",
                run_id=previous.run_id,
            )
        remove_uncommitted(storage, previous, self.directories)
        return self._new_state(account, plan), False

    def _resource_names(self) -> list[str]:
        names = list(self.type_names)
        if self.settings.detect_deletes:
            names.append(TOMBSTONE_TYPE)
        return names

    def _new_state(self, account: Account, extend: Extend | None) -> RunState:
        """A new run's state: a full one, or (`extend`) an incremental one on top of the last."""
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
        if extend is not None:
            previous = extend.previous
            state.kind = "incremental"
            state.history = [*previous.history, previous.summary()]
            state.window_start = extend.window_start
        for type_name in self._resource_names():
            directory = run_directory(type_name, state.kind, run_id)
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
            in_flight_bound=client.stats.bound if client else None,
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
        found = await asyncio.to_thread(catalog.read, self.storage)
        refused = refusal_before_request(found, self._request())
        if refused is not None:
            raise refused
        async with ApiClient(self._client_settings(), self.tokens) as client:
            self.client = client
            # One request confirms the credentials and whose data this is, before anything
            # in the folder is deleted (a refused token ends the run here: AuthError).
            account = await identify(client, self.settings.base_url)
            state, resumed = await asyncio.to_thread(self._prepare, found, account)
            # Damaged files stop the run before its checkpoint replaces the backup's.
            await asyncio.to_thread(
                check_files,
                self.storage,
                state,
                repair=self.repair,
                root_type=self.root_type,
                check_lock=self.lock.check,
            )
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
        client = ClientSettings(
            base_url=s.base_url,
            concurrency=s.in_flight.start,
            adaptive_ceiling=s.in_flight.ceiling if s.in_flight.adaptive else None,
            rate_limit=s.rate_limit.requests,
            rate_period=s.rate_limit.seconds,
            read_timeout=s.read_timeout,
            request_deadline=s.request_deadline,
            max_response_bytes=s.max_response_mib * 1024 * 1024,
        )
        if s.retry is not None:  # tests and soaks wait less, slow links more (RetryPolicy)
            client = replace(
                client,
                max_attempts=s.retry.attempts,
                backoff_base=s.retry.backoff_base,
                backoff_max=s.retry.backoff_max,
            )
        return client

    async def _run(
        self, state: RunState, resumed: bool, started: float, client: ApiClient
    ) -> ExportResult:
        s = self.settings
        incremental = state.kind == "incremental"
        inbox: asyncio.Queue[Message | None] = asyncio.Queue()
        # Page credits follow the in-flight bound (`page_credits`), never its ceiling.
        credits = ResizableSemaphore(page_credits(client.in_flight.bound))
        client.watch_bound(lambda bound: setattr(credits, "limit", page_credits(bound)))
        policy = CommitPolicy(
            file_rows=s.file_rows, file_bytes=s.file_bytes, commit_interval=s.commit_interval
        )

        async def work() -> None:
            # Damaged files first: the index of the backup is read once they are whole again.
            if pending_repairs(state):
                self.phase = "repair"
                await refetch_damaged(
                    state,
                    client,
                    inbox,
                    credits,
                    storage=self.storage,
                    base_url=s.base_url,
                    page_size=s.page_size,
                    links=self.links,
                    root_type=self.root_type,
                    page_paths=self.page_paths,
                    stopped=lambda: self._stop_requested,
                )
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
                "in_flight_bound": {
                    "setting": str(s.in_flight),
                    "peak": client.stats.peak_bound,
                    "last": client.stats.bound,
                    "cuts": client.stats.bound_cuts,
                },
                "bytes_received": client.stats.bytes_received,
                "resumed": resumed,
                "page_paths": self.page_paths.to_json(),
            }
        )
        not_asked = {
            t: how
            for t, r in state.resources.items()
            if (how := r.detail.not_asked_by_step) is not None
        }
        if not_asked:
            self.stats[NOT_ASKED_BY_STEP] = not_asked
        if self.refused:
            self.stats["refused"] = dict(sorted(self.refused.items()))
        # The manifest first, then the checkpoint that says the run is complete: a kill between
        # the two leaves a run that resumes, finds nothing left to do, and writes both again.
        self.lock.check()
        document = manifest.write(self.storage, state, self.stats)
        checkpoint.save(self.storage, state)
        paths = self.stats["page_paths"]
        event(
            "run.finish",
            f"run {state.run_id} finished in {seconds:,.1f}s, pages "
            f"{paths['fast']:,} fast/{paths['slow']:,} slow",
            run_id=state.run_id,
            rows={k: v.rows for k, v in state.resources.items()},
            **{
                k: v
                for k, v in self.stats.items()
                if k in ("seconds", "requests", "retries", "page_paths")
            },
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
            refused=dict(self.refused),
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
        """The run's phases, each committed before the next: the window's mark (an
        incremental run's is saved first), the crawl of the roots and the records their links
        name, an incremental run's deltas, the delete scan."""
        s = self.settings
        incremental = state.kind == "incremental"
        if state.window_end is None:
            start = state.window_start
            await mark_window(
                state,
                client,
                base_url=s.base_url,
                root_type=self.root_type,
                overlap=s.overlap,
            )
            if index is not None and state.window_start != start:
                # The window now starts earlier: load the versions it needs to skip duplicates.
                index = await asyncio.to_thread(self._load_index, state)
            if incremental:
                # The new run's checkpoint, with its mark, is saved before any data file is
                # begun: a kill from here on leaves an unfinished run, whose next start removes
                # the temporary files it left. (Before, a kill left the previous run's finished
                # checkpoint, and the next run never removed them. A first run needs no such
                # save: with no checkpoint at all, the next start removes every part file.)
                await flush(inbox)
        flow = PageFlow(
            client,
            s.base_url,
            inbox,
            credits,
            page_size=s.page_size,
            workers=fetch_workers(s.in_flight),
            max_url_length=s.max_url_length,
            page_paths=self.page_paths,
        )
        walk, emitted_steps = await self._crawl_phase(state, resumed, index, flow)
        if self._stop_requested:
            return
        await flush(inbox)
        if incremental and index is not None:
            await self._deltas_phase(state, index, flow, walk, emitted_steps)
            if self._stop_requested:
                return
        if s.detect_deletes:
            await self._deletes_phase(state, flow)
            if self._stop_requested:
                return
        self._phase(state, "done")

    def _since(self, state: RunState) -> list[tuple[str, str]]:
        """An incremental run's filter on `updatedAt` (its window); nothing for a full run."""
        if state.kind != "incremental":
            return []
        return [("filter[updatedAt]", f"{state.window_start}..inf")]

    def _walk_for(
        self,
        flow: PageFlow,
        links: list[Link],
        select: dict[str, RowSelector] | None = None,
        *,
        unsure_filter: bool = False,
    ) -> RelationshipWalk:
        walk = RelationshipWalk(
            flow,
            links=links,
            select=select,
            unsure_filter=unsure_filter,
            root=self.root_type,
        )
        self._started(walk)
        self.walk_stats.update(walk.stats)  # live counters, for the progress display
        return walk

    def _crawl_for(
        self,
        flow: PageFlow,
        type_name: str,
        select: RowSelector | None,
        walk: RelationshipWalk | None = None,
        *,
        params: list[tuple[str, str]],
        first_page: bool = False,
        expect_large: bool = False,
    ) -> CollectionCrawl:
        s = self.settings
        crawl = CollectionCrawl(
            flow,
            type_name=type_name,
            # Two per request of the starting bound; idle workers split more as it grows.
            initial_partitions=s.initial_partitions or 2 * s.in_flight.start,
            extra_params=params,
            announcer=walk,
            select=select,
            first_page=first_page,
            expect_large=expect_large,
        )
        self._started(crawl)
        self.crawl_stats[type_name] = crawl.stats
        return crawl

    async def _crawl_phase(
        self, state: RunState, resumed: bool, index: BackupIndex | None, flow: PageFlow
    ) -> tuple[RelationshipWalk | None, list[int]]:
        """Phase 1: the roots, and the records the steps' links name (all links in a full
        run; in an incremental one, only new references of data links: the rest is phase
        2's). The walk, and the step ids this run emitted (only an incremental run with a
        backup index keeps them: a full run never holds its million ids as Python ints)."""
        s = self.settings
        incremental = state.kind == "incremental"
        step_links = [link for link in self.links if not (incremental and link.link_only)]
        # Always run: a resumed run whose partitions are all finished still walks the
        # relationships of committed step files that are not yet complete (`resume_walk`).
        walk: RelationshipWalk | None = None
        self._phase(state, "crawl")
        if step_links:
            walk = self._walk_for(flow, step_links)
            if index is not None:
                for target in walk.targets:
                    walk.seed(target, index.ids.get(target, IdSet()), 0)
            if resumed:
                await asyncio.to_thread(resume_walk, self.storage, state, walk)
        step_crawl: CollectionCrawl | None = None
        async with asyncio.TaskGroup() as group:
            for type_name in self.roots:
                params, chosen = root_window(
                    type_name,
                    state,
                    index,
                    root_type=self.root_type,
                    default_selection=self.default_selection,
                )
                is_step = walk is not None and type_name == self.root_type
                # Read whole (no window): the default root, or a root the backup holds many
                # records of, probes its largest id beside its first page.
                holds = len(index.ids.get(type_name, IdSet())) if index is not None else 0
                crawl = self._crawl_for(
                    flow,
                    type_name,
                    chosen,
                    walk if is_step else None,
                    params=params,
                    first_page=not self.default_selection,
                    expect_large=not params
                    and (self.default_selection or cut_when_read_whole(holds, s.page_size)),
                )
                if type_name == self.root_type:
                    step_crawl = crawl
                group.create_task(
                    self._crawl_root(
                        crawl,
                        walk if is_step else None,
                        state.resources[type_name],
                        refusable=not self.default_selection,
                    )
                )
            if walk is not None:
                group.create_task(walk.run())
        if walk is not None:
            for type_name, missing in walk.missing().items():
                state.resources[type_name].detail.missing = missing
            for type_name, dropped in walk.unrequested().items():
                state.resources[type_name].detail.unrequested = dropped
        if incremental and index is not None and step_crawl is not None:
            return walk, step_crawl.emitted_ids()
        return walk, []

    async def _deltas_phase(
        self,
        state: RunState,
        index: BackupIndex,
        flow: PageFlow,
        walk: RelationshipWalk | None,
        emitted_steps: list[int],
    ) -> None:
        """Phase 2 (incremental): what changed in each related type that belongs to the
        backup. A record belongs when the backup holds its id (kept current even once no step
        names it: its step deleted, or it moved away) or when a step of the backup reaches it
        now."""
        self._phase(state, "deltas")
        since = self._since(state)
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
                    crawl = self._crawl_for(flow, target, select, params=since)
                    group.create_task(crawl.run(resource.partitions if resource.planned else None))
                else:
                    # No updatedAt filter on this type: ask again for every id the backup
                    # holds or its steps name, then (when the type points back at its step)
                    # for every record of the backup's steps, which finds new and moved
                    # ones; keep only versions not written yet.
                    remembered = SkipKnownVersions(versions, remember=True)
                    refreshes = [
                        self._walk_for(
                            flow,
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
                        by_step = self._walk_for(
                            flow, [back], {target: remembered}, unsure_filter=True
                        )
                        by_step.request_steps(target, members_steps)
                        refreshes.append(by_step)
                    group.create_task(self._finish_refresh(refreshes, resource, refreshed))
        if self._stop_requested:
            return
        await flush(flow.inbox)
        for resource in refreshed:
            resource.planned = True  # recorded only once its pages are committed
        await flush(flow.inbox)

    async def _deletes_phase(self, state: RunState, flow: PageFlow) -> None:
        """Phase 3 (`--detect-deletes`): tombstones for ids the API no longer has."""
        self._phase(state, "deletes")
        fresh = await asyncio.to_thread(self._load_index, state)
        scan = DeleteScan(flow, run_id=state.run_id)
        self._started(scan)
        for type_name in self.type_names:
            if type_name in self.refused or not integer_ids(type_name):
                continue  # not read this run; string ids (auditLog): a log, never deleted
            await scan.scan(type_name, fresh.live_ids(type_name))
        self.stats["deletes"] = {
            t: {"checked": d.checked, "tombstones": d.tombstones, "requests": d.requests}
            for t, d in scan.stats.items()
        }
        if self._stop_requested:
            return
        await flush(flow.inbox)

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

    async def _crawl_root(
        self,
        crawl: CollectionCrawl,
        walk: RelationshipWalk | None,
        root: ResourceState,
        *,
        refusable: bool,
    ) -> None:
        """Crawl one root; then close the walk (no more steps: flush its partial batches).
        With `refusable`, a 403 `unauthorizedOauthScope` records the type as refused and
        costs no other root."""
        try:
            await crawl.run(root.partitions if root.planned else None)
        except ApiError as exc:
            if not (refusable and exc.status == 403 and exc.error_id == SCOPE_REFUSED):
                raise
            scope = resource_type(crawl.type_name).read_scope
            self.refused[crawl.type_name] = scope
            event(
                "scope.refused",
                f"{crawl.type_name}: the token lacks the scope {scope}; its collection is "
                "skipped, the others go on",
                logging.WARNING,
                type_name=crawl.type_name,
                scope=scope,
            )
        if walk is not None:
            walk.close()


SCOPE_REFUSED = "unauthorizedOauthScope"  # the API's error id for a scope the token lacks


def _unwrap(exc: BaseException) -> BaseException:
    """The first real error inside TaskGroup's ExceptionGroup."""
    while isinstance(exc, BaseExceptionGroup):
        exc = exc.exceptions[0]
    return exc


__all__ = ["Export", "ExportResult", "OutputError"]
