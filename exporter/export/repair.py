"""`export --repair`: set damaged committed files aside and fetch again exactly what they held; rebuild a lost checkpoint from the manifest.

What a damaged file held is known without reading it: its type, its id range (`min_id`..`max_id`)
and, for the run's own files, what the checkpoint proves was committed. So, per damaged file:
1. it is moved aside (`<path>.damaged-<run id>`, never deleted; a missing one has nothing to
   move), then dropped from the checkpoint, and a pending repair is recorded in its type's
   `detail["repair"]` (so a kill in between loses nothing: the next run resumes the repair);
2. its id range is walked again (`filter[id]=low..high&sort=id`), keeping only what belongs to
   the backup and is not already in it (`Keep`): for the steps of an unfinished full run, ids
   its partitions had committed; for related records, what the backup's steps reach; and only
   ids (a full run) or versions (a backup with incremental runs) no intact file holds;
3. once those rows are committed, the pending repair is cleared.
Tombstone files are not fetched: the run's `--detect-deletes` phase checks their ids again.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, cast

import pyarrow as pa
import pyarrow.fs as pafs

from exporter.backup.checkpoint import HistoryEntry, PartitionState, ResourceState, RunState
from exporter.backup.manifest import canonical_digest
from exporter.backup.sink import DataFile
from exporter.backup.storage import Storage, storage_error
from exporter.core.errors import UsageError
from exporter.model.schema import resource_type

if TYPE_CHECKING:  # the refetch's transport; `plan` (and so `status`) reads a manifest without it
    from exporter.api.client import ApiClient
    from exporter.export.crawl import Message
    from exporter.model.fastpage import PagePaths

REPAIR_KEY = "repair"  # ResourceState.detail: the pending repairs of the type

Keep = Callable[[pa.Table], list[bool]]


def quarantine_name(relative: str, run_id: str) -> str:
    return f"{relative}.damaged-{run_id}"


def set_aside(storage: Storage, relative: str, run_id: str) -> str | None:
    """Move a damaged file to its quarantine name; None when there was nothing to move."""
    source = storage.path(relative)
    try:
        if storage.fs.get_file_info(source).type == pafs.FileType.NotFound:
            return None
        target = quarantine_name(relative, run_id)
        storage.fs.move(source, storage.path(target))
    except OSError as exc:
        raise storage_error("move aside", source, exc) from None
    return target


def covered(partitions: list[PartitionState]) -> Callable[[int], bool]:
    """Whether an id lies in what the partitions had committed."""
    spans = sorted(
        (p.low, p.high if p.finished else p.done_through)
        for p in partitions
        if p.finished or p.done_through >= p.low
    )

    def test(value: int) -> bool:
        return any(low <= value <= high for low, high in spans)

    return test


async def refetch_range(
    client: ApiClient,
    *,
    base_url: str,
    type_name: str,
    low: int,
    high: int,
    page_size: int,
    keep: Keep,
    inbox: asyncio.Queue[Message | None],
    credits: asyncio.Semaphore,
    needs: dict[str, int] | None,
    page_paths: PagePaths | None = None,
) -> int:
    """Walk `low..high` of a collection and send the kept rows to the writer; returns their count."""
    from exporter.api.pagination import collection_url, paginate
    from exporter.export.crawl import PageBatch
    from exporter.model.fastpage import PageReader
    from exporter.model.normalize import Normalizer

    normalizer = Normalizer(type_name)
    first = collection_url(
        base_url,
        resource_type(type_name).collection,
        [("filter[id]", f"{low}..{high}"), ("sort", "id"), ("page[size]", str(page_size))],
    )
    kept = 0
    seen: set[int] = set()
    pages = paginate(
        client,
        first,
        base_url=base_url,
        reader=lambda url: PageReader(normalizer, url, page_paths),
        credits=credits,
    )
    async for page in pages:
        following = page.next_url
        table = page.content.batch.table
        wanted = keep(table)
        rows = []
        fresh = 0
        for index, value in enumerate(page.content.batch.ids):
            if low <= value <= high and value not in seen:
                seen.add(value)
                fresh += 1
                if wanted[index]:
                    rows.append(index)
        if len(rows) != table.num_rows:
            table = table.take(pa.array(rows, pa.int64()))
        kept += len(rows)
        message: Message = PageBatch(
            type_name=type_name,
            table=table,
            partition_key=None,
            through=0,
            final=following is None,
            extra_values=0,
            needs=needs if rows else None,
        )
        inbox.put_nowait(message)
        page.new_records = fresh
    return kept


def from_manifest(document: dict[str, Any], where: str) -> RunState:
    """The checkpoint of a finished backup, rebuilt from its manifest (which names every run and
    file with its size and sha256): what an incremental run needs to extend it."""
    if document.get("manifest_sha256") != canonical_digest(document):
        raise UsageError(
            f"{where}: the manifest was altered (its manifest_sha256 does not match), so the "
            "checkpoint cannot be rebuilt from it; put the backup's _checkpoint.json back"
        )
    try:
        runs = list(document["runs"])
        last = runs[-1]
        by_run: dict[str, list[dict[str, Any]]] = {}
        for entry in document["files"]:
            kept = {k: v for k, v in entry.items() if k not in ("run_id", "schema")}
            DataFile.from_json(kept)  # every entry must be a file record
            by_run.setdefault(str(entry["run_id"]), []).append(kept)
        state = RunState(
            run_id=str(last["run_id"]),
            started_at=str(last["started_at"]),
            source=str(document["source"]),
            parameters=dict(last["parameters"]),
            status="complete",
            finished_at=last.get("finished_at"),
            kind=str(last.get("kind", "full")),
            window_start=last.get("window_start"),
            window_end=last.get("window_end"),
            phase="done",
            history=[
                cast(HistoryEntry, {**run, "files": by_run.get(str(run["run_id"]), [])})
                for run in runs[:-1]
            ],
            tool_version=last.get("tool_version"),
            account=document.get("account") if isinstance(document.get("account"), dict) else None,
        )
        for type_name, summary in document["resources"].items():
            if "directory" not in summary:
                continue  # a type only earlier runs exported
            files = [
                DataFile.from_json(f)
                for f in by_run.get(state.run_id, [])
                if f["type"] == type_name
            ]
            state.resources[type_name] = ResourceState(
                type_name=type_name,
                directory=str(summary["directory"]),
                planned=True,
                finished=True,
                files=files,
                next_sequence=len(files) + 1,
            )
    except (KeyError, TypeError, ValueError, IndexError) as exc:
        raise UsageError(
            f"{where}: the manifest does not describe a finished run ({type(exc).__name__}), so "
            "the checkpoint cannot be rebuilt from it; put the backup's _checkpoint.json back"
        ) from None
    if state.window_end is None:
        raise UsageError(f"{where}: the manifest's last run has no window_end; cannot rebuild")
    return state


def drop_file(state: RunState, relative: str) -> DataFile | None:
    """Remove `relative` from the checkpoint (this run's files or an earlier run's)."""
    for resource in state.resources.values():
        for data_file in resource.files:
            if data_file.path == relative:
                resource.files.remove(data_file)
                return data_file
    for run in state.history:
        for entry in run["files"]:
            if entry["path"] == relative:
                run["files"].remove(entry)
                return DataFile.from_json(entry)
    return None
