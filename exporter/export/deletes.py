"""Deletion detection: which ids of the backup the API no longer has, written as tombstones.

There is no webhook and no DELETE for sequence steps; the only way to see a removal is to ask
for the ids. The scan asks for the backup's live ids in batches (`filter[id]=a,b,c`, an empty
sparse fieldset so each record is a type and an id, the maximum page size), and every asked id
that does not come back becomes a tombstone row: (type, id, detected_at, run_id).
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

import pyarrow as pa

from exporter.api.documents import page_records
from exporter.api.pagination import collection_url, id_batches, paginate, wire_length
from exporter.export.crawl import PageBatch, PageFlow
from exporter.model.normalize import TOMBSTONE_SCHEMA, TOMBSTONE_TYPE, check_type, record_id
from exporter.model.schema import resource_type


@dataclass
class DeleteStats:
    requests: int = 0
    checked: int = 0
    tombstones: int = 0


class DeleteScan:
    """Checks the backup's ids against the API and sends tombstones to the writer."""

    def __init__(
        self,
        flow: PageFlow,
        *,
        run_id: str,
    ) -> None:
        self.client = flow.client
        self.base_url = flow.base_url
        self.inbox = flow.inbox
        self.credits = flow.credits
        self.run_id = run_id
        self.page_size = flow.page_size
        self.workers = flow.workers
        self.max_url_length = flow.max_url_length
        self.stats: dict[str, DeleteStats] = {}
        self._stopping = False

    def stop(self) -> None:
        self._stopping = True

    def _url(self, type_name: str, ids: str) -> str:
        return collection_url(
            self.base_url,
            resource_type(type_name).collection,
            [
                ("filter[id]", ids),
                (f"fields[{type_name}]", ""),
                ("page[size]", str(self.page_size)),
            ],
        )

    def batches(self, type_name: str, ids: Sequence[int]) -> list[list[int]]:
        """Ids cut to the page size and the URL length."""
        room = self.max_url_length - wire_length(self._url(type_name, ""))
        return list(id_batches(ids, room=room, most=self.page_size))

    async def scan(self, type_name: str, ids: Sequence[int]) -> None:
        stats = self.stats.setdefault(type_name, DeleteStats())
        queue = list(reversed(self.batches(type_name, ids)))

        async def worker() -> None:
            while queue and not self._stopping:
                await self._check(type_name, queue.pop(), stats)

        async with asyncio.TaskGroup() as group:
            for _ in range(self.workers):
                group.create_task(worker())

    async def _check(self, type_name: str, batch: list[int], stats: DeleteStats) -> None:
        first = self._url(type_name, ",".join(map(str, batch)))
        present: set[int] = set()
        asked = set(batch)
        async for page in paginate(self.client, first, base_url=self.base_url):
            stats.requests += 1
            known = len(present)
            for record in page_records(page.content, page.url):
                value = record_id(check_type(record, type_name), type_name)
                if value in asked:  # an id not asked for proves nothing (nor is progress)
                    present.add(value)
            page.new_records = len(present) - known
        stats.checked += len(batch)
        gone = [value for value in batch if value not in present]
        if not gone:
            return
        stats.tombstones += len(gone)
        now = datetime.now(UTC)
        table = pa.table(
            {
                "type": pa.array([type_name] * len(gone), pa.string()),
                "id": pa.array(gone, pa.int64()),
                "detected_at": pa.array([now] * len(gone), pa.timestamp("us", tz="UTC")),
                "run_id": pa.array([self.run_id] * len(gone), pa.string()),
            },
            schema=TOMBSTONE_SCHEMA,
        )
        await self.credits.acquire()  # released by the writer once the rows are written
        self.inbox.put_nowait(
            PageBatch(
                type_name=TOMBSTONE_TYPE,
                table=table,
                partition_key=None,
                through=0,
                final=True,
                extra_values=0,
            )
        )
