"""Walking a collection concurrently: id-range partitions, one `links.next` chain each, split when the tail would run alone.

A single `links.next` chain is sequential by nature. So the key space is cut instead:
1. Probe the collection's smallest and largest id (two one-record pages sorted by id).
2. Cut [min, max] into id ranges (`Partition`s). Each is walked as its own chain,
   `filter[id]=low..high&sort=id`, by one of `workers` tasks.
3. A worker that runs out of partitions takes half of the remaining range of the busiest one:
   that partition's `high` is lowered to the midpoint of what it has not yet emitted, and the
   upper half becomes a new partition. Its running chain still carries the old bound in its
   URL, so it stops by itself at the first record past the new `high` and drops such records.
4. Each page's records are kept only inside [low, high] (the API has been seen ignoring an upper
   bound) and only once (ids already emitted by the partition are dropped: dedupe by id).
Everything a crawl learns goes to the single writer as messages on one unbounded inbox, in program
order: `Plan`, `Split`, `PageBatch`. Backpressure is separate: a page credit is taken before a
request and given back by the writer after the page is written, so at most `credits` pages are
fetched but not yet written, whatever the size of the export.
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
from exporter.api.pagination import collection_url, paginate
from exporter.backup.checkpoint import PartitionState
from exporter.model.fastpage import PageReader
from exporter.model.normalize import Normalizer, record_id
from exporter.model.schema import resource_type


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
        client: ApiClient,
        *,
        base_url: str,
        type_name: str,
        page_size: int,
        workers: int,
        inbox: asyncio.Queue[Message | None],
        credits: asyncio.Semaphore,
        extra_params: Iterable[tuple[str, str]] = (),
        partitions_per_worker: int = 2,
        initial_partitions: int | None = None,
        announcer: Announcer | None = None,
        select: RowSelector | None = None,
    ) -> None:
        self.client = client
        self.base_url = base_url
        self.type_name = type_name
        self.collection = resource_type(type_name).collection
        self.page_size = page_size
        self.workers = max(1, workers)
        self.inbox = inbox
        self.credits = credits
        self.extra_params = list(extra_params)
        self.initial_partitions = initial_partitions or self.workers * partitions_per_worker
        self.stats = CrawlStats()
        self.announcer = announcer
        self.select = select
        self.normalizer = Normalizer(type_name)
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
        if committed is None:
            committed = await self._plan()
            self.inbox.put_nowait(Plan(self.type_name, [_copy(p) for p in committed]))
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

    async def _plan(self) -> list[PartitionState]:
        first = await self._edge_id("id", count=True)
        if first is None:
            return []
        last = await self._edge_id("-id")
        assert last is not None
        return plan_partitions(first, last, self.initial_partitions)

    async def _edge_id(self, sort: str, *, count: bool = False) -> int | None:
        """The smallest (`id`) or largest (`-id`) id; with `count`, also ask for the total
        (for the progress estimate: the API only counts when asked, `count=true`)."""
        url = collection_url(
            self.base_url,
            self.collection,
            [
                ("sort", sort),
                ("page[size]", "1"),
                (f"fields[{self.type_name}]", ""),
                *self.extra_params,
                *([("count", "true")] if count else []),
            ],
        )
        document = await self.client.get_document(url)
        meta = document.get("meta")
        total = meta.get("count") if isinstance(meta, dict) else None
        if count and type(total) is int and total >= 0:
            self.stats.total = total
        records = page_records(document, url)
        if not records:
            return None
        return record_id(records[0], self.type_name)

    def emitted_ids(self) -> list[int]:
        """Every id this crawl has seen inside its partitions (kept or not)."""
        return [value for walk in self._walks for value in walk.seen.values()]

    def _take(self) -> PartitionWalk | None:
        if self._stopping:
            return None
        if self._pending:
            walk = self._pending.popleft()
            walk.active = True
            return walk
        return self._split_busiest()

    def _split_busiest(self) -> PartitionWalk | None:
        minimum = 2 * self.page_size
        covered = sum(w.covered for w in self._walks)
        # Records per id seen so far (ids are sparse); before any page, assume dense.
        density = sum(w.emitted for w in self._walks) / covered if covered else 1.0
        best: PartitionWalk | None = None
        best_remaining = float(minimum)
        for walk in self._walks:
            if not walk.active or walk.high - walk.emitted_through < 2:
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
            reader=lambda url: PageReader(self.normalizer, url),
            credits=self.credits,
            stopped=lambda: self._stopping,
        )
        async for page in pages:
            batch = page.content.batch
            following = page.next_url
            self.stats.pages += 1
            past_end = any(i > walk.high for i in batch.ids)
            wanted = self.select(batch.table) if self.select is not None else None
            keep = []
            seen_ids = []
            repeated = 0
            for index, value in enumerate(batch.ids):
                if value < walk.start or value > walk.high:
                    self.stats.out_of_range += 1
                elif not walk.seen.add(value):
                    self.stats.duplicates += 1
                    repeated += 1
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
            if self.announcer is not None:
                await self.announcer.backpressure()
            if final:
                break
            page.new_records = len(batch.ids) - repeated


def _copy(state: PartitionState) -> PartitionState:
    return PartitionState(state.key, state.low, state.high, state.done_through, state.finished)
