"""Incremental runs, deletions and compaction: several runs against a simulator that changes between them."""

from __future__ import annotations

import random
import time
from pathlib import Path

import orjson
import pyarrow.parquet as pq
import pytest

from exporter.audit.status import status
from exporter.audit.status_text import render
from exporter.audit.verify import verify as verify_directory
from exporter.backup.compact import compact
from exporter.core.errors import UsageError
from exporter.core.times import iso, micros
from tests.helpers.checks import (
    assert_compacted_equals_truth,
    assert_manifest_matches_files,
    assert_no_version_twice,
    current_rows,
)
from tests.helpers.runs import run_export
from tests.helpers.sim import CHILDREN, Running, StartSimulator, mutate
from tests.helpers.truth import (
    recorded_events,
)


@pytest.mark.slow
async def test_incremental_runs_then_compact_equal_ground_truth(
    start_simulator: StartSimulator, tmp_path: Path
) -> None:
    running = await start_simulator(steps=1500, seed=41)
    rng = random.Random(41)
    _job, first = await run_export(running.base_url, tmp_path, relationships="all")
    assert first.state.kind == "full"
    for round_number in range(3):
        done = mutate(running, rng, 60)
        assert sum(done.values()) == 60
        _job, delta = await run_export(
            running.base_url,
            tmp_path,
            relationships="all",
            incremental=True,
            detect_deletes=round_number == 2,
        )
        assert delta.state.kind == "incremental"
        # a delta holds what changed, not the whole collection again
        assert 0 < delta.rows["sequenceStep"] < 200
        assert all(
            f.path.split("/")[1] == f"run={delta.state.run_id}"
            for r in delta.state.resources.values()
            for f in r.files
        )
    assert_manifest_matches_files(tmp_path)
    assert_no_version_twice(tmp_path)
    report = verify_directory(tmp_path)
    assert report.exit_code == 0, [d.line() for d in report.differences]
    assert_compacted_equals_truth(running, tmp_path)
    assert verify_directory(tmp_path).exit_code == 0  # _current/ is not part of the backup
    manifest = orjson.loads((tmp_path / "_manifest.json").read_bytes())
    assert [r["kind"] for r in manifest["runs"]] == [
        "full",
        "incremental",
        "incremental",
        "incremental",
    ]
    stones = manifest["stats"]["deletes"]
    assert stones["sequenceStep"]["tombstones"] > 0 and stones["mailing"]["tombstones"] > 0


@pytest.mark.slow
async def test_unchanged_source_gives_an_empty_delta(
    start_simulator: StartSimulator, tmp_path: Path
) -> None:
    running = await start_simulator(steps=400, seed=42)
    await run_export(running.base_url, tmp_path, relationships="all")
    requests_before = running.sim.counters.requests
    _job, delta = await run_export(
        running.base_url, tmp_path, relationships="all", incremental=True
    )
    assert sum(delta.rows.values()) == 0
    assert running.sim.counters.requests - requests_before < 40  # probes and a template refresh
    assert_manifest_matches_files(tmp_path)


async def test_incremental_without_a_finished_run_is_a_full_run(
    start_simulator: StartSimulator, tmp_path: Path
) -> None:
    running = await start_simulator(steps=300, seed=43)
    _job, result = await run_export(running.base_url, tmp_path, incremental=True)
    assert result.state.kind == "full" and result.rows["sequenceStep"] == 300


@pytest.mark.slow
async def test_detect_deletes_writes_tombstones(
    start_simulator: StartSimulator, tmp_path: Path
) -> None:
    running = await start_simulator(steps=600, seed=44)
    await run_export(running.base_url, tmp_path, relationships="mailings")
    parents = {
        r["relationships"]["sequenceStep"]["data"]["id"]
        for t in CHILDREN
        for r in running.sim.truth.records(t)
    }
    gone_steps = [i for i in running.sim.truth.ids("sequenceStep") if i not in parents][:7]
    gone_mailings = running.sim.truth.ids("mailing")[:5]
    for value in gone_steps:
        running.sim.store.delete("sequenceStep", value)
    for value in gone_mailings:
        running.sim.store.delete("mailing", value)
    _job, result = await run_export(
        running.base_url, tmp_path, relationships="mailings", incremental=True, detect_deletes=True
    )
    stones = pq.read_table(
        tmp_path / result.state.resources["_tombstone"].files[0].path
    ).to_pylist()
    found = sorted((s["type"], s["id"]) for s in stones)
    assert found == sorted(
        [("sequenceStep", i) for i in gone_steps] + [("mailing", i) for i in gone_mailings]
    )
    assert {s["run_id"] for s in stones} == {result.state.run_id}
    compact(tmp_path)
    current = {r["id"] for r in current_rows(tmp_path, "sequenceStep")}
    assert current == set(running.sim.truth.ids("sequenceStep"))


def test_compact_needs_a_finished_export(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="no finished export"):
        compact(tmp_path)


DAY = 86_400.0


def updated_steps(running: Running, count: int) -> set[int]:
    ids = running.sim.truth.ids("sequenceStep")[:count]
    for value in ids:
        running.sim.store.update("sequenceStep", value)
    return set(ids)


async def test_a_date_header_a_day_ahead_does_not_move_the_mark(
    start_simulator: StartSimulator, tmp_path: Path
) -> None:
    """One run whose API answers carry a Date a day ahead: its mark is this machine's clock,
    the skew is logged and recorded, and the next run still sees what changed."""
    running = await start_simulator(steps=300, seed=45)
    await run_export(running.base_url, tmp_path)
    running.sim.faults.date_skew_s = DAY
    before = time.time()
    with recorded_events() as events:
        _job, skewed = await run_export(running.base_url, tmp_path, incremental=True)
    after = time.time()
    assert skewed.state.window_end is not None
    mark = micros(skewed.state.window_end) / 1e6
    assert before - 1 <= mark <= after + 1, skewed.state.window_end
    basis = skewed.state.resources["sequenceStep"].detail.mark
    assert basis is not None and basis["based_on"] == "local clock"
    assert abs(basis["skew_seconds"] - DAY) < 5
    assert events.count("clock.skew") == 1, events
    lines = "\n".join(render(status(tmp_path)))
    assert "local clock" in lines and "ahead" in lines, lines
    running.sim.faults.date_skew_s = 0.0
    changed = updated_steps(running, 5)
    _job, delta = await run_export(running.base_url, tmp_path, incremental=True)
    assert delta.rows["sequenceStep"] == len(changed)
    basis = delta.state.resources["sequenceStep"].detail.mark
    assert basis is not None and basis["based_on"] == "server clock"


async def test_a_window_that_would_start_after_its_end_is_never_accepted(
    start_simulator: StartSimulator, tmp_path: Path
) -> None:
    """A mark a day ahead already in the checkpoint (an earlier release took it from a wrong
    Date header): the window starts where the previous run began instead, with a warning."""
    running = await start_simulator(steps=300, seed=46)
    await run_export(running.base_url, tmp_path)
    path = tmp_path / "_checkpoint.json"
    document = orjson.loads(path.read_bytes())
    document["window_end"] = iso(micros(document["window_end"]) / 1e6 + DAY)
    path.write_bytes(orjson.dumps(document))
    changed = updated_steps(running, 4)
    with recorded_events() as events:
        _job, delta = await run_export(running.base_url, tmp_path, incremental=True)
    assert delta.rows["sequenceStep"] == len(changed)
    assert delta.state.window_start is not None and delta.state.window_end is not None
    assert micros(delta.state.window_start) <= micros(delta.state.window_end)
    assert events.count("window.clamped") == 1, events


async def test_a_window_with_no_sane_start_is_refused_and_nothing_is_exported(
    start_simulator: StartSimulator, tmp_path: Path
) -> None:
    """The previous run's mark and its start both two days ahead: no start before the end can
    be trusted, so the run stops with a usage error before it reads any data."""
    running = await start_simulator(steps=200, seed=47)
    await run_export(running.base_url, tmp_path)
    path = tmp_path / "_checkpoint.json"
    document = orjson.loads(path.read_bytes())
    for key in ("window_end", "started_at"):
        document[key] = iso(micros(document[key]) / 1e6 + 2 * DAY)
    path.write_bytes(orjson.dumps(document))
    manifest_before = (tmp_path / "_manifest.json").read_bytes()
    updated_steps(running, 3)
    requests = running.sim.counters.by_route.copy()
    with pytest.raises(UsageError, match=r"would start at .* after its end .*nothing was exported"):
        await run_export(running.base_url, tmp_path, incremental=True)
    read = running.sim.counters.by_route - requests
    assert read["GET /api/v2/sequenceSteps"] <= 1, read  # at most the one-record clock probe
    assert (tmp_path / "_manifest.json").read_bytes() == manifest_before
    assert not list(tmp_path.glob("sequenceSteps/run=*/*.parquet"))
