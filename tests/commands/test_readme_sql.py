"""The README's DuckDB queries run, and say what it says they do, on a real backup with a full run, deltas and tombstones."""

from __future__ import annotations

import random
import re
from pathlib import Path

import duckdb
import pyarrow.parquet as pq
import pytest

from exporter.backup.compact import compact, read_current
from tests.helpers.runs import run_export
from tests.helpers.sim import StartSimulator, mutate

pytestmark = pytest.mark.slow  # a backup with deltas and tombstones, then DuckDB: seconds

README = Path(__file__).resolve().parents[2] / "README.md"


def sql_blocks() -> list[str]:
    return re.findall(r"```sql\n(.*?)\n```", README.read_text(), flags=re.S)


def statements(block: str) -> list[str]:
    return [s.strip() for s in block.split(";") if s.strip().replace("\n", "").strip("- ")]


def on(directory: Path, sql: str) -> str:
    return sql.replace("outreach-demo/", f"{directory}/").replace("DIR/", f"{directory}/")


async def test_readme_queries_on_a_backup_with_deltas_and_tombstones(
    start_simulator: StartSimulator, tmp_path: Path
) -> None:
    running = await start_simulator(steps=1200, seed=77)
    rng = random.Random(77)
    _job, full = await run_export(running.base_url, tmp_path, relationships="all")
    delta_runs = []
    for round_number in range(2):
        mutate(running, rng, 40)
        _job, delta = await run_export(
            running.base_url,
            tmp_path,
            relationships="all",
            incremental=True,
            detect_deletes=round_number == 1,
        )
        delta_runs.append(delta.state.run_id)
    compact(tmp_path)
    blocks = sql_blocks()
    assert len(blocks) == 4, "the README's SQL blocks changed: update this test"
    con = duckdb.connect()

    # 1. the tour's join: runs, and counts each step's mailings
    [tour] = statements(blocks[0])
    rows = con.execute(on(tmp_path, tour)).fetchall()
    assert len(rows) == 5 and all(isinstance(r[-1], int) for r in rows)

    # 2. deltas with their run, and every version with its run
    deltas_sql, versions_sql = (on(tmp_path, s) for s in statements(blocks[1]))
    deltas = con.execute(f"select run, count(*) from ({deltas_sql}) group by run").fetchall()
    written = {
        run: sum(
            pq.read_metadata(p).num_rows
            for p in (tmp_path / "sequenceSteps" / f"run={run}").glob("*.parquet")
        )
        for run in delta_runs
    }
    assert dict(deltas) == {run: n for run, n in written.items() if n}
    versions = dict(
        con.execute(f"select run, count(*) from ({versions_sql}) group by run").fetchall()
    )
    assert versions == {full.state.run_id: full.rows["sequenceStep"], **dict(deltas)}

    # 3. the published current set, read through its pointer, is what `exporter compact` wrote
    set_current, read_current_steps = (on(tmp_path, s) for s in statements(blocks[2]))
    con.execute(set_current)
    generation, tables = read_current(tmp_path)
    assert con.execute("select getvariable('current')").fetchone() == (generation,)
    published = con.execute(f"select id, updatedAt from ({read_current_steps}) order by id")
    compacted = tables["sequenceStep"].select(["id", "updatedAt"]).sort_by("id")
    assert published.fetchall() == list(
        zip(
            compacted.column("id").to_pylist(),
            compacted.column("updatedAt").to_pylist(),
            strict=True,
        )
    )

    # 4. the current state in SQL from the backup's files equals what `exporter compact` wrote
    create_view = on(tmp_path, statements(blocks[3])[0])
    con.execute(create_view)
    in_sql = con.execute("select id, updatedAt from current_steps order by id").fetchall()
    assert in_sql == list(
        zip(
            compacted.column("id").to_pylist(),
            compacted.column("updatedAt").to_pylist(),
            strict=True,
        )
    )
    tombstoned = con.execute(
        on(tmp_path, "select count(*) from read_parquet('DIR/tombstones/**/*.parquet')")
    ).fetchone()
    assert tombstoned is not None and tombstoned[0] > 0  # the view really had deletions to drop
