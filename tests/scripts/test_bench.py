"""The benchmark's own parts: the floor's replay into Arrow, the page-path column, dlt's read-back."""

from __future__ import annotations

import sys
from pathlib import Path

import aiohttp
import orjson
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from scripts.bench import (
    Measure,
    Scenario,
    export_measure,
    page_paths_cell,
    parquet_rows,
    relationships_cost,
    render_memory,
    run_measured,
    tree_env,
)
from scripts.bench_dlt_pipeline import source_config
from scripts.bench_floor import ArrowPages, is_probe, record_count, replay
from tests.helpers.sim import TOKEN, StartSimulator

CHECKOUT = Path(__file__).resolve().parents[2]


async def walk_urls(root: str, first: str) -> list[str]:
    """The path and query of every page of a walk from `first`, following `links.next`."""
    urls = [first]
    async with aiohttp.ClientSession(headers={"Authorization": f"Bearer {TOKEN}"}) as session:
        while True:
            async with session.get(root + urls[-1]) as response:
                next_url = orjson.loads(await response.read()).get("links", {}).get("next")
            if not next_url:
                return urls
            urls.append(next_url.removeprefix(root))


async def test_floor_reads_every_record_of_the_replayed_pages(
    start_simulator: StartSimulator,
) -> None:
    running = await start_simulator(steps=600)
    steps = await walk_urls(running.root_url, "/api/v2/sequenceSteps?page%5Bsize%5D=250")
    sequences = await walk_urls(running.root_url, "/api/v2/sequences?page%5Bsize%5D=40")
    probe = "/api/v2/sequenceSteps?page%5Bsize%5D=1&count=true"
    urls = [probe, *steps, *sequences]
    assert len(steps) == 3 and len(sequences) > 2  # later pages read with the remembered schema

    counts = await replay(running.root_url, urls, 2, TOKEN)

    truth = running.sim.truth
    assert counts == {
        "requests": len(urls),
        "records": truth.count("sequenceStep") + truth.count("sequence"),  # not the probe's
    }


def test_a_probe_is_a_one_record_page() -> None:
    assert is_probe("/api/v2/sequenceSteps?page%5Bsize%5D=1&count=true")
    assert is_probe("/api/v2/sequenceSteps?sort=id&page[size]=1")
    assert not is_probe("/api/v2/sequenceSteps?page%5Bsize%5D=10")
    assert not is_probe("/api/v2/sequenceSteps")


def test_a_page_the_remembered_schema_does_not_fit_is_read_anew() -> None:
    pages = ArrowPages()
    first = b'{"data":[{"id":1,"attributes":{"name":null}}],"links":{}}'
    later = b'{"data":[{"id":2,"attributes":{"name":"Ada"}},{"id":3,"attributes":{"name":"Bo"}}]}'

    assert record_count(pages.read(first, "/api/v2/things")) == 1
    table = pages.read(later, "/api/v2/things")

    assert record_count(table) == 2
    names = [record["attributes"]["name"] for record in table.column("data")[0].as_py()]
    assert names == ["Ada", "Bo"]


def test_a_single_resource_document_holds_no_records_to_count() -> None:
    table = ArrowPages().read(b'{"data":{"type":"org","id":"o1"}}', "/api/v2")
    assert record_count(table) == 0


def write_manifest(out_dir: Path, stats: dict[str, object]) -> None:
    manifest = {"resources": {"sequenceStep": {"rows": 10}, "user": {"rows": 2}}, "stats": stats}
    (out_dir / "_manifest.json").write_bytes(orjson.dumps(manifest))


def test_export_rows_say_fast_and_slow_pages_or_a_dash(tmp_path: Path) -> None:
    write_manifest(tmp_path, {"requests": 7, "page_paths": {"fast": 1200, "slow": 3}})
    measured = export_measure(tmp_path, 2.0, 100.0, 1.5)
    assert (measured.records, measured.requests, measured.page_paths) == (
        12,
        7,
        {"fast": 1200, "slow": 3},
    )
    assert page_paths_cell(measured) == "1,200 / 3"

    write_manifest(tmp_path, {"requests": 7})  # a tree from before the count
    older = export_measure(tmp_path, 2.0, 100.0, 1.5)
    assert older.page_paths is None
    assert page_paths_cell(older) == "-"
    assert page_paths_cell(Measure(0, 0, 1.0, 1.0)) == "-"


def test_relationships_cost_sets_records_and_wire_bytes_with_the_walk_beside_without(
    tmp_path: Path,
) -> None:
    write_manifest(tmp_path, {"requests": 7, "bytes_received": 3_000_000})
    assert export_measure(tmp_path, 2.0, 100.0, 1.5).wire_bytes == 3_000_000
    write_manifest(tmp_path, {"requests": 7})  # a tree from before the count: no row
    assert export_measure(tmp_path, 2.0, 100.0, 1.5).wire_bytes is None

    off = Measure(100_000, 100, 2.0, 180.0, cpu_seconds=2.0, wire_bytes=150_000_000)
    on = Measure(400_000, 500, 10.0, 300.0, cpu_seconds=12.0, wire_bytes=900_000_000)
    rows = [
        {"scenario": Scenario("no latency", 100_000, relationships, 0.0, 8), "export": measure}
        for relationships, measure in ((False, off), (True, on))
    ]
    lines = relationships_cost(rows)
    assert lines[-1] == (
        "| no latency | 100,000 | 50,000 → 40,000 | 0.80 | 1,500 → 2,250 | 75 → 90 | 1.20 | "
        "13.3 → 13.3 ms |"
    )
    assert relationships_cost(rows[:1]) == []  # no pair, no table


def test_memory_growth_is_the_ratio_of_median_peaks(tmp_path: Path) -> None:
    """Bug caught: growth from one run's peak (a peak is the largest swing of a noisy process)
    or from the mean, which one stray run moves."""

    def runs(*peaks: float) -> list[Measure]:
        return [Measure(1, 1, 1.0, peak, cpu_seconds=peak / 100) for peak in peaks]

    found = {
        "old": {10: runs(180, 190, 182), 100: runs(219, 300, 220)},
        "new": {10: runs(165, 164, 175), 100: runs(186, 190, 185)},
    }
    lines = render_memory(found, (10, 100)).splitlines()
    assert "| old | 100 | 3 | 219, 300, 220 | 220 | 2.2 |" in lines
    assert "| new | 10 | 3 | 165, 164, 175 | 165 | 1.6 |" in lines
    assert "- old: 182 MiB at 10 steps, 220 at 100: growth x1.21 (aim under x1.2)" in lines
    assert "- new: 165 MiB at 10 steps, 186 at 100: growth x1.13 (aim under x1.2)" in lines


def test_dlt_parquet_read_back_counts_rows_and_distinct_ids(tmp_path: Path) -> None:
    table_dir = tmp_path / "sequence_steps"
    table_dir.mkdir()
    pq.write_table(pa.table({"id": [1, 2, 3], "x": ["a", "b", "c"]}), table_dir / "1.parquet")
    pq.write_table(pa.table({"id": [3, 4], "x": ["c", "d"]}), table_dir / "2.parquet")
    assert parquet_rows(table_dir) == (5, 4)  # a step written twice is not a step more


async def test_dlt_follows_the_next_link_where_the_api_puts_it(
    start_simulator: StartSimulator,
) -> None:
    running = await start_simulator(steps=30)
    config = source_config(running.base_url, TOKEN, 10)
    endpoint = config["resources"][0]["endpoint"]
    url = config["client"]["base_url"] + endpoint["path"]
    headers = {"Authorization": f"Bearer {config['client']['auth']['token']}"}
    async with (
        aiohttp.ClientSession(headers=headers) as session,
        session.get(url, params=endpoint["params"]) as response,
    ):
        document = orjson.loads(await response.read())

    assert len(document[endpoint["data_selector"]]) == 10
    value = document
    for key in config["client"]["paginator"]["next_url_path"].split("."):
        value = value[key]
    assert isinstance(value, str) and value.startswith(running.base_url + "/sequenceSteps?")


def package_named_exporter(directory: Path) -> Path:
    """A directory holding an `exporter` package that only says where it is."""
    package = directory / "exporter"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (package / "__main__.py").write_text("print(__file__)\n")
    return directory


def test_an_export_runs_the_code_of_its_tree_wherever_the_bench_starts(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`python -m` puts the working directory ahead of PYTHONPATH: a bench started from one
    checkout's root ran that checkout's exporter for both sides of --vs."""
    other = package_named_exporter(tmp_path / "other")
    monkeypatch.chdir(package_named_exporter(tmp_path / "cwd"))

    _s, _m, out, _c = run_measured([sys.executable, "-m", "exporter"], tree_env(other))
    assert Path(out.strip()) == other / "exporter" / "__main__.py"

    where = [sys.executable, "-c", "import exporter; print(exporter.__file__)"]
    _s, _m, out, _c = run_measured(where, tree_env(None))
    assert Path(out.strip()) == CHECKOUT / "exporter" / "__init__.py"  # not the stand-in
