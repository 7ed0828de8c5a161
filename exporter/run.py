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
import secrets
import shutil
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from exporter import checkpoint, manifest
from exporter.auth import TokenSource
from exporter.checkpoint import ResourceState, RunState
from exporter.client import ApiClient, ClientSettings
from exporter.config import ExportSettings
from exporter.crawl import CollectionCrawl, CrawlStats, Message
from exporter.errors import Interrupted, OutputError, UsageError, redact_url
from exporter.relationships import RelationshipWalk, WalkStats, parse_selection
from exporter.schema import RESOURCE_TYPES, resource_type
from exporter.sink import INPROGRESS_SUFFIX, output_error
from exporter.writer import CommitPolicy, Writer

ROOT_TYPE = "sequenceStep"


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


def check_writable(root: Path) -> None:
    try:
        root.mkdir(parents=True, exist_ok=True)
        probe = root / f".write-probe-{secrets.token_hex(4)}"
        probe.write_bytes(b"ok")
        probe.unlink()
    except OSError as exc:
        raise output_error("write to the output directory", root, exc) from None


def remove_uncommitted(root: Path, state: RunState | None, directories: list[str]) -> int:
    """Delete part files in our directories that the checkpoint does not name; returns the count."""
    named = {f.path for f in state.committed_files()} if state else set()
    removed = 0
    for directory in directories:
        folder = root / directory
        if not folder.is_dir():
            continue
        for path in folder.iterdir():
            relative = f"{directory}/{path.name}"
            is_part = path.name.startswith("part-") and path.name.endswith(".parquet")
            is_temp = path.name.startswith(".part-") and path.name.endswith(INPROGRESS_SUFFIX)
            if (is_part and relative not in named) or is_temp:
                try:
                    path.unlink()
                except OSError as exc:
                    raise output_error("remove the uncommitted file", path, exc) from None
                removed += 1
    return removed


def discard_run(root: Path, directories: list[str]) -> None:
    """`--restart`: remove the previous run's files, checkpoint and manifest."""
    for directory in directories:
        with contextlib.suppress(FileNotFoundError):
            shutil.rmtree(root / directory)
    for name in (checkpoint.CHECKPOINT_NAME, manifest.MANIFEST_NAME):
        with contextlib.suppress(FileNotFoundError):
            (root / name).unlink()


class Export:
    """A run of `exporter export`; `request_stop()` makes it stop cleanly (SIGINT/SIGTERM)."""

    def __init__(self, settings: ExportSettings, tokens: TokenSource) -> None:
        self.settings = settings
        self.tokens = tokens
        self.links = parse_selection(settings.relationships)
        targets = list(dict.fromkeys(link.target for link in self.links))
        self.type_names = [ROOT_TYPE, *targets]
        # Every type's directory, so files of an earlier selection are cleaned up too.
        self.directories = [resource_type(t).collection for t in RESOURCE_TYPES]
        self._crawl: CollectionCrawl | None = None
        self._walk: RelationshipWalk | None = None
        self._stop_requested = False
        self.client: ApiClient | None = None

    def request_stop(self) -> None:
        self._stop_requested = True
        if self._crawl is not None:
            self._crawl.stop()
        if self._walk is not None:
            self._walk.stop()

    def _prepare(self) -> tuple[RunState, bool]:
        s = self.settings
        root = s.out
        check_writable(root)
        state = checkpoint.load(root)
        if state is not None and s.restart:
            discard_run(root, self.directories)
            state = None
        source = redact_url(s.base_url)
        if state is not None and state.status == "complete":
            raise UsageError(
                f"{root} already holds a finished export (run {state.run_id}); choose another "
                "--out, or pass --restart to replace it"
            )
        if state is not None and state.source != source:
            raise UsageError(
                f"{root} holds an unfinished export from {state.source}, not {source}; "
                "pass --restart to discard it, or choose another --out"
            )
        if state is not None and sorted(state.resources) != sorted(self.type_names):
            raise UsageError(
                f"{root} holds an unfinished export of {', '.join(sorted(state.resources))}; "
                "resume it with the same --relationships, or pass --restart to discard it"
            )
        resumed = state is not None
        if state is None:
            remove_uncommitted(root, None, self.directories)
            state = RunState(
                run_id=new_run_id(),
                started_at=utc_now(),
                source=source,
                parameters=s.parameters(),
            )
            for type_name in self.type_names:
                state.resources[type_name] = ResourceState(
                    type_name=type_name, directory=resource_type(type_name).collection
                )
        else:
            remove_uncommitted(root, state, self.directories)
        return state, resumed

    async def run(self) -> ExportResult:
        started = time.monotonic()
        s = self.settings
        state, resumed = self._prepare()
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
        )
        writer = Writer(s.out, state, inbox, credits, policy)
        async with ApiClient(client_settings, self.tokens) as client:
            self.client = client
            walk = None
            if self.links:
                walk = RelationshipWalk(
                    client,
                    base_url=s.base_url,
                    links=self.links,
                    inbox=inbox,
                    credits=credits,
                    page_size=s.page_size,
                    workers=s.concurrency,
                    max_url_length=s.max_url_length,
                )
                self._walk = walk
                if resumed:
                    await asyncio.to_thread(resume_walk, s.out, state, walk)
            root = state.resources[ROOT_TYPE]
            crawl = CollectionCrawl(
                client,
                base_url=s.base_url,
                type_name=ROOT_TYPE,
                page_size=s.page_size,
                workers=s.concurrency,
                inbox=inbox,
                credits=credits,
                initial_partitions=s.initial_partitions,
                announcer=walk,
            )
            self._crawl = crawl
            if self._stop_requested:
                self.request_stop()
            writer_task = asyncio.create_task(writer.run(), name="writer")
            failure: BaseException | None = None
            try:
                async with asyncio.TaskGroup() as group:
                    group.create_task(self._crawl_then_close(crawl, walk, root))
                    if walk is not None:
                        group.create_task(walk.run())
            except BaseException as exc:  # noqa: BLE001 - re-raised below after the commit
                failure = exc
                crawl.stop()
                if walk is not None:
                    walk.stop()
            inbox.put_nowait(None)
            try:
                await writer_task  # commits every page already fetched
            except BaseException:
                writer.discard()
                raise
            if failure is not None:
                raise _unwrap(failure)

        root.finished = root.planned and all(p.finished for p in root.partitions)
        if not root.finished or self._stop_requested:
            raise Interrupted(
                f"stopped before the export finished; {state.resources[ROOT_TYPE].rows:,} "
                f"{ROOT_TYPE} rows are committed. Run the same command again to resume"
            )
        for type_name, resource in state.resources.items():
            resource.finished = True
            if walk is not None and type_name in walk.targets:
                missing = walk.missing().get(type_name)
                if missing:
                    resource.detail["missing"] = missing
        state.status = "complete"
        state.finished_at = utc_now()
        checkpoint.save(s.out, state)
        seconds = time.monotonic() - started
        stats: dict[str, Any] = {
            "seconds": round(seconds, 3),
            "requests": client.stats.requests,
            "retries": client.stats.retries,
            "rate_limited": client.stats.rate_limited,
            "rate_wait_seconds": round(client.stats.rate_wait_seconds, 3),
            "bytes_received": client.stats.bytes_received,
            "pages": crawl.stats.pages,
            "duplicates_dropped": crawl.stats.duplicates,
            "partition_splits": crawl.stats.splits,
            "resumed": resumed,
        }
        if walk is not None:
            stats["relationships"] = {
                t: {"requests": w.requests, "batches": w.batches, "records": w.records}
                for t, w in walk.stats.items()
            }
        document = manifest.write(s.out, state, stats)
        return ExportResult(
            state=state,
            manifest=document,
            resumed=resumed,
            seconds=seconds,
            requests=client.stats.requests,
            crawl={ROOT_TYPE: crawl.stats},
            client={"retries": client.stats.retries, "rate_limited": client.stats.rate_limited},
            walk=dict(walk.stats) if walk is not None else {},
        )

    @staticmethod
    async def _crawl_then_close(
        crawl: CollectionCrawl, walk: RelationshipWalk | None, root: ResourceState
    ) -> None:
        await crawl.run(root.partitions if root.planned else None)
        if walk is not None:
            walk.close()  # no more steps: flush the partial batches


def resume_walk(root_dir: Path, state: RunState, walk: RelationshipWalk) -> None:
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
            ids.extend(read_column(root_dir / data_file.path, "id"))
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
        for table in read_batches(root_dir / data_file.path):
            renewed.update(walk.announce(table, only=lagging))
        needs_by_file[data_file.path] = renewed


def read_column(path: Path, column: str) -> list[int]:
    values: list[int] = pq.read_table(path, columns=[column]).column(column).to_pylist()
    return values


def read_batches(path: Path) -> Iterator[pa.Table]:
    parquet = pq.ParquetFile(path)
    for batch in parquet.iter_batches(batch_size=50_000):
        yield pa.Table.from_batches([batch])


def _unwrap(exc: BaseException) -> BaseException:
    """The first real error inside TaskGroup's ExceptionGroup."""
    while isinstance(exc, BaseExceptionGroup):
        exc = exc.exceptions[0]
    return exc


__all__ = ["Export", "ExportResult", "OutputError"]
