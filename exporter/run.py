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
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from exporter import checkpoint, manifest
from exporter.auth import TokenSource
from exporter.checkpoint import ResourceState, RunState
from exporter.client import ApiClient, ClientSettings
from exporter.config import ExportSettings
from exporter.crawl import CollectionCrawl, CrawlStats, Message
from exporter.errors import Interrupted, OutputError, UsageError, redact_url
from exporter.schema import resource_type
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
        self.type_names = [ROOT_TYPE]
        self.directories = [resource_type(t).collection for t in self.type_names]
        self._crawls: list[CollectionCrawl] = []
        self._stop_requested = False
        self.client: ApiClient | None = None

    def request_stop(self) -> None:
        self._stop_requested = True
        for crawl in self._crawls:
            crawl.stop()

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
            )
            self._crawls.append(crawl)
            if self._stop_requested:
                crawl.stop()
            writer_task = asyncio.create_task(writer.run(), name="writer")
            failure: BaseException | None = None
            try:
                await crawl.run(root.partitions if root.planned else None)
            except BaseException as exc:  # noqa: BLE001 - re-raised below after the commit
                failure = exc
                crawl.stop()
            inbox.put_nowait(None)
            try:
                await writer_task  # commits every page already fetched
            except BaseException:
                writer.discard()
                raise
            if failure is not None:
                raise _unwrap(failure)

        root.finished = all(p.finished for p in root.partitions) and root.planned
        if not root.finished:
            raise Interrupted(
                f"stopped before the export finished; {root.rows} {ROOT_TYPE} rows are "
                f"committed. Run the same command again to resume"
            )
        state.status = "complete"
        state.finished_at = utc_now()
        checkpoint.save(s.out, state)
        seconds = time.monotonic() - started
        stats = {
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
        document = manifest.write(s.out, state, stats)
        return ExportResult(
            state=state,
            manifest=document,
            resumed=resumed,
            seconds=seconds,
            requests=client.stats.requests,
            crawl={ROOT_TYPE: crawl.stats},
            client={"retries": client.stats.retries, "rate_limited": client.stats.rate_limited},
        )


def _unwrap(exc: BaseException) -> BaseException:
    """The first real error inside TaskGroup's ExceptionGroup."""
    while isinstance(exc, BaseExceptionGroup):
        exc = exc.exceptions[0]
    return exc


__all__ = ["Export", "ExportResult", "OutputError"]
