"""Integration: export sequenceSteps from a real simulator on loopback and compare with its ground truth."""

from __future__ import annotations

import asyncio
import hashlib
import itertools
from pathlib import Path

import duckdb
import orjson
import pyarrow.parquet as pq
import pytest

from exporter.model.normalize import arrow_schema
from exporter.simulator import Faults
from tests.helpers.runs import run_export
from tests.helpers.sim import TOKEN, StartSimulator
from tests.helpers.truth import (
    assert_rows_equal,
    expected_steps,
    read_rows,
)


@pytest.mark.slow
@pytest.mark.parametrize(
    ("steps", "concurrency", "page_size"),
    [(1500, 1, 1000), (1500, 8, 1000), (150, 1, 1), (300, 8, 1), (2500, 8, 7)],
)
async def test_export_equals_ground_truth(
    start_simulator: StartSimulator, tmp_path: Path, steps: int, concurrency: int, page_size: int
) -> None:
    # A little latency per response, so requests overlap and the in-flight bound is observable.
    running = await start_simulator(
        steps=steps, seed=steps + concurrency, faults=Faults(latency_s=0.002)
    )
    _job, result = await run_export(
        running.base_url, tmp_path, concurrency=concurrency, page_size=page_size
    )
    actual = read_rows(tmp_path / "sequenceSteps")
    expected = expected_steps(running.sim)
    assert len(expected) == steps
    assert_rows_equal(actual, expected)
    assert result.rows == {"sequenceStep": steps}
    if concurrency > 1:
        assert running.sim.counters.max_in_flight > 1  # partitions really were walked in parallel
    assert running.sim.counters.max_in_flight <= concurrency


@pytest.mark.slow
async def test_data_covers_the_hard_cases(start_simulator: StartSimulator, tmp_path: Path) -> None:
    """The ground truth has what the comparison must survive: long notes, unicode, nulls, every type."""
    running = await start_simulator(steps=3000, seed=11)
    await run_export(running.base_url, tmp_path)
    rows = read_rows(tmp_path / "sequenceSteps")
    assert_rows_equal(rows, expected_steps(running.sim))
    notes = [r["taskNote"] for r in rows if r["taskNote"] is not None]
    assert max(len(n) for n in notes) == 65535
    assert any(not n.isascii() for n in notes)
    assert {r["stepType"] for r in rows} >= {"auto_email", "manual_email", "call", "task"}
    assert any(r["date"] is not None for r in rows) and any(r["interval"] is not None for r in rows)
    assert all(r["date"] is None or r["interval"] is None for r in rows)
    assert any(r["sequenceTemplateIds"] == [] for r in rows)
    assert any(r["creatorId"] is None for r in rows) or any(
        r["callPurposeId"] is None for r in rows
    )


@pytest.mark.slow
async def test_splitting_keeps_workers_busy_and_output_exact(
    start_simulator: StartSimulator, tmp_path: Path
) -> None:
    running = await start_simulator(steps=4000, seed=5, faults=Faults(latency_s=0.002))
    _job, result = await run_export(
        running.base_url, tmp_path, concurrency=4, page_size=50, initial_partitions=1
    )
    assert result.crawl["sequenceStep"].splits >= 3
    assert running.sim.counters.max_in_flight >= 3
    assert_rows_equal(read_rows(tmp_path / "sequenceSteps"), expected_steps(running.sim))
    partitions = result.state.resources["sequenceStep"].partitions
    assert all(p.finished for p in partitions)
    spans = sorted((p.low, p.high) for p in partitions)
    for (_, high), (low, _) in itertools.pairwise(spans):
        assert low == high + 1  # the partitions still tile the id range exactly


@pytest.mark.slow
async def test_duckdb_reads_the_output_and_manifest_matches(
    start_simulator: StartSimulator, tmp_path: Path
) -> None:
    running = await start_simulator(steps=2000, seed=3)
    _job, result = await run_export(
        running.base_url, tmp_path, file_rows=600, concurrency=4, page_size=100
    )
    glob = str(tmp_path / "sequenceSteps" / "*.parquet")
    [(count, distinct, notes)] = (
        duckdb.connect()
        .execute(
            f"select count(*), count(distinct id), count(taskNote) from read_parquet('{glob}')"
        )
        .fetchall()
    )
    truth = list(running.sim.truth.records("sequenceStep"))
    assert count == distinct == len(truth)
    assert notes == sum(1 for r in truth if r["attributes"].get("taskNote") is not None)

    manifest = orjson.loads((tmp_path / "_manifest.json").read_bytes())
    files = manifest["files"]
    assert len(files) >= 3  # rolled at 600 rows
    assert sum(f["rows"] for f in files) == len(truth)
    on_disk = sorted(p.name for p in (tmp_path / "sequenceSteps").iterdir())
    assert on_disk == sorted(Path(f["path"]).name for f in files)  # no temporary leftovers
    for entry in files:
        path = tmp_path / entry["path"]
        assert hashlib.sha256(path.read_bytes()).hexdigest() == entry["sha256"]
        assert path.stat().st_size == entry["bytes"]
        # rolled once a file reaches 600 rows: it can pass that by less than one page
        assert pq.read_metadata(path).num_rows == entry["rows"] < 600 + 100
        assert [f["name"] for f in entry["schema"]] == arrow_schema("sequenceStep").names
        assert (
            pq.read_schema(path).remove_metadata() == arrow_schema("sequenceStep").remove_metadata()
        )
    assert manifest["run_id"] == result.state.run_id and manifest["status"] == "complete"
    assert manifest["source"] == running.base_url
    assert manifest["started_at"] <= manifest["finished_at"]
    body = {k: v for k, v in manifest.items() if k != "manifest_sha256"}
    assert (
        manifest["manifest_sha256"]
        == hashlib.sha256(orjson.dumps(body, option=orjson.OPT_SORT_KEYS)).hexdigest()
    )
    for produced in tmp_path.rglob("*"):
        if produced.is_file():
            assert TOKEN.encode() not in produced.read_bytes(), produced


@pytest.mark.slow
async def test_walk_under_mutation_exports_each_surviving_record_once(
    start_simulator: StartSimulator, tmp_path: Path
) -> None:
    running = await start_simulator(steps=3000, seed=9)
    before = set(running.sim.truth.ids("sequenceStep"))

    async def mutate() -> None:
        while True:
            running.sim.mutate(20)
            await asyncio.sleep(0.005)

    mutator = asyncio.create_task(mutate())
    try:
        await run_export(running.base_url, tmp_path, page_size=100, concurrency=4)
    finally:
        mutator.cancel()
    rows = read_rows(tmp_path / "sequenceSteps")
    ids = [r["id"] for r in rows]
    assert len(ids) == len(set(ids))
    survivors = before - running.sim.truth.deleted_ids("sequenceStep")
    assert survivors <= set(ids)  # every record that existed throughout the walk
    assert set(ids) <= before | set(
        running.sim.truth.ids("sequenceStep")
    ) | running.sim.truth.deleted_ids("sequenceStep")


async def test_finished_directory_is_not_overwritten(
    start_simulator: StartSimulator, tmp_path: Path
) -> None:
    from exporter.core.errors import UsageError

    running = await start_simulator(steps=100, seed=1)
    await run_export(running.base_url, tmp_path)
    with pytest.raises(UsageError, match="already holds a finished export"):
        await run_export(running.base_url, tmp_path)
    _job, again = await run_export(running.base_url, tmp_path, restart=True)
    assert again.rows == {"sequenceStep": 100}
    assert len(list((tmp_path / "sequenceSteps").glob("*.parquet"))) == 1
