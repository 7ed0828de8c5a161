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
watermark has all its relationships on disk (read on resume, see `resume_walk`).
Memory stays bounded: pending ids are packed arrays, and the crawl waits (`backpressure`) while
more than a few batches' worth wait to be fetched.
"""

from __future__ import annotations

import asyncio
import bisect
import logging
import math
from array import array
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

import pyarrow as pa
import pyarrow.compute as pc

from exporter.api.pagination import collection_url, ids_that_fit, paginate
from exporter.backup.checkpoint import ResourceState, RunState
from exporter.backup.damage import read_failure
from exporter.backup.detail import BatchWatermark, IdSample, NotAsked
from exporter.backup.reader import part_reader
from exporter.backup.storage import Storage
from exporter.core.config import DEFAULT_ROOT_TYPE
from exporter.core.errors import ApiError, UsageError, shown_url
from exporter.core.events import event
from exporter.export.crawl import PageBatch, PageFlow, RowSelector
from exporter.model.fastpage import PageReader
from exporter.model.normalize import Normalizer, table_layout
from exporter.model.schema import Shape, resource_type

GROUP_COLUMN = "stepType"  # what link-only records per step are learnt by (a step's column)
DEFAULT_MAX_URL_LENGTH = 8000  # bytes; what common proxies and servers accept in a request line
SPILL_SIGMAS = 2.0  # a batch's expected records plus this many standard deviations fit its pages
PENDING_BATCHES = 8  # the crawl waits while more than this many batches' worth are queued


@dataclass(frozen=True)
class Link:
    """One relationship of the root type (the step) that the walk follows."""

    name: str  # relationship name on the root type
    target: str  # JSON:API type of the related records
    column: str | None  # step column holding the ids (None for link-only)
    many: bool  # the column is a list of ids

    @property
    def link_only(self) -> bool:
        return self.column is None


def step_links(root: str = DEFAULT_ROOT_TYPE) -> list[Link]:
    """Every relationship of the root type, from the schema, with its column in the root's table."""
    layout = table_layout(root)
    columns = {c.relationship.name: c.column for c in (*layout.to_one, *layout.to_many)}
    links = []
    for rel in resource_type(root).relationships:
        if rel.shape is Shape.LINKS:
            links.append(Link(rel.name, rel.target, None, True))
        else:
            links.append(Link(rel.name, rel.target, columns[rel.name], rel.shape is Shape.TO_MANY))
    return links


def parse_selection(text: str, root: str = DEFAULT_ROOT_TYPE) -> list[Link]:
    """`all`, `none`, or a comma list of relationship names (or target types, e.g. `users`) of
    the root type."""
    links = step_links(root)
    value = text.strip()
    if value in ("", "all"):
        return links
    if value == "none":
        return []
    chosen: list[Link] = []
    for name in (part.strip() for part in value.split(",")):
        if not name:
            continue
        matches = [
            link
            for link in links
            if name in (link.name, link.target, resource_type(link.target).collection)
        ]
        if not matches:
            known = ", ".join(sorted(link.name for link in links))
            raise UsageError(
                f"--relationships: unknown relationship {name!r}; known: all, none, {known}"
            )
        chosen.extend(m for m in matches if m not in chosen)
    return chosen


class IdSet:
    """A set of int64 ids at about 8 bytes each: a sorted array plus a small set merged into it."""

    def __init__(self, values: Iterable[int] = ()) -> None:
        self._sorted = array("q", sorted(set(values)))
        self._recent: set[int] = set()

    def __contains__(self, value: int) -> bool:
        if value in self._recent:
            return True
        index = bisect.bisect_left(self._sorted, value)
        return index < len(self._sorted) and self._sorted[index] == value

    def add(self, value: int) -> bool:
        """Add `value`; False when it was already there."""
        if value in self:
            return False
        self._recent.add(value)
        if len(self._recent) >= max(4096, len(self._sorted) // 8):
            self._sorted = array("q", sorted([*self._sorted, *self._recent]))
            self._recent.clear()
        return True

    def __len__(self) -> int:
        return len(self._sorted) + len(self._recent)

    def __iter__(self) -> Iterator[int]:
        """Every id, ascending."""
        return iter(sorted([*self._sorted, *self._recent]))


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
    """Records per step of one group, learnt from answers (Welford's running mean/variance)."""

    steps: int = 0
    mean: float = 0.0
    m2: float = 0.0

    def add(self, records: int) -> None:
        self.steps += 1
        delta = records - self.mean
        self.mean += delta / self.steps
        self.m2 += delta * (records - self.mean)

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

    def push(self, value: int, group: int = 0) -> None:
        self.ids.append(value)
        if self.link_only:
            self.groups.append(group)
        self.next_position += 1

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
        written = self.written[target]
        for value in committed_ids:
            written.add(value)
            if not state.link_only:
                state.requested.add(value)
        state.next_position = max(state.next_position, next_position)

    # -- fed by the crawl ---------------------------------------------------------------

    def announce(self, table: pa.Table, only: set[str] | None = None) -> dict[str, int]:
        """Queue the references of a page of step rows. Returns the page's `needs`: per target
        type, the position up to which batches must be committed to cover its references.
        `only` limits it to some types (a resumed run announcing a committed file again)."""
        needs: dict[str, int] = {}
        if table.num_rows == 0:
            return needs
        step_ids: list[int] | None = None
        groups: list[int] | None = None
        for link in self.links:
            if only is not None and link.target not in only:
                continue
            state = self.targets[link.target]
            if link.link_only:
                if step_ids is None:
                    step_ids = table.column("id").to_pylist()
                    groups = self._groups(table)
                assert groups is not None
                for value, group in zip(step_ids, groups, strict=True):
                    state.push(value, group)
            else:
                assert link.column is not None
                values = table.column(link.column)
                if link.many:
                    values = pc.list_flatten(values)
                for value in values.drop_null().to_pylist():
                    if state.requested.add(value):
                        state.push(value)
            needs[link.target] = state.next_position
        self._wakeup.set()
        if self._crowded() and not self._stopping:
            self._room.clear()
        return needs

    def request(self, target: str, ids: Iterable[int]) -> None:
        """Queue ids of a data-link type directly (an incremental run refreshing a type the API
        cannot filter by `updatedAt`)."""
        state = self.targets[target]
        for value in ids:
            if state.requested.add(value):
                state.push(value)
        self._wakeup.set()

    def request_steps(self, target: str, step_ids: Iterable[int]) -> None:
        """Queue step ids for a link-only target (fetched by `filter[sequenceStep][id]`)."""
        state = self.targets[target]
        assert state.link_only
        for value in step_ids:
            state.push(value)
        self._wakeup.set()

    def _groups(self, table: pa.Table) -> list[int]:
        if GROUP_COLUMN not in table.column_names:
            return [0] * table.num_rows
        codes = self._group_codes
        return [codes.setdefault(v, len(codes)) for v in table.column(GROUP_COLUMN).to_pylist()]

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
        return self.max_url_length - len(self._url(target, link_only, ""))

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
        ids, head = state.ids, state.head
        stop = head
        used = 0
        if state.link_only:
            groups = state.groups
            estimates = {code: s.estimate() for code, s in state.learnt.items()}
            default = GroupStats().estimate()
            mean = variance = 0.0
            pages = 1
            url_full = False
            while stop < len(ids):
                cost = len(str(ids[stop])) + 1
                if used + cost > room:
                    url_full = True
                    break
                m, v = estimates.get(groups[stop], default)
                if mean + m + SPILL_SIGMAS * math.sqrt(variance + v) > pages * self.page_size:
                    # Would spill onto one more page. Worth it only if the URL can carry enough
                    # steps to fill that page too; otherwise cut here.
                    if not self._can_fill(state, stop, used, room, estimates, default):
                        break
                    pages += 1
                mean += m
                variance += v
                used += cost
                stop += 1
            complete = url_full or stop < len(ids)
        else:
            stop = head + ids_that_fit(ids, head, room=room, most=self.page_size)
            complete = stop < len(ids) or stop - head == self.page_size
        if not complete and not final:
            return None  # a partial batch: wait for the crawl to bring more ids
        return state.take(max(1, stop - head))

    def _can_fill(
        self,
        state: TargetState,
        start: int,
        used: int,
        room: int,
        estimates: dict[int, tuple[float, float]],
        default: tuple[float, float],
    ) -> bool:
        """Whether the URL can still carry enough queued steps to fill one more page."""
        wanted = 0.9 * self.page_size
        mean = 0.0
        for index in range(start, len(state.ids)):
            used += len(str(state.ids[index])) + 1
            if used > room:
                return False
            mean += estimates.get(state.groups[index], default)[0]
            if mean >= wanted:
                return True
        return False

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
        stats = self.stats[batch.target]
        state = self.targets[batch.target]
        normalizer = self._normalizers[batch.target]
        written = self.written[batch.target]
        link_only = state.link_only
        stats.batches += 1
        first = self._url(batch.target, link_only, ",".join(map(str, batch.ids)))
        found: set[int] = set()
        per_step: dict[int, int] = {}
        asked = set(batch.ids)  # ids, or step ids for a link-only type
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
            owners: list[int | None] | None = None
            if link_only:
                owners = (
                    normalized.table.column(self.owner_column).to_pylist()
                    if self.owner_column in normalized.table.column_names
                    else [None] * len(normalized.ids)
                )
            selector = self.select.get(batch.target)
            wanted = selector(normalized.table) if selector is not None else None
            keep = []
            known = len(found)
            strangers: list[int] = []
            for index, value in enumerate(normalized.ids):
                owner = owners[index] if owners is not None else value
                if owner is None or owner not in asked:
                    strangers.append(value)  # not what the batch asked for: never written
                    continue
                if link_only:
                    per_step[owner] = per_step.get(owner, 0) + 1
                found.add(value)
                if wanted is not None and not wanted[index]:
                    continue  # this very version is already in the backup
                if written.add(value):
                    keep.append(index)
                else:
                    stats.duplicates += 1
            table = normalized.table
            if len(keep) != len(normalized.ids):
                table = table.take(pa.array(keep, pa.int64()))
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
            stats.records += len(keep)
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
            for step_id, group in zip(batch.ids, batch.groups, strict=True):
                state.learnt.setdefault(group, GroupStats()).add(per_step.get(step_id, 0))
        else:
            for value in batch.ids:
                if value not in found and value not in written:
                    state.missing_count += 1
                    if len(state.missing) < 1000:
                        state.missing.append(value)

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


def step_back_link(target: str, root: str = DEFAULT_ROOT_TYPE) -> Link | None:
    """For a type whose records name their step (a to-one relationship named after the root
    type, with `data`), a link-only style `Link` that fetches them by `filter[<root>][id]`; None
    for other types."""
    for column in table_layout(target).to_one:
        if column.relationship.name == root and column.relationship.target == root:
            return Link(root, target, None, True)
    return None


def owner_column(root: str) -> str:
    """The column of a link-only type's table naming the root record it belongs to
    (`sequenceStepId`: the to-one relationship named after the root, as `normalize` names it)."""
    return f"{root}Id"


def mark_batches_committed(resource: ResourceState, ranges: list[tuple[int, int]]) -> None:
    """Advance the related type's watermark (`advance`) past the batches just committed."""
    resource.detail.watermark = advance(resource.detail.watermark or BatchWatermark(), ranges)


def advance(watermark: BatchWatermark, ranges: list[tuple[int, int]]) -> BatchWatermark:
    """The watermark once `ranges` [start, end) are committed too: every position below
    `through` is committed. Batches finish out of order; ranges above the watermark wait in
    `waiting` until the gap below them closes."""
    through = watermark.through
    waiting: list[tuple[int, int]] = []
    for start, end in sorted([*watermark.waiting, *ranges]):
        if start <= through:
            through = max(through, end)
        else:
            waiting.append((start, end))
    return BatchWatermark(through, tuple(waiting))


def resume_walk(storage: Storage, state: RunState, walk: RelationshipWalk) -> None:
    """Resume the relationship walk from what the checkpoint proves.

    1. Related records already committed are neither fetched nor written again (their ids are
       read from the committed files).
    2. A committed step file whose references end above a type's committed watermark
       (`file_needs` > `watermark.through`) is announced again for that type, and its needs
       rewritten to the new positions, so a second kill loses nothing either.
    """
    root = state.resources[walk.root]
    needs_by_file = root.detail.file_needs()
    watermark: dict[str, int] = {}
    for target in walk.targets:
        resource = state.resources[target]
        ids: list[int] = []
        for data_file in resource.files:
            ids.extend(read_column(storage, data_file.path, "id"))
        committed = resource.detail.watermark or BatchWatermark()
        watermark[target] = committed.through
        highest = max(
            [
                watermark[target],
                *(end for _start, end in committed.waiting),
                *(needs.get(target, 0) for needs in needs_by_file.values()),
            ]
        )
        walk.seed(target, ids, highest)
        # Every earlier position is now either committed or announced again below.
        resource.detail.watermark = BatchWatermark(highest)
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
    try:
        table = part_reader(storage).table(relative, [column])
    except (OSError, ValueError, pa.ArrowException) as exc:
        raise read_failure(storage, relative, exc, None) from None
    values: list[int] = table.column(column).to_pylist()
    return values


def read_batches(storage: Storage, relative: str) -> Iterator[pa.Table]:
    try:
        yield from part_reader(storage).batches(relative)
    except (OSError, ValueError, pa.ArrowException) as exc:
        raise read_failure(storage, relative, exc, None) from None
