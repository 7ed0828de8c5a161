"""The start of a crawl (issue 16, item 1): the first data page goes out with the largest-id probe when a collection is expected large, after it otherwise; counted in the simulator's request log, not timed."""

from __future__ import annotations

import asyncio
import io
import itertools
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest

from exporter.api.auth import StaticToken
from exporter.api.client import ApiClient, ClientSettings
from exporter.backup.checkpoint import PartitionState
from exporter.core.secrets import Secret
from exporter.export.crawl import CollectionCrawl, Message, PageBatch, PageFlow, Plan
from exporter.export.relationships import DEFAULT_MAX_URL_LENGTH
from tests.helpers.runs import run_export
from tests.helpers.sim import TOKEN, Running, StartSimulator
from tests.helpers.truth import assert_rows_equal, expected_steps, read_rows


@dataclass(frozen=True)
class Arrival:
    """One API GET as the simulator received it, and how many requests it had answered by then."""

    collection: str
    query: dict[str, str]
    answered: int

    @property
    def largest_id_probe(self) -> bool:
        return self.query.get("sort") == "-id"

    def first_data_page(self, page_size: int) -> bool:
        """The first page of the id-sorted walk: no id range, the page size asked, counted."""
        return (
            self.query.get("sort") == "id"
            and self.query.get("page[size]") == str(page_size)
            and "filter[id]" not in self.query
            and self.query.get("count") == "true"
        )


class Arrivals(io.StringIO):
    """The simulator's request log (`Simulator.request_log`, written as each GET arrives): each
    GET noted with how many requests the simulator had answered when it arrived. With
    `opening_latency`, every answer waits that long until `opening` GETs of `collection`
    have arrived, and none after (the crawl's start is slow, the rest of it is quick)."""

    def __init__(
        self,
        running: Running,
        *,
        collection: str = "",
        opening: int = 0,
        opening_latency: float = 0.0,
    ) -> None:
        super().__init__()
        self.sim = running.sim
        self.arrivals: list[Arrival] = []
        self.collection = collection
        self.opening = opening
        if opening:
            self.sim.faults.latency_s = opening_latency
        self.sim.request_log = self

    def write(self, text: str) -> int:
        counters = self.sim.counters
        parts = urlsplit(text.strip())
        query = {k: v[0] for k, v in parse_qs(parts.query, keep_blank_values=True).items()}
        collection = parts.path.rstrip("/").rsplit("/", 1)[-1]
        # The request being logged is counted already (in `requests` and in `in_flight`).
        self.arrivals.append(Arrival(collection, query, counters.requests - counters.in_flight))
        if self.opening and len(self.of(self.collection)) >= self.opening:
            self.sim.faults.latency_s = 0.0
        return super().write(text)

    def of(self, collection: str) -> list[Arrival]:
        return [a for a in self.arrivals if a.collection == collection]


def opening(arrivals: list[Arrival], page_size: int) -> tuple[Arrival, Arrival]:
    """The first data page and the one largest-id probe of a collection's crawl."""
    [first] = [a for a in arrivals if a.first_data_page(page_size)]
    [probe] = [a for a in arrivals if a.largest_id_probe]
    return first, probe


async def test_the_steps_first_data_page_goes_out_with_the_largest_id_probe(
    start_simulator: StartSimulator, tmp_path: Path
) -> None:
    """Before: a one-record count probe, then a one-record `-id` probe, answered one after the
    other before the first data page went out (two round trips). Now the first data page
    (count=true) and the `-id` probe go out together, before either is answered."""
    running = await start_simulator(steps=600, seed=71)
    log = Arrivals(running, collection="sequenceSteps", opening=2, opening_latency=0.25)
    _job, result = await run_export(running.base_url, tmp_path, page_size=100, concurrency=4)
    steps = log.of("sequenceSteps")
    first, probe = opening(steps, 100)
    assert steps[:2] in ([first, probe], [probe, first])  # the crawl's first two requests
    # Neither waited for an answer: no request of the crawl was answered before both went out.
    assert first.answered == probe.answered == steps[0].answered
    # The start costs one request beyond the data pages, and no one-record page but the probe.
    assert len(steps) == result.crawl["sequenceStep"].pages + 1
    assert [a for a in steps if a.query.get("page[size]") == "1"] == [probe]
    assert_rows_equal(read_rows(tmp_path / "sequenceSteps"), expected_steps(running.sim))
    # The first page's records are partition 0, finished; the rest tile the ids past them.
    ids = [int(i) for i in running.sim.truth.ids("sequenceStep")]
    partitions = sorted(result.state.resources["sequenceStep"].partitions, key=lambda p: p.low)
    head = partitions[0]
    assert (head.key, head.low, head.high, head.finished) == (0, ids[0], ids[99], True)
    assert all(p.finished for p in partitions) and len(partitions) > 1
    for before, after in itertools.pairwise(partitions):
        assert after.low == before.high + 1
    assert partitions[-1].high == ids[-1]


@pytest.mark.slow
async def test_a_root_read_whole_probes_beside_its_first_page_only_when_the_backup_says_large(
    start_simulator: StartSimulator, tmp_path: Path
) -> None:
    """A `--resources` root of unknown size probes its largest id only once its first page says
    the rest will be cut (a small collection then costs one request: the bound of issue 14).
    Read whole again by an incremental run (recipients: `updatedAt` is not filterable) when
    the backup holds enough of it to be cut, it probes beside its first page."""
    running = await start_simulator(prospects=20, sizes={"recipient": 170})
    out = tmp_path / "b"
    # Pages of 2: past the first page, 168 records, at least 2 partitions of 40 pages.
    settings: dict[str, Any] = {"resources": "recipients,stages", "page_size": 2, "concurrency": 4}
    log = Arrivals(running)
    _job, full = await run_export(running.base_url, out, **settings)
    first, probe = opening(log.of("recipients"), 2)
    assert probe.answered > first.answered  # sent once the first page was answered
    assert len(log.of("recipients")) == full.crawl["recipient"].pages + 1
    stages = log.of("stages")  # a few pages: walked as one chain, no probe
    assert len(stages) == full.crawl["stage"].pages and not any(a.largest_id_probe for a in stages)

    log = Arrivals(running, collection="recipients", opening=2, opening_latency=0.25)
    _job, nightly = await run_export(running.base_url, out, incremental=True, **settings)
    first, probe = opening(log.of("recipients"), 2)
    assert probe.answered == first.answered  # sent before the first page was answered
    assert len(log.of("recipients")) == nightly.crawl["recipient"].pages + 1
    # A window on updatedAt (nothing changed): the changes are expected few, no probe.
    assert len(log.of("stages")) == 1


async def test_a_start_killed_before_partition_0_committed_resumes_exactly(
    start_simulator: StartSimulator,
) -> None:
    """The plan is sent before partition 0's first page: a checkpoint that holds the plan and
    nothing of that page (a kill between the two commits) walks partition 0 again from its low
    end, as `filter[id]=low..high`, and the crawl emits every id once."""
    running = await start_simulator(steps=400, seed=72)
    ids = [int(i) for i in running.sim.truth.ids("sequenceStep")]
    settings = ClientSettings(base_url=running.base_url, rate_limit=1000, rate_period=1.0)

    async def crawl(committed: list[PartitionState] | None) -> list[Message | None]:
        inbox: asyncio.Queue[Message | None] = asyncio.Queue()
        async with ApiClient(settings, StaticToken(Secret(TOKEN))) as client:
            flow = PageFlow(
                client,
                running.base_url,
                inbox,
                asyncio.Semaphore(100),
                50,
                2,
                DEFAULT_MAX_URL_LENGTH,
            )
            await CollectionCrawl(flow, type_name="sequenceStep", expect_large=True).run(committed)
        return [inbox.get_nowait() for _ in range(inbox.qsize())]

    started = await crawl(None)
    plan = started[0]
    assert isinstance(plan, Plan)
    head = plan.partitions[0]
    assert (head.key, head.low, head.high, head.done_through) == (0, ids[0], ids[49], ids[0] - 1)
    assert isinstance(started[1], PageBatch) and started[1].partition_key == 0
    emitted = [i for m in started if isinstance(m, PageBatch) for i in m.table["id"].to_pylist()]
    assert sorted(emitted) == ids

    log = Arrivals(running)
    resumed = await crawl(plan.partitions)
    assert not any(isinstance(m, Plan) for m in resumed)
    again = [i for m in resumed if isinstance(m, PageBatch) for i in m.table["id"].to_pylist()]
    assert sorted(again) == ids  # every id once: partition 0 walked again, the rest as planned
    walked = [a.query.get("filter[id]") for a in log.of("sequenceSteps")]
    assert f"{ids[0]}..{ids[49]}" in walked
    assert not any(a.largest_id_probe or a.first_data_page(50) for a in log.arrivals)
