"""Deletion detection over two nights: tombstones and the delete scan's requests counted exactly."""

from __future__ import annotations

import asyncio
import math
import time
from pathlib import Path
from typing import Any
from urllib.parse import unquote

import orjson
import pyarrow.parquet as pq
import pytest
from yarl import URL

from exporter.api.auth import StaticToken
from exporter.api.client import ApiClient, ClientSettings
from exporter.core.config import MAX_PAGE_SIZE
from exporter.core.errors import Interrupted, ResponseError
from exporter.core.secrets import Secret
from exporter.export.crawl import Message, PageBatch, PageFlow
from exporter.export.deletes import DeleteScan
from exporter.export.run import Export
from exporter.model.normalize import TOMBSTONE_TYPE
from tests.helpers.requests import watch
from tests.helpers.runs import export_settings, run_export
from tests.helpers.sim import TOKEN, StartSimulator


def tombstones(out: Path) -> list[tuple[str, int, str]]:
    return sorted(
        (row["type"], row["id"], row["run_id"])
        for part in out.glob("tombstones/**/part-*.parquet")
        for row in pq.read_table(part).to_pylist()
    )


@pytest.mark.slow
async def test_two_nights_of_deletes_ask_each_live_id_once_and_tombstone_each_once(
    start_simulator: StartSimulator, tmp_path: Path
) -> None:
    """Bugs caught: the scan asking again for ids an earlier night already tombstoned (and
    tombstoning them again), an id asked twice, a deleted id not tombstoned, a present one
    tombstoned. Counts are exact: night 2 asks the 300 exported ids in ceil(300/page) requests
    and writes 5 tombstones; night 3 asks only the 295 still live and writes 3."""
    running = await start_simulator(steps=300, seed=61)
    await run_export(running.base_url, tmp_path)
    exported = {int(i) for i in running.sim.truth.ids("sequenceStep")}
    assert len(exported) == 300
    log = watch(running)
    first_gone = sorted(exported)[10:15]
    for value in first_gone:
        running.sim.store.delete("sequenceStep", value)
    job2, night2 = await run_export(
        running.base_url, tmp_path, incremental=True, detect_deletes=True
    )
    deletes = job2.stats["deletes"]["sequenceStep"]
    assert deletes == {
        "checked": 300,
        "tombstones": 5,
        "requests": math.ceil(300 / MAX_PAGE_SIZE),
    }
    asked = log.asked_ids("sequenceSteps", sparse=True)
    assert set(asked) == exported and set(asked.values()) == {1}
    assert [(t, i) for t, i, _ in tombstones(tmp_path)] == [("sequenceStep", i) for i in first_gone]

    log.clear()
    second_gone = sorted(exported)[100:103]
    for value in second_gone:
        running.sim.store.delete("sequenceStep", value)
    job3, night3 = await run_export(
        running.base_url, tmp_path, incremental=True, detect_deletes=True
    )
    deletes = job3.stats["deletes"]["sequenceStep"]
    assert deletes == {
        "checked": 295,
        "tombstones": 3,
        "requests": math.ceil(295 / MAX_PAGE_SIZE),
    }
    asked = log.asked_ids("sequenceSteps", sparse=True)
    assert set(asked) == exported - set(first_gone) and set(asked.values()) == {1}
    stones = tombstones(tmp_path)
    assert [(t, i) for t, i, _ in stones] == sorted(
        ("sequenceStep", i) for i in first_gone + second_gone
    )
    assert {r for _, i, r in stones if i in second_gone} == {night3.state.run_id}
    assert {r for _, i, r in stones if i in first_gone} == {night2.state.run_id}


@pytest.mark.slow
async def test_the_delete_scan_keeps_every_url_within_the_limit(
    start_simulator: StartSimulator, tmp_path: Path
) -> None:
    """Bug caught: the room for ids computed as `max_url_length + len(prefix)` instead of
    minus: batches as large as a page, so URLs past the limit the API (or a proxy) accepts;
    or measured on the readable URL (`len` for `wire_length`), not the percent-encoded one.
    Each id is still asked exactly once, and gone ones are tombstoned; and a tombstone batch
    counted as keeping an extra value (`extra_values=1`) shows in the manifest."""
    running = await start_simulator(steps=300, seed=67)
    await run_export(running.base_url, tmp_path)
    exported = {int(i) for i in running.sim.truth.ids("sequenceStep")}
    gone = sorted(exported)[:3]
    for value in gone:
        running.sim.store.delete("sequenceStep", value)
    log = watch(running)
    limit = 400
    job, _ = await run_export(
        running.base_url, tmp_path, incremental=True, detect_deletes=True, max_url_length=limit
    )
    origin = running.base_url.split("/api/")[0]
    scans = [unquote(line) for line in log.lines() if "filter[id]" in unquote(line)]
    # Measured as sent: aiohttp percent-encodes the brackets (yarl, as the client does), so a
    # limit checked on the readable form lets a URL 12 characters past it onto the wire.
    assert scans and all(len(str(URL(origin + line))) <= limit for line in scans)
    asked = log.asked_ids("sequenceSteps", sparse=True)
    assert set(asked) == exported and set(asked.values()) == {1}
    deletes = job.stats["deletes"]["sequenceStep"]
    assert deletes["requests"] == len(scans) > math.ceil(300 / MAX_PAGE_SIZE)
    assert [(t, i) for t, i, _ in tombstones(tmp_path)] == [("sequenceStep", i) for i in gone]
    # A tombstone row keeps no value aside (it has no `_extra` column to keep one in).
    manifest = orjson.loads((tmp_path / "_manifest.json").read_bytes())
    assert manifest["resources"][TOMBSTONE_TYPE]["extra_values"] == 0


@pytest.mark.slow
async def test_a_stop_during_the_delete_scan_stops_asking(
    start_simulator: StartSimulator, tmp_path: Path
) -> None:
    """Bug caught: `DeleteScan.stop` not setting its flag (`self._stopping = False`): a stop
    requested during the scan (SIGINT, SIGTERM) waits for every batch of ids to be asked. The
    stop comes once the first scan request is seen; the scan then asks the batches already
    in flight (two at once; a third of them is a wide margin on a busy machine), not all 30."""
    running = await start_simulator(steps=3000, seed=71)
    await run_export(running.base_url, tmp_path)
    log = watch(running)
    running.sim.faults.latency_s = 0.05
    job = Export(
        export_settings(
            running.base_url,
            tmp_path,
            incremental=True,
            detect_deletes=True,
            page_size=100,
            concurrency=2,
        ),
        StaticToken(Secret(TOKEN)),
    )

    async def stop_at_the_first_scan() -> None:
        deadline = time.monotonic() + 60
        while not log.asked_ids("sequenceSteps", sparse=True):
            assert time.monotonic() < deadline, "no delete scan request within 60 s"
            await asyncio.sleep(0.01)
        job.request_stop()

    stopper = asyncio.create_task(stop_at_the_first_scan())
    with pytest.raises(Interrupted, match="stopped before the export finished"):
        await job.run()
    await stopper
    asked = log.asked_ids("sequenceSteps", sparse=True)
    assert 0 < len(asked) <= 1_000  # the batches in flight (2 at once), not all 30


@pytest.mark.slow
async def test_a_scan_answer_that_pages_on_without_new_ids_is_stopped(
    start_simulator: StartSimulator, tmp_path: Path
) -> None:
    """Bug caught: the scan's `page.new_records = len(present) + known` (instead of minus): a
    page that brings no id already seen counts as progress, so an API that pages one batch on
    forever (always a next link, the same records) is followed without end. Here the proxy
    offers 60 such pages; the chain must stop after 20 pages without a new id."""
    from tests.helpers.tampering_proxy import Crafted, proxy_for

    running = await start_simulator(steps=50, seed=73)
    scan_pages: list[str] = []

    def tamper(url: str, doc: dict[str, Any]) -> Crafted | None:
        if "filter" not in url or "fields" not in url:  # not the delete scan's request
            return None
        scan_pages.append(url)
        if len(scan_pages) < 60:
            base = url.split("&turn=")[0]  # a parameter the simulator ignores
            doc["links"] = {"next": f"{base}&turn={len(scan_pages)}"}
        return Crafted(200, orjson.dumps(doc))

    async with proxy_for(running.root_url) as proxy:
        await run_export(proxy.base_url, tmp_path)
        proxy.tamper = tamper
        with pytest.raises(ResponseError, match="20 pages in a row brought no new record"):
            await run_export(proxy.base_url, tmp_path, incremental=True, detect_deletes=True)
    assert 20 <= len(scan_pages) <= 22


async def test_each_tombstone_batch_holds_a_page_credit(start_simulator: StartSimulator) -> None:
    """Bug caught: `await self.credits.acquire()` deleted: the writer gives back a credit per
    tombstone batch that was never taken, so the bound on batches waiting for the writer (the
    backpressure that keeps memory flat) grows with every batch. Two batches of 100 ids, each
    with a gone id; two credits: both are held by the batches in the writer's inbox."""
    running = await start_simulator(steps=200, seed=79)
    ids = sorted(int(i) for i in running.sim.truth.ids("sequenceStep"))
    gone = [ids[0], ids[150]]  # one in each batch of 100
    for value in gone:
        running.sim.store.delete("sequenceStep", value)
    inbox: asyncio.Queue[Message | None] = asyncio.Queue()
    credits = asyncio.Semaphore(2)
    settings = ClientSettings(base_url=running.base_url, rate_limit=1000, rate_period=1.0)
    async with ApiClient(settings, StaticToken(Secret(TOKEN))) as client:
        flow = PageFlow(client, running.base_url, inbox, credits, 100, 1, 8000)
        scan = DeleteScan(flow, run_id="20240101T000000Z-abcdef")
        await scan.scan("sequenceStep", ids)
    batches = [inbox.get_nowait() for _ in range(inbox.qsize())]
    assert [b.table["id"].to_pylist() for b in batches if isinstance(b, PageBatch)] == [
        [gone[0]],
        [gone[1]],
    ]
    assert credits.locked()  # both credits taken, one per batch, until the writer is done
    assert (scan.stats["sequenceStep"].checked, scan.stats["sequenceStep"].tombstones) == (200, 2)
