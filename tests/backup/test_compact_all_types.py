"""`compact` over a backup of all 47 readable types equals the simulator's ground truth: newest versions, string ids, tombstones, every derived to-many list."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest

from exporter.backup.compact import compact, crawled_roots, inverse_columns, read_current
from exporter.model.schema import readable_types, resource_type
from exporter.simulator import Simulator, SimulatorConfig
from tests.helpers.backups import BackupWriter, snapshot
from tests.helpers.runs import run_export, run_exporter
from tests.helpers.sim import StartSimulator
from tests.helpers.truth import assert_rows_equal, expected_row, rel_columns

AUDIT_LOG = "auditLog"  # ids are UUID strings


def truth_rows(sim: Simulator, type_name: str) -> list[dict[str, Any]]:
    rows = [expected_row(r, rel_columns(type_name)) for r in sim.truth.records(type_name)]
    return sorted(rows, key=lambda r: r["id"])


def current_rows(table: pa.Table) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = table.to_pylist()
    return sorted(rows, key=lambda r: r["id"])


def assert_current_is_truth(out: Path, sim: Simulator) -> dict[str, pa.Table]:
    _generation, tables = read_current(out)
    assert sorted(tables) == sorted(sim.truth.types())
    for type_name in sim.truth.types():
        want = truth_rows(sim, type_name)
        for row in want:  # a derived list comes ordered by id
            for column, _target, _back in inverse_columns(type_name, readable_types()):
                row[column] = sorted(row[column] or [])
        assert_rows_equal(current_rows(tables[type_name]), want)
    return tables


def change_every_type(sim: Simulator) -> dict[str, int]:
    """In every type: a record inserted, one updated (where the API can update one), one deleted
    (an auditLog's too: deletion of the entries apart, see below). Returns the deleted ids."""
    store = sim.store
    deleted: dict[str, int] = {}
    for type_name in sim.truth.types():
        store.insert(type_name)
        ids = store.ids(type_name)
        if not store.tables[type_name].append_only:
            store.update(type_name, ids[len(ids) // 2])
        # A tombstone's id is an integer (normalize.TOMBSTONE_SCHEMA): a deleted auditLog
        # entry cannot be recorded yet, so none is deleted here.
        if type_name != AUDIT_LOG and len(ids) > 3:
            victim = ids[-2]
            if store.alive_row(type_name, victim) is not None:
                store.delete(type_name, victim)
                deleted[type_name] = victim
    return deleted


@pytest.fixture(scope="module")
def sim() -> Simulator:
    return Simulator(SimulatorConfig(steps=120, prospects=200, seed=11))


@pytest.mark.slow
def test_every_type_compacts_to_the_truth(sim: Simulator, tmp_path: Path) -> None:
    writer = BackupWriter(tmp_path)
    writer.run(sim, "full")
    rows = compact(tmp_path)
    assert set(rows) == set(sim.truth.types()) and len(rows) == len(readable_types())
    tables = assert_current_is_truth(tmp_path, sim)
    assert pa.types.is_string(tables[AUDIT_LOG].schema.field("id").type)
    assert all(isinstance(i, str) for i in tables[AUDIT_LOG].column("id").to_pylist())
    # The derived lists are not empty: the test shows what it claims.
    prospects = tables["prospect"].to_pylist()
    assert any(r["emailAddressIds"] for r in prospects)
    assert any(r["roleIds"] for r in tables["role"].to_pylist())


@pytest.mark.slow
def test_two_runs_with_changes_and_deletions_in_every_type(tmp_path: Path) -> None:
    sim = Simulator(SimulatorConfig(steps=120, prospects=200, seed=12))
    writer = BackupWriter(tmp_path)
    writer.run(sim, "full")
    before = snapshot(sim)
    deleted = change_every_type(sim)
    assert len(deleted) >= len(readable_types()) - 6  # fixed-size small types may keep theirs
    second = writer.run(sim, "incremental", since=before)
    assert "_tombstone" in second.resources
    # Parents whose lists changed without their updatedAt moving were not written again: their
    # lists in the backup are stale, and compaction derives them from the owning side.
    compact(tmp_path)
    tables = assert_current_is_truth(tmp_path, sim)
    for type_name, victim in deleted.items():
        assert victim not in tables[type_name].column("id").to_pylist()
    assert AUDIT_LOG in {t for t, r in second.resources.items() if r.rows}


def test_crawled_roots_reads_the_selection() -> None:
    assert crawled_roots({}) == ("sequenceStep",)
    assert crawled_roots({"parameters": {"resources": "all"}}) == readable_types()
    assert crawled_roots({"parameters": {"resources": "prospects,sequenceSteps,bogus"}}) == (
        "prospect",
        "sequenceStep",
    )
    assert crawled_roots({"parameters": {"resources": ["account"]}}) == ("account",)
    assert resource_type("prospect").collection == "prospects"


@pytest.mark.slow
async def test_cli_compact_verify_status_after_a_real_resources_all_export(
    start_simulator: StartSimulator, tmp_path: Path
) -> None:
    """End to end: `export --resources all` over HTTP, then the real `compact`, `verify` and
    `status` commands: the published state equals the truth for every type."""
    running = await start_simulator(steps=60, prospects=150, seed=13)
    out = tmp_path / "all"
    await run_export(running.base_url, out, resources="all")
    compacted = run_exporter("compact", str(out))
    assert compacted.returncode == 0, compacted.stderr
    assert_current_is_truth(out, running.sim)
    verified = run_exporter("verify", str(out))
    assert verified.returncode == 0, verified.stdout + verified.stderr
    shown = run_exporter("status", str(out))
    assert shown.returncode == 0, shown.stderr
    for type_name in readable_types():
        assert f"\n  {type_name} " in shown.stdout
