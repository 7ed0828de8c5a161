"""The single writer: owns the part files and the run state, applies crawl messages in order, and commits.

Commit protocol, in this order, for one resource type:
1. complete its open part file (flush, close, fsync, rename into place: `sink.PartWriter.roll`);
2. record the file in the run state, and advance each of the type's partitions to what the
   batches now on disk prove (`through`, `final`);
3. write the checkpoint atomically.
A kill between 1 and 3 leaves a complete file that no checkpoint names: an orphan, removed when
the run resumes, whose rows are fetched again. A kill anywhere else loses only uncommitted pages.
Commits happen when a file reaches its size or row budget, every `commit_interval` seconds, and
at the end of the run.

Memory: each type's `PartWriter` holds its rows until they make a row group, so a run that
writes many types at once (`--resources all`: 47) could hold 47 row groups. `buffer_bytes`
bounds them together: past it, the largest buffer is written out as a (smaller) row group of
its open file. Nothing is committed by that; the file just grows.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

from exporter.backup import checkpoint
from exporter.backup.checkpoint import PartitionState, ResourceState, RunState
from exporter.backup.sink import PartSink, PartWriter
from exporter.backup.storage import Storage
from exporter.core.arrowpool import use_returning_memory_pool
from exporter.core.events import event
from exporter.export.crawl import Flush, Message, PageBatch, Plan, Split
from exporter.export.walk_resume import mark_batches_committed
from exporter.model.normalize import arrow_schema


@dataclass(frozen=True)
class CommitPolicy:
    file_rows: int = 1_000_000
    file_bytes: int = 256 << 20
    commit_interval: float = 30.0
    row_group_rows: int = 50_000
    buffer_bytes: int = 64 << 20  # rows held in memory across every type's part writer


@dataclass
class _Pending:
    through: int
    final: bool


class Writer:
    """Consumes the crawl's messages; the only task that touches part files and the checkpoint."""

    def __init__(
        self,
        storage: Storage,
        state: RunState,
        inbox: asyncio.Queue[Message | None],
        credits: asyncio.Semaphore,
        policy: CommitPolicy,
        *,
        clock: Callable[[], float] = time.monotonic,
        guard: Callable[[], None] | None = None,
    ) -> None:
        self.storage = storage
        self._guard = guard  # raises when the run may no longer commit (its lock was lost)
        self.state = state
        self.inbox = inbox
        self.credits = credits
        self.policy = policy
        self._clock = clock
        self._writers: dict[str, PartSink] = {}
        self._pending: dict[str, dict[int, _Pending]] = {}
        # Relationship batches whose last page is appended, per related type (not yet committed).
        self._done_batches: dict[str, list[tuple[int, int]]] = {}
        # Per root type: the highest batch number, per related type, the open file's pages need.
        self._file_needs: dict[str, dict[str, int]] = {}
        self._extra: dict[str, int] = {}
        self._last_commit = clock()
        self.commits = 0
        use_returning_memory_pool()

    @property
    def buffered_bytes(self) -> int:
        """Bytes of rows every type's part writer holds in memory (at most `buffer_bytes` once
        a batch is applied)."""
        return sum(writer.buffered_bytes for writer in self._writers.values())

    def resource(self, type_name: str) -> ResourceState:
        return self.state.resources[type_name]

    def _part_writer(self, type_name: str) -> PartSink:
        writer = self._writers.get(type_name)
        if writer is None:
            resource = self.resource(type_name)
            writer = PartWriter(
                self.storage,
                resource.directory,
                type_name,
                arrow_schema(type_name),
                self.state.run_id,
                row_group_rows=self.policy.row_group_rows,
                first_sequence=resource.next_sequence,
            )
            self._writers[type_name] = writer
        return writer

    async def run(self) -> None:
        """Apply messages until the `None` sentinel, then commit everything."""
        while True:
            try:
                message = await asyncio.wait_for(self.inbox.get(), timeout=self._until_due())
            except TimeoutError:
                await self.commit_all()
                continue
            if message is None:
                break
            await self.apply(message)
            if self._clock() - self._last_commit >= self.policy.commit_interval:
                await self.commit_all()
        await self.commit_all()

    def _until_due(self) -> float:
        return max(0.01, self.policy.commit_interval - (self._clock() - self._last_commit))

    async def apply(self, message: Message) -> None:
        if isinstance(message, Flush):
            await self.commit_all()
            await self._save()  # even with nothing to commit: the run's state has moved on
            message.done.set()
            return
        if isinstance(message, Plan):
            resource = self.resource(message.type_name)
            resource.partitions = message.partitions
            resource.planned = True
            return
        if isinstance(message, Split):
            resource = self.resource(message.type_name)
            partition = _find(resource.partitions, message.key)
            partition.high = message.new_high
            resource.partitions.append(message.created)
            return
        await self._append(message)

    async def _append(self, batch: PageBatch) -> None:
        try:
            writer = self._part_writer(batch.type_name)
            if batch.table.num_rows:
                await asyncio.to_thread(writer.append, batch.table)
                await self._keep_buffers_bounded()
        finally:
            if batch.credit:
                self.credits.release()
        if batch.partition_key is not None:
            pending = self._pending.setdefault(batch.type_name, {})
            pending[batch.partition_key] = _Pending(batch.through, batch.final)
        if batch.link_range is not None:
            self._done_batches.setdefault(batch.type_name, []).append(batch.link_range)
        if batch.needs:
            needs = self._file_needs.setdefault(batch.type_name, {})
            for target, seq in batch.needs.items():
                needs[target] = max(needs.get(target, 0), seq)
        self._extra[batch.type_name] = self._extra.get(batch.type_name, 0) + batch.extra_values
        if writer.file_rows >= self.policy.file_rows or writer.file_bytes >= self.policy.file_bytes:
            await self.commit(batch.type_name)

    async def _keep_buffers_bounded(self) -> None:
        """Write out the largest buffers until all writers together hold `buffer_bytes` or less."""
        while self.buffered_bytes > self.policy.buffer_bytes:
            largest = max(self._writers.values(), key=lambda w: w.buffered_bytes)
            await asyncio.to_thread(largest.flush)

    async def commit(self, type_name: str) -> None:
        """Steps 1 to 3 of the commit protocol for one type."""
        resource = self.resource(type_name)
        writer = self._writers.get(type_name)
        if writer is not None:
            committed = await asyncio.to_thread(writer.roll)
            if committed is not None:
                event(
                    "commit",
                    f"committed {committed.path} ({committed.rows:,} rows)",
                    logging.DEBUG,
                    path=committed.path,
                    rows=committed.rows,
                    bytes=committed.bytes,
                )
                resource.files.append(committed)
                resource.next_sequence = writer.next_sequence
                needs = self._file_needs.pop(type_name, None)
                if needs:
                    # Up to which position each related type must be committed before this
                    # file's references are all exported (read on resume).
                    resource.detail.file_needs()[committed.path] = needs
        done = self._done_batches.pop(type_name, None)
        if done:
            mark_batches_committed(resource, done)
        for key, pending in self._pending.pop(type_name, {}).items():
            partition = _find(resource.partitions, key)
            partition.done_through = max(partition.done_through, pending.through)
            partition.finished = partition.finished or pending.final
        resource.extra_values += self._extra.pop(type_name, 0)
        await self._save()

    async def commit_all(self) -> None:
        for type_name in list(self.state.resources):
            writer = self._writers.get(type_name)
            if (
                (writer is not None and writer.file_rows)
                or self._pending.get(type_name)
                or self._done_batches.get(type_name)
            ):
                await self.commit(type_name)
        self._last_commit = self._clock()

    async def _save(self) -> None:
        payload = checkpoint.encode(self.state)
        await asyncio.to_thread(self._commit, payload)
        self.commits += 1

    def _commit(self, payload: bytes) -> None:
        """The commit point: the lock is checked at this very moment (on an object store the
        lease is read again), then the checkpoint written (conditionally where the store
        allows: a checkpoint another run wrote since is never overwritten)."""
        if self._guard is not None:
            self._guard()
        self.storage.write_atomically(checkpoint.CHECKPOINT_NAME, payload)

    def discard(self) -> None:
        """Drop uncommitted part files (after a failure the next run fetches their pages again)."""
        for writer in self._writers.values():
            writer.discard()


def _find(partitions: list[PartitionState], key: int) -> PartitionState:
    for partition in partitions:
        if partition.key == key:
            return partition
    raise KeyError(f"no partition {key}")
