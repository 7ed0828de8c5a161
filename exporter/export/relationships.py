"""The relationship walk: fetch every record the exported steps point at, in batches, never one request per step.

Two kinds of link, both batched by URL length and page size:
- data links (`sequence`, `creator`, `updater`, `callPurpose`, `taskPriority`, `sequenceTemplates`):
  the ids are in the step rows; they are deduplicated across all steps (a sequence shared by a
  thousand steps is asked for once) and fetched with `filter[id]=a,b,c`, a page's worth at a time;
- link-only relationships (`calls`, `mailings`, `tasks`): the step ids themselves are batched and
  the related records fetched with `filter[sequenceStep][id]=a,b,c` at the maximum page size.
  A batch is cut when a worker is ready to send it, from what has been learnt so far: records per
  step, by the step's `stepType` (mailings come from email steps, calls from call steps), mean
  and variance. So the answer fills its pages without spilling a few records onto one more.
The walk runs beside the step crawl on the same client (one rate limiter, one in-flight bound).
Every queued id gets a position (0, 1, 2, ... per target type); a batch covers a contiguous
range of positions, and a step page records, per type, the position its references end at
(`needs`). The writer commits ranges; a step file whose `needs` lie below the committed
watermark has all its relationships on disk (read on resume: `walk_resume`).
Memory stays bounded: pending ids are packed arrays, and the crawl waits (`backpressure`) while
more than a few batches' worth wait to be fetched.
"""

from __future__ import annotations

import asyncio
import logging
from array import array
from collections.abc import Iterable
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt
import pyarrow as pa
import pyarrow.compute as pc

from exporter.api.pagination import collection_url, ids_that_fit, paginate, wire_length
from exporter.backup.detail import IdSample, NotAsked
from exporter.core.config import DEFAULT_ROOT_TYPE
from exporter.core.errors import ApiError, shown_url
from exporter.core.events import event
from exporter.export.crawl import PageBatch, PageFlow, RowSelector
from exporter.export.idset import NO_IDS, Ids, IdSet, members
from exporter.export.links import Link, owner_column
from exporter.model.fastpage import PageReader
from exporter.model.normalize import Normalizer
from exporter.model.schema import resource_type

GROUP_COLUMN = "stepType"  # what link-only records per step are learnt by (a step's column)
DEFAULT_MAX_URL_LENGTH = 8000  # bytes; what common proxies and servers accept in a request line
SPILL_SIGMAS = 2.0  # a batch's expected records plus this many standard deviations fit its pages
PENDING_BATCHES = 8  # the crawl waits while more than this many batches' worth are queued

_POWERS_OF_TEN = np.array([10**k for k in range(1, 19)], np.int64)


def _list_bytes(ids: Ids) -> npt.NDArray[np.int64]:
    """What each id costs in a comma-separated list: its decimal digits (and sign), one comma."""
    digits = np.searchsorted(_POWERS_OF_TEN, np.abs(ids), side="right") + 1
    return digits + (ids < 0) + 1


@dataclass
class Batch:
    target: str
    start: int  # first position covered
    ids: array[int]  # ids to fetch (data), or step ids (link-only)
    groups: array[int]  # link-only: each step's group code

    @property
    def end(self) -> int:
        return self.start + len(self.ids)


@dataclass
class GroupStats:
    """Records per step of one group, learnt from answers (a running mean and variance, merged a
    batch at a time as Chan, Golub and LeVeque combine two samples' moments)."""

    steps: int = 0
    mean: float = 0.0
    m2: float = 0.0  # the sum of squared differences from the mean

    def add_all(self, records: npt.NDArray[np.int64]) -> None:
        """Learn the record counts of more steps."""
        if not len(records):
            return
        count = len(records)
        mean = float(records.mean())
        m2 = float(np.square(records - mean).sum())
        total = self.steps + count
        delta = mean - self.mean
        self.mean += delta * count / total
        self.m2 += m2 + delta * delta * self.steps * count / total
        self.steps = total

    def estimate(self) -> tuple[float, float]:
        """(mean, variance); before enough answers, a cautious one record per step."""
        if self.steps < 20:
            return max(1.0, self.mean), max(1.0, self.m2 / max(1, self.steps - 1))
        return self.mean, self.m2 / (self.steps - 1)


@dataclass
class TargetState:
    """Queue and learning state for one target type (e.g. `user`, fed by `creator` and `updater`)."""

    target: str
    link_only: bool
    requested: IdSet = field(default_factory=IdSet)  # data ids already queued
    ids: array[int] = field(default_factory=lambda: array("q"))
    groups: array[int] = field(default_factory=lambda: array("b"))
    head: int = 0  # index in `ids` of the first id not yet in a batch
    next_position: int = 0  # position the next queued id gets
    learnt: dict[int, GroupStats] = field(default_factory=dict)
    missing: list[int] = field(default_factory=list)
    missing_count: int = 0
    unrequested: list[int] = field(default_factory=list)  # answered but not asked for
    unrequested_count: int = 0

    @property
    def pending(self) -> int:
        return len(self.ids) - self.head

    def push(self, values: Ids, groups: npt.NDArray[np.int8] | None = None) -> None:
        """Queue `values` (and, link-only, each one's group code), in order."""
        self.ids.frombytes(values.astype(np.int64, copy=False).tobytes())
        if self.link_only:
            codes = groups if groups is not None else np.zeros(len(values), np.int8)
            self.groups.frombytes(codes.astype(np.int8, copy=False).tobytes())
        self.next_position += len(values)

    def request(self, values: Ids) -> None:
        """Queue those of data ids `values` not queued before (each once, in order)."""
        self.push(values[self.requested.add_new(values)])

    def take(self, count: int) -> Batch:
        start = self.next_position - self.pending
        ids = self.ids[self.head : self.head + count]
        groups = self.groups[self.head : self.head + count] if self.link_only else array("b")
        self.head += count
        if self.head > 65_536 and self.head * 2 > len(self.ids):
            del self.ids[: self.head]  # compact the consumed prefix
            if self.link_only:
                del self.groups[: self.head]
            self.head = 0
        return Batch(self.target, start, ids, groups)


@dataclass
class WalkStats:
    requests: int = 0
    batches: int = 0
    records: int = 0
    duplicates: int = 0
    unrequested: int = 0  # records an answer held that its request did not ask for (dropped)


class RelationshipWalk:
    """Fetches the related records of announced step rows, concurrently with the step crawl."""

    def __init__(
        self,
        flow: PageFlow,
        *,
        links: list[Link],
        select: dict[str, RowSelector] | None = None,
        unsure_filter: bool = False,
        root: str = DEFAULT_ROOT_TYPE,
    ) -> None:
        self.client = flow.client
        self.root = root  # the type whose records name the related ones (`links` are its)
        self.owner_column = owner_column(root)
        # The API may refuse or ignore `filter[sequenceStep][id]` on the link-only targets of
        # this walk (API-FACTS states it only for calls, mailings and tasks): then stop asking by
        # step and say so in `not_asked` instead of failing, or of paging through every record.
        self.unsure_filter = unsure_filter
        self.not_asked: dict[str, NotAsked] = {}
        self.select = select or {}
        self.base_url = flow.base_url
        self.links = links
        self.inbox = flow.inbox
        self.credits = flow.credits
        self.page_paths = flow.page_paths
        self.page_size = flow.page_size
        self.workers = flow.workers
        self.max_url_length = flow.max_url_length
        self.stats: dict[str, WalkStats] = {}
        self.targets: dict[str, TargetState] = {}
        for link in links:
            if link.target not in self.targets:
                self.targets[link.target] = TargetState(link.target, link.link_only)
                self.stats[link.target] = WalkStats()
        self.written: dict[str, IdSet] = {t: IdSet() for t in self.targets}
        # Data-link types: the version (`updatedAt`, microseconds) of each record written, so a
        # later fetch of the same type in the run does not write that version again.
        self.versions: dict[str, dict[int, int]] = {
            t: {} for t, s in self.targets.items() if not s.link_only
        }
        self._normalizers = {t: Normalizer(t) for t in self.targets}
        self._group_codes: dict[str | None, int] = {None: 0}
        self._wakeup = asyncio.Event()
        self._room = asyncio.Event()
        self._room.set()
        self._in_flight: dict[str, int] = {t: 0 for t in self.targets}
        self._closed = False
        self._stopping = False

    def seed(self, target: str, committed_ids: Iterable[int], next_position: int) -> None:
        """Ids already in the backup are neither fetched nor written again (resume, and
        incremental runs); adds to what earlier calls seeded."""
        state = self.targets[target]
        values = _id_array(committed_ids)
        self.written[target].add_new(values)
        if not state.link_only:
            state.requested.add_new(values)
        state.next_position = max(state.next_position, next_position)

    # -- fed by the crawl ---------------------------------------------------------------

    def announce(self, table: pa.Table, only: set[str] | None = None) -> dict[str, int]:
        """Queue the references of a page of step rows. Returns the page's `needs`: per target
        type, the position up to which batches must be committed to cover its references.
        `only` limits it to some types (a resumed run announcing a committed file again)."""
        needs: dict[str, int] = {}
        if table.num_rows == 0:
            return needs
        step_ids: Ids | None = None
        groups: npt.NDArray[np.int8] | None = None
        for link in self.links:
            if only is not None and link.target not in only:
                continue
            state = self.targets[link.target]
            if link.link_only:
                if step_ids is None:
                    step_ids = _id_array(table.column("id"))
                    groups = self._groups(table)
                state.push(step_ids, groups)
            else:
                assert link.column is not None
                values = table.column(link.column)
                if link.many:
                    values = pc.list_flatten(values)
                state.request(_id_array(values.drop_null()))
            needs[link.target] = state.next_position
        self._wakeup.set()
        if self._crowded() and not self._stopping:
            self._room.clear()
        return needs

    def request(self, target: str, ids: Iterable[int]) -> None:
        """Queue ids of a data-link type directly (an incremental run refreshing a type the API
        cannot filter by `updatedAt`)."""
        self.targets[target].request(_id_array(ids))
        self._wakeup.set()

    def request_steps(self, target: str, step_ids: Iterable[int]) -> None:
        """Queue step ids for a link-only target (fetched by `filter[sequenceStep][id]`)."""
        state = self.targets[target]
        assert state.link_only
        state.push(_id_array(step_ids))
        self._wakeup.set()

    def _groups(self, table: pa.Table) -> npt.NDArray[np.int8]:
        """Each row's group code (by its `stepType`; codes are given in order of first sight)."""
        if GROUP_COLUMN not in table.column_names:
            return np.zeros(table.num_rows, np.int8)
        column = table.column(GROUP_COLUMN)
        distinct = pc.unique(column)
        codes = self._group_codes
        known = [codes.setdefault(v, len(codes)) for v in distinct.to_pylist()]
        where = pc.index_in(column, value_set=distinct)  # a null row finds the null value
        return np.array(known, np.int8)[_id_array(where)]

    async def backpressure(self) -> None:
        """Wait while too many ids wait to be fetched (the crawl calls this after announcing).
        Never once the walk is stopping: no worker would make room."""
        if not self._stopping:
            await self._room.wait()

    def close(self) -> None:
        """No more announcements; workers finish once every queued id is fetched."""
        self._closed = True
        self._wakeup.set()

    def stop(self) -> None:
        self._stopping = True
        self._closed = True
        self._wakeup.set()
        self._room.set()

    # -- cutting batches ----------------------------------------------------------------

    def _url_room(self, target: str, link_only: bool) -> int:
        """Bytes left for ids in a request URL once the rest of it is written."""
        return self.max_url_length - wire_length(self._url(target, link_only, ""))

    def _url(self, target: str, link_only: bool, ids: str) -> str:
        key = f"filter[{self.root}][id]" if link_only else "filter[id]"
        return collection_url(
            self.base_url,
            resource_type(target).collection,
            [(key, ids), ("sort", "id"), ("page[size]", str(self.page_size))],
        )

    def _cut(self, state: TargetState, final: bool) -> Batch | None:
        """The next batch of `state`, or None when it should wait for more ids."""
        if state.pending == 0:
            return None
        room = self._url_room(state.target, state.link_only)
        head = state.head
        if state.link_only:
            stop = head + steps_that_fill(state, room, self.page_size)
            complete = stop < len(state.ids)  # the URL is full, or the pages are
        else:
            stop = head + ids_that_fit(state.ids, head, room=room, most=self.page_size)
            complete = stop < len(state.ids) or stop - head == self.page_size
        if not complete and not final:
            return None  # a partial batch: wait for the crawl to bring more ids
        return state.take(max(1, stop - head))

    def _crowded(self) -> bool:
        """More than a few batches' worth wait in one type: the crawl should wait."""
        return any(s.pending > PENDING_BATCHES * self.page_size for s in self.targets.values())

    def _next_batch(self) -> Batch | None:
        best: Batch | None = None
        for state in sorted(self.targets.values(), key=lambda s: -s.pending):
            if state.link_only and not state.learnt and self._in_flight[state.target]:
                continue  # nothing learnt yet: let the first answer size the next batches
            # Cut partial batches too once the crawl is done, or while it waits for room:
            # it cannot bring the ids a partial batch would wait for.
            final = self._closed or state.pending > PENDING_BATCHES * self.page_size
            best = self._cut(state, final)
            if best is not None:
                break
        if not self._crowded():
            self._room.set()
        return best

    # -- fetch workers ------------------------------------------------------------------

    async def run(self) -> None:
        async with asyncio.TaskGroup() as group:
            for _ in range(self.workers):
                group.create_task(self._worker())

    async def _worker(self) -> None:
        while not self._stopping:
            batch = self._next_batch()
            if batch is None:
                if self._closed and all(s.pending == 0 for s in self.targets.values()):
                    self._room.set()
                    return
                self._wakeup.clear()
                await self._wakeup.wait()
                continue
            self._in_flight[batch.target] += 1
            try:
                await self._fetch(batch)
            except ApiError as exc:
                if not self._refused(batch, exc):
                    raise
            finally:
                self._in_flight[batch.target] -= 1
            self._wakeup.set()  # learnt something: another worker may cut a batch now

    async def _fetch(self, batch: Batch) -> None:
        """Fetch one batch, all its pages, and send what it asked for to the writer, each record
        once in the run. Per page, the work is done on whole columns, not record by record."""
        stats = self.stats[batch.target]
        state = self.targets[batch.target]
        normalizer = self._normalizers[batch.target]
        written = self.written[batch.target]
        link_only = state.link_only
        stats.batches += 1
        first = self._url(batch.target, link_only, ",".join(map(str, batch.ids)))
        found: set[int] = set()
        owners_found: list[Ids] = []  # link-only: the step of each record found, page by page
        asked = np.unique(np.frombuffer(batch.ids, np.int64))  # ids, or step ids (link-only)
        pages = paginate(
            self.client,
            first,
            base_url=self.base_url,
            reader=lambda url: PageReader(normalizer, url, self.page_paths),
            credits=self.credits,
        )
        async for page in pages:
            url = page.url
            normalized = page.content.batch
            following = page.next_url
            stats.requests += 1
            if link_only and self.unsure_filter and batch.target in self.not_asked:
                following = None  # given up while this page was on its way: write what was asked
            table = normalized.table
            ids = np.array(normalized.ids, np.int64)
            if not link_only:
                mine = members(asked, ids)
            elif self.owner_column in table.column_names:
                owners = table.column(self.owner_column)
                mine = np.asarray(pc.is_in(owners, value_set=pa.array(asked)), np.bool_)
                owners_found.append(_id_array(owners.filter(pa.array(mine))))
            else:
                mine = np.zeros(len(ids), np.bool_)
            strangers = ids[~mine].tolist()  # not what the batch asked for: never written
            known = len(found)
            found.update(ids[mine].tolist())
            selector = self.select.get(batch.target)
            candidates = mine
            if selector is not None:  # False: this very version is already in the backup
                candidates = mine & np.array(selector(table), np.bool_)
            new = np.zeros(len(ids), np.bool_)
            new[candidates] = written.add_new(ids[candidates])
            stats.duplicates += int(candidates.sum() - new.sum())
            kept = int(new.sum())
            if kept != len(ids):
                table = table.filter(pa.array(new))
            if strangers and link_only and self.unsure_filter:
                # Records of steps not asked for: the API ignored the filter and would page
                # through every record of the type, once per batch. Keep what was asked for in
                # this page (the data links' refresh asks for every record the backup holds).
                self._give_up(
                    batch.target,
                    "ignored",
                    f"an answer to {shown_url(url)} held "
                    f"{len(strangers)} record(s) of steps it did not ask for",
                )
                following = None
            elif strangers:
                self._unrequested(batch.target, strangers, link_only, url)
            versions = self.versions.get(batch.target)
            if versions is not None and "updatedAt" in table.column_names:
                stamps = table.column("updatedAt").cast(pa.int64()).to_pylist()
                for value, stamp in zip(table.column("id").to_pylist(), stamps, strict=True):
                    if stamp is not None:
                        versions[value] = stamp
            stats.records += kept
            self.inbox.put_nowait(
                PageBatch(
                    type_name=batch.target,
                    table=table,
                    partition_key=None,
                    through=0,
                    final=following is None,
                    extra_values=normalized.extra_values,
                    link_range=(batch.start, batch.end) if following is None else None,
                )
            )
            if following is None:
                break
            page.new_records = len(found) - known
        if link_only:
            self._learn(state, batch, owners_found)
        else:
            asked_ids = np.frombuffer(batch.ids, np.int64)
            found_ids = np.unique(np.fromiter(found, np.int64, len(found)))
            absent = asked_ids[~members(found_ids, asked_ids)]
            absent = absent[~written.holds(absent)]
            state.missing_count += len(absent)
            state.missing.extend(absent[: max(0, 1000 - len(state.missing))].tolist())

    @staticmethod
    def _learn(state: TargetState, batch: Batch, owners_found: list[Ids]) -> None:
        """Learn records per step, by group, from a link-only batch's answers (a step no record
        named counts as none)."""
        owners = np.concatenate(owners_found) if owners_found else NO_IDS
        steps, counts = np.unique(owners, return_counts=True)
        asked = np.frombuffer(batch.ids, np.int64)
        per_step = np.zeros(len(asked), np.int64)
        if len(steps):
            where = np.searchsorted(steps, asked)
            where[where == len(steps)] = 0
            hit = steps[where] == asked
            per_step[hit] = counts[where[hit]]
        groups = np.frombuffer(batch.groups, np.int8)
        for code in np.unique(groups).tolist():
            state.learnt.setdefault(code, GroupStats()).add_all(per_step[groups == code])

    def _refused(self, batch: Batch, exc: ApiError) -> bool:
        """Whether `exc` is the API refusing this walk's unsure by-step filter (400 or 422
        naming it): then asking by step is given up and the batch counts as done."""
        if not (self.unsure_filter and self.targets[batch.target].link_only):
            return False
        if exc.status not in (400, 422) or self.root not in f"{exc.message} {exc.error_id or ''}":
            return False
        self._give_up(batch.target, "refused", f"status {exc.status}: {exc.message}")
        return True

    def _give_up(self, target: str, how: str, why: str) -> None:
        """Stop asking for `target` by step (the rest of its queue is dropped), warn once."""
        state = self.targets[target]
        state.take(state.pending)
        if target in self.not_asked:
            return
        self.not_asked[target] = {"filter": f"filter[{self.root}][id]", "how": how, "why": why}
        event(
            "walk.not_asked",
            f"the API {how} filter[{self.root}][id] on {resource_type(target).collection} ({why}); "
            f"{target} records are refreshed by the ids the backup holds and its steps name, "
            "not asked for by step: one a step gained without changing may be missed. "
            "Recorded in the manifest; compaction keeps the steps' own lists for them",
            logging.WARNING,
            type=target,
            how=how,
        )

    def _unrequested(self, target: str, ids: list[int], link_only: bool, url: str) -> None:
        """Records an answer held that its request did not ask for (another id; for a link-only
        type, a record of another step or of none): dropped, counted, logged. What was asked
        for is judged on its own: a record that did not come is `missing`."""
        state = self.targets[target]
        self.stats[target].unrequested += len(ids)
        state.unrequested_count += len(ids)
        state.unrequested.extend(ids[: max(0, 1000 - len(state.unrequested))])
        asked = "of steps it did not ask for" if link_only else "it did not ask for"
        event(
            "walk.unrequested",
            f"an answer to {shown_url(url)} held {len(ids)} {target} record(s) {asked} "
            f"(ids {', '.join(map(str, ids[:5]))}{', ...' if len(ids) > 5 else ''}); "
            "they were not written",
            logging.WARNING,
            type=target,
            count=len(ids),
            ids=ids[:20],
        )

    def unrequested(self) -> dict[str, IdSample]:
        """Records answers held that their requests did not ask for (dropped)."""
        return {
            t: {"count": s.unrequested_count, "ids": sorted(s.unrequested)}
            for t, s in self.targets.items()
            if s.unrequested_count
        }

    def missing(self) -> dict[str, IdSample]:
        """Referenced records the API did not return (deleted since, or not visible to the user)."""
        return {
            t: {"count": s.missing_count, "ids": sorted(s.missing)}
            for t, s in self.targets.items()
            if s.missing_count
        }


def steps_that_fill(state: TargetState, room: int, page_size: int) -> int:
    """How many of `state`'s queued steps its next link-only batch takes: as many as the URL
    carries (`room` bytes), cut before a step whose records would be expected to spill onto one
    more page (mean plus `SPILL_SIGMAS` standard deviations of what is learnt) unless the URL
    can carry enough steps to fill that page too."""
    window = min(state.pending, room // 2 + 1)  # every id costs two bytes or more
    ids = np.frombuffer(state.ids, np.int64, window, state.head * 8).copy()
    groups = np.frombuffer(state.groups, np.int8, window, state.head).copy()
    fitting = int(np.searchsorted(np.cumsum(_list_bytes(ids)), room, side="right"))
    means = np.full(128, GroupStats().estimate()[0])
    variances = np.full(128, GroupStats().estimate()[1])
    for code, stats in state.learnt.items():
        means[code], variances[code] = stats.estimate()
    mean = means[groups[:fitting]]
    # Running sums, added in order: the same floats as adding step by step.
    expected = np.cumsum(mean) + SPILL_SIGMAS * np.sqrt(np.cumsum(variances[groups[:fitting]]))
    wanted = 0.9 * page_size  # a page worth opening
    index, pages = 0, 1
    while True:
        spills = np.flatnonzero(expected[index:] > pages * page_size)
        if not len(spills):
            return fitting
        index += int(spills[0])
        if np.cumsum(mean[index:])[-1] < wanted:
            return index  # the next page would stay mostly empty: cut here
        pages += 1
        index += 1


def _id_array(values: Iterable[int] | pa.Array | pa.ChunkedArray) -> Ids:
    """Integers (a column without nulls, an `IdSet`, any iterable) as an int64 array."""
    if isinstance(values, pa.ChunkedArray):
        values = values.combine_chunks()
    if isinstance(values, pa.Array):
        return values.cast(pa.int64()).to_numpy(zero_copy_only=False)  # type: ignore[no-any-return]
    if isinstance(values, np.ndarray):
        return values.astype(np.int64, copy=False)
    return np.fromiter(values, np.int64)
