"""Walking a collection concurrently: id-range partitions, one `links.next` chain each, split when the tail would run alone.

A single `links.next` chain is sequential by nature. So the key space is cut instead:
1. Start: the first page of the id-sorted walk, at the page size asked for, with `count=true`.
   It gives the smallest id, the total and the first records, which are written as partition
   0's first page. When a collection is expected to be large (`expect_large`: the default
   root of a full run, or a collection read whole again that the backup holds many records
   of), its largest id is probed (a one-record page sorted by `-id`) at the same time, so the
   first data request goes out with the probe; otherwise it is probed only once the first
   page has a next link and the count says the rest will be cut.
2. Once the first page and the largest id are both known, partition 0 ends at the first
   page's last id and the rest, (last id of page 1, largest id], is cut into id ranges
   (`Partition`s). Each is walked as its own chain, `filter[id]=low..high&sort=id`, by one of
   `workers` tasks.
3. A worker that runs out of partitions takes half of the remaining range of the busiest one:
   that partition's `high` is lowered to the midpoint of what it has not yet emitted, and the
   upper half becomes a new partition. Its running chain still carries the old bound in its
   URL, so it stops by itself at the first record past the new `high` and drops such records.
4. Each page's records are kept only inside [low, high] (the API has been seen ignoring an upper
   bound) and only once (ids already emitted by the partition are dropped: dedupe by id).
A collection that fits one page costs that page, and the probe when it was expected large.
How many partitions the rest is cut into: the default crawl (the steps, and the changes of
related types in an incremental run) cuts it into `initial_partitions` and splits while two
pages are left. A `first_page` crawl (every root of a `--resources` selection other than the
default) keeps the request bound of issue 14: the rest is walked as one open-ended chain past
the first page's last id unless the count says it is large (`PAGES_PER_PARTITION` pages a
partition at least, so a partition's last short page costs under 5 % more), and splits need as
many pages left. A type whose ids are strings (auditLog's UUIDs) cannot be cut into id ranges:
it is one chain, followed by its `links.next`, deduped by id.

Everything a crawl learns goes to the single writer as messages on one unbounded inbox, in program
order: `Plan` (before the first page's batch: a kill after its commit resumes partition 0 from
its low end, exactly), `Split`, `PageBatch`. Backpressure is separate: a page credit is taken
before a request and given back by the writer after the page is written, so at most `credits`
pages are fetched but not yet written, whatever the size of the export.
"""

from __future__ import annotations

import asyncio
import bisect
from array import array
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Protocol

import pyarrow as pa

from exporter.api.client import ApiClient
from exporter.api.documents import page_records
from exporter.api.pagination import collection_url, next_link, paginate
from exporter.backup.checkpoint import PartitionState
from exporter.model.fastpage import PagePaths, PageReader
from exporter.model.normalize import NormalizedBatch, Normalizer, record_id
from exporter.model.schema import Kind, resource_type

HIGHEST_ID = 2**63 - 1  # the upper bound of an open-ended partition (never split)
# `first_page` crawls: a partition (and what a split leaves each half) holds at least this many
# pages, so the partitions' short last pages cost at most 1/PAGES_PER_PARTITION more requests.
PAGES_PER_PARTITION = 40


@dataclass
class Plan:
    type_name: str
    partitions: list[PartitionState]


@dataclass
class Split:
    type_name: str
    key: int
    new_high: int
    created: PartitionState


@dataclass
class PageBatch:
    """Normalized records on their way to the writer, and what committing them proves."""

    type_name: str
    table: pa.Table
    partition_key: int | None
    through: int  # once committed, the partition's done_through may advance to this
    final: bool  # the partition is complete once this batch is committed
    extra_values: int
    credit: bool = True  # the batch holds a page credit the writer must give back
    # Relationship bookkeeping (see `relationships`): on the last page of a related batch, the
    # positions [start, end) the batch covered; on a step page, per related type, the position
    # its references end at.
    link_range: tuple[int, int] | None = None
    needs: dict[str, int] | None = None


@dataclass
class Flush:
    """Commit everything written so far, then set `done` (between the phases of a run)."""

    done: asyncio.Event = field(default_factory=asyncio.Event)


Message = Plan | Split | PageBatch | Flush


async def flush(inbox: asyncio.Queue[Message | None]) -> None:
    """Have the writer commit everything sent so far, and wait until it has."""
    message = Flush()
    inbox.put_nowait(message)
    await message.done.wait()


class RowSelector(Protocol):
    """Which rows of a page to keep (an incremental run drops what the backup already has)."""

    def __call__(self, table: pa.Table) -> list[bool]: ...


class Announcer(Protocol):
    """Told about every page of rows a crawl emits (the relationship walk)."""

    def announce(self, table: pa.Table) -> dict[str, int]: ...

    async def backpressure(self) -> None: ...


@dataclass
class CrawlStats:
    pages: int = 0
    records: int = 0
    duplicates: int = 0  # dropped: already emitted by the partition
    out_of_range: int = 0  # dropped: outside the partition (filter ignored, or split)
    not_selected: int = 0  # dropped by the run's selector (already in the backup, not ours)
    splits: int = 0
    total: int | None = None  # records in the collection, when the API counted them


class EmittedIds:
    """The ids a partition has emitted, 8 bytes each, for the dedupe safety net."""

    def __init__(self) -> None:
        self._ids = array("q")

    def values(self) -> array[int]:
        return self._ids

    def add(self, value: int) -> bool:
        """Record `value`; False when it was already there."""
        ids = self._ids
        if not ids or value > ids[-1]:
            ids.append(value)  # the common case: keyset pages come in id order
            return True
        index = bisect.bisect_left(ids, value)
        if index < len(ids) and ids[index] == value:
            return False
        ids.insert(index, value)
        return True


@dataclass(frozen=True)
class PageFlow:
    """Where a run's pages come from and go, shared by every fetcher of the run (crawls, the
    relationship walk, the delete scan): the one client (its request budget and in-flight
    bound), the API's base URL, the single writer's inbox and the page credits that bound the
    pages between them, and the sizes every fetcher keeps to."""

    client: ApiClient
    base_url: str
    inbox: asyncio.Queue[Message | None]
    credits: asyncio.Semaphore
    page_size: int
    workers: int  # requests one fetcher keeps going at once (at least 1)
    max_url_length: int
    # Pages read into records, per path (fast or slow): the manifest's `stats.page_paths`.
    page_paths: PagePaths = field(default_factory=PagePaths)

    def __post_init__(self) -> None:
        object.__setattr__(self, "workers", max(1, self.workers))


@dataclass
class PartitionWalk:
    """The live state of one partition while it is walked (owned by the crawl, not the writer)."""

    key: int
    low: int
    high: int
    start: int  # first id this run asks for (low, or past what a previous run committed)
    emitted_through: int
    active: bool = False
    emitted: int = 0
    seen: EmittedIds = field(default_factory=EmittedIds)

    @property
    def covered(self) -> int:
        """Ids walked so far."""
        return max(0, self.emitted_through - self.start + 1)

    def remaining_estimate(self, density: float) -> float:
        """Records not yet emitted, estimated from the partition's own density when it has one."""
        if self.emitted > 0:
            density = self.emitted / self.covered
        return (self.high - self.emitted_through) * density


def cut_when_read_whole(records: int, page_size: int) -> bool:
    """Whether a `first_page` crawl of a collection of `records` (read whole, no window) cuts
    what lies past its first page into partitions: a crawl expected that large probes its
    largest id beside its first page (`expect_large`)."""
    return records - page_size >= 2 * PAGES_PER_PARTITION * page_size


def plan_partitions(low: int, high: int, count: int, first_key: int = 0) -> list[PartitionState]:
    """Cut [low, high] into at most `count` contiguous ranges of equal id span."""
    span = high - low + 1
    count = max(1, min(count, span))
    edges = [low + (span * i) // count for i in range(count + 1)]
    return [
        PartitionState(
            key=first_key + i, low=edges[i], high=edges[i + 1] - 1, done_through=edges[i] - 1
        )
        for i in range(count)
        if edges[i + 1] > edges[i]
    ]


class CollectionCrawl:
    """Exports one collection (e.g. sequenceSteps) through id-range partitions walked in parallel."""

    def __init__(
        self,
        flow: PageFlow,
        *,
        type_name: str,
        extra_params: Iterable[tuple[str, str]] = (),
        partitions_per_worker: int = 2,
        initial_partitions: int | None = None,
        announcer: Announcer | None = None,
        select: RowSelector | None = None,
        first_page: bool = False,
        expect_large: bool = False,
    ) -> None:
        self.client = flow.client
        self.base_url = flow.base_url
        self.type_name = type_name
        self.collection = resource_type(type_name).collection
        self.page_size = flow.page_size
        self.workers = flow.workers
        self.inbox = flow.inbox
        self.credits = flow.credits
        self.page_paths = flow.page_paths
        self.extra_params = list(extra_params)
        self.initial_partitions = initial_partitions or self.workers * partitions_per_worker
        self.stats = CrawlStats()
        self.announcer = announcer
        self.select = select
        self.normalizer = Normalizer(type_name)
        self.first_page = first_page
        self.expect_large = expect_large
        self.string_ids = resource_type(type_name).id_kind is Kind.STRING
        self._first_ids: list[int] = []
        self._pending: deque[PartitionWalk] = deque()
        self._walks: list[PartitionWalk] = []
        self._next_key = 0
        self._stopping = False

    def stop(self) -> None:
        """Start no new request; chains end after the page they are fetching."""
        self._stopping = True

    @property
    def stopped(self) -> bool:
        return self._stopping

    async def run(self, committed: list[PartitionState] | None) -> None:
        """Walk every partition not yet finished; plan them first when `committed` is None."""
        if self.string_ids:
            await self._string_chain(committed)
            return
        if committed is None:
            committed = await self._start()
        self._next_key = max((p.key for p in committed), default=-1) + 1
        for state in committed:
            if state.finished:
                continue
            walk = PartitionWalk(
                key=state.key,
                low=state.low,
                high=state.high,
                start=state.resume_from,
                emitted_through=state.resume_from - 1,
            )
            self._walks.append(walk)
            self._pending.append(walk)
        async with asyncio.TaskGroup() as group:
            for _ in range(self.workers):
                group.create_task(self._worker())

    def _first_url(self) -> str:
        return collection_url(
            self.base_url,
            self.collection,
            [
                ("sort", "id"),
                ("page[size]", str(self.page_size)),
                *self.extra_params,
                ("count", "true"),
            ],
        )

    async def _first_document(self, url: str) -> tuple[NormalizedBatch, str | None]:
        """The first page (holding a page credit the writer gives back) and its checked next link."""
        await self.credits.acquire()
        try:
            page = await self.client.get_parsed(
                url, PageReader(self.normalizer, url, self.page_paths)
            )
            total = page.meta.get("count") if page.meta is not None else None
            if type(total) is int and total >= 0:
                self.stats.total = total
            batch = page.batch
            following = next_link({"links": page.links}, url, self.base_url)
        except BaseException:
            self.credits.release()
            raise
        return batch, following

    def _partitions_past(self, records: int) -> int:
        """Into how many partitions the `records` past the first page are cut (fewer than
        `_fewest_partitions`: none, the rest is one chain)."""
        if not self.first_page:
            return self.initial_partitions
        return min(self.initial_partitions, records // (PAGES_PER_PARTITION * self.page_size))

    @property
    def _fewest_partitions(self) -> int:
        return 2 if self.first_page else 1

    async def _opening(self) -> tuple[NormalizedBatch, str | None, int | None]:
        """The first page (holding a page credit), its next link, and the largest id when the
        rest will be cut: probed beside the first page when the collection is expected large,
        else after it, only when the first page has a next link and the count says so."""
        beside = asyncio.create_task(self._largest_id()) if self.expect_large else None
        try:
            batch, following = await self._first_document(self._first_url())
        except BaseException:
            if beside is not None:
                beside.cancel()
                # Its outcome is moot: the first page's error is the crawl's.
                await asyncio.gather(beside, return_exceptions=True)
            raise
        try:
            if beside is not None:
                return batch, following, await beside
            past = (self.stats.total or 0) - len(batch.ids)
            if following is not None and self._partitions_past(past) >= self._fewest_partitions:
                return batch, following, await self._largest_id()
        except BaseException:
            self.credits.release()
            raise
        return batch, following, None

    async def _start(self) -> list[PartitionState]:
        """Plan from the first page of the id-sorted walk (see the module's docstring): send
        the plan, then the first page's records as partition 0's first page."""
        batch, following, top = await self._opening()
        if not batch.ids:
            self.credits.release()
            self.stats.pages += 1
            self.inbox.put_nowait(Plan(self.type_name, []))
            return []
        first, last = batch.ids[0], max(batch.ids)
        if top is not None and top <= last:
            following = None  # nothing lies past the first page
        count = self._partitions_past((self.stats.total or 0) - len(batch.ids))
        cut = following is not None and top is not None and count >= self._fewest_partitions
        head = PartitionState(key=0, low=first, high=HIGHEST_ID, done_through=first - 1)
        rest: list[PartitionState] = []
        if cut:
            assert top is not None
            head.high = last
            rest = plan_partitions(last + 1, top, count, first_key=1)
        # Program order: the plan reaches the writer before partition 0's first page.
        self.inbox.put_nowait(Plan(self.type_name, [_copy(p) for p in [head, *rest]]))
        walk = PartitionWalk(
            key=0, low=first, high=head.high, start=first, emitted_through=first - 1
        )
        final, _ = self._page(walk, batch, None if cut else following)
        self._first_ids = list(walk.seen.values())
        if self.announcer is not None:
            await self.announcer.backpressure()
        head.done_through = walk.emitted_through
        head.finished = final
        return [head, *rest]

    async def _string_chain(self, committed: list[PartitionState] | None) -> None:
        """A type with string ids: one `links.next` chain sorted by id, deduped by id. Its one
        partition records no progress until the chain's end, so a resumed run walks it again
        from the start (its rows committed before a kill are then written again: dedupe by id
        when reading an unfinished run's files)."""
        if committed is not None and all(p.finished for p in committed):
            return
        head = PartitionState(key=0, low=0, high=HIGHEST_ID, done_through=-1)
        self.inbox.put_nowait(Plan(self.type_name, [_copy(head)]))
        seen: set[str] = set()
        url: str | None = self._first_url()
        while url is not None and not self._stopping:
            batch, following = await self._first_document(url)
            self.stats.pages += 1
            keep = []
            for index, value in enumerate(batch.uuids):
                if value in seen:
                    self.stats.duplicates += 1
                else:
                    seen.add(value)
                    keep.append(index)
            table = batch.table
            if len(keep) != len(batch.uuids):
                table = table.take(pa.array(keep, pa.int64()))
            if self.select is not None and table.num_rows:
                wanted = self.select(table)
                self.stats.not_selected += wanted.count(False)
                table = table.filter(pa.array(wanted, pa.bool_()))
            self.stats.records += table.num_rows
            final = following is None
            self.inbox.put_nowait(
                PageBatch(
                    type_name=self.type_name,
                    table=table,
                    partition_key=0,
                    through=HIGHEST_ID if final else -1,
                    final=final,
                    extra_values=batch.extra_values,
                )
            )
            url = following

    async def _largest_id(self) -> int | None:
        """The largest id (a one-record page sorted by `-id`, no attributes); None when the
        collection is empty."""
        url = collection_url(
            self.base_url,
            self.collection,
            [
                ("sort", "-id"),
                ("page[size]", "1"),
                (f"fields[{self.type_name}]", ""),
                *self.extra_params,
            ],
        )
        records = page_records(await self.client.get_document(url), url)
        if not records:
            return None
        return record_id(records[0], self.type_name)

    def emitted_ids(self) -> list[int]:
        """Every id this crawl has seen inside its partitions (kept or not)."""
        walked = [value for walk in self._walks for value in walk.seen.values()]
        return self._first_ids + walked

    def _take(self) -> PartitionWalk | None:
        if self._stopping:
            return None
        if self._pending:
            walk = self._pending.popleft()
            walk.active = True
            return walk
        return self._split_busiest()

    def _split_busiest(self) -> PartitionWalk | None:
        minimum = (PAGES_PER_PARTITION if self.first_page else 2) * self.page_size
        covered = sum(w.covered for w in self._walks)
        # Records per id seen so far (ids are sparse); before any page, assume dense.
        density = sum(w.emitted for w in self._walks) / covered if covered else 1.0
        best: PartitionWalk | None = None
        best_remaining = float(minimum)
        for walk in self._walks:
            if not walk.active or walk.high == HIGHEST_ID or walk.high - walk.emitted_through < 2:
                continue
            remaining = walk.remaining_estimate(density)
            if remaining >= best_remaining:
                best, best_remaining = walk, remaining
        if best is None:
            return None
        middle = best.emitted_through + (best.high - best.emitted_through) // 2
        created = PartitionState(
            key=self._next_key, low=middle + 1, high=best.high, done_through=middle
        )
        self._next_key += 1
        best.high = middle
        self.stats.splits += 1
        # Program order: the writer learns of the split before any later page of either half.
        self.inbox.put_nowait(Split(self.type_name, best.key, middle, _copy(created)))
        walk = PartitionWalk(
            key=created.key,
            low=created.low,
            high=created.high,
            start=created.low,
            emitted_through=middle,
            active=True,
        )
        self._walks.append(walk)
        return walk

    async def _worker(self) -> None:
        while (walk := self._take()) is not None:
            try:
                await self._walk(walk)
            finally:
                walk.active = False

    async def _walk(self, walk: PartitionWalk) -> None:
        if walk.start > walk.high:  # nothing left (a resumed partition that was complete)
            self.inbox.put_nowait(
                PageBatch(
                    type_name=self.type_name,
                    table=self.normalizer.schema.empty_table(),
                    partition_key=walk.key,
                    through=walk.high,
                    final=True,
                    extra_values=0,
                    credit=False,
                )
            )
            return
        first = collection_url(
            self.base_url,
            self.collection,
            [
                ("filter[id]", f"{walk.start}..{walk.high}"),
                ("sort", "id"),
                ("page[size]", str(self.page_size)),
                *self.extra_params,
            ],
        )
        pages = paginate(
            self.client,
            first,
            base_url=self.base_url,
            reader=lambda url: PageReader(self.normalizer, url, self.page_paths),
            credits=self.credits,
            stopped=lambda: self._stopping,
        )
        highest: int | None = None  # the highest id the chain has served
        async for page in pages:
            batch = page.content.batch
            final, fresh = self._page(walk, batch, page.next_url)
            if self.announcer is not None:
                await self.announcer.backpressure()
            if final:
                break
            # What the chain guard counts as progress: records new to the partition, or ids
            # past all the chain served before (records below the partition on the way to it).
            # Records below it served again and again (another partition's, such as the
            # opening page's) are a stall.
            top = max(batch.ids, default=None)
            advanced = top is not None and (highest is None or top > highest)
            highest = top if advanced else highest
            page.new_records = fresh or int(advanced)

    def _page(
        self, walk: PartitionWalk, batch: NormalizedBatch, following: str | None
    ) -> tuple[bool, int]:
        """Keep a page's records inside the partition, once each, as the selector says; send
        them to the writer. Whether the partition is done, and how many ids were new to it."""
        self.stats.pages += 1
        past_end = any(i > walk.high for i in batch.ids)
        wanted = self.select(batch.table) if self.select is not None else None
        keep = []
        seen_ids = []
        for index, value in enumerate(batch.ids):
            if value < walk.start or value > walk.high:
                self.stats.out_of_range += 1
            elif not walk.seen.add(value):
                self.stats.duplicates += 1
            else:
                seen_ids.append(value)
                if wanted is None or wanted[index]:
                    keep.append(index)
                else:
                    self.stats.not_selected += 1
        table = batch.table
        if len(keep) != len(batch.ids):
            table = table.take(pa.array(keep, pa.int64()))
        final = following is None or past_end
        if final:
            through = walk.high
        elif seen_ids:
            through = max(walk.emitted_through, max(seen_ids))
        else:
            through = walk.emitted_through
        walk.emitted_through = through
        walk.emitted += len(seen_ids)
        self.stats.records += len(keep)
        needs = self.announcer.announce(table) if self.announcer is not None else None
        self.inbox.put_nowait(
            PageBatch(
                type_name=self.type_name,
                table=table,
                partition_key=walk.key,
                through=through,
                final=final,
                extra_values=batch.extra_values,
                needs=needs,
            )
        )
        return final, len(seen_ids)


def _copy(state: PartitionState) -> PartitionState:
    return PartitionState(state.key, state.low, state.high, state.done_through, state.finished)
