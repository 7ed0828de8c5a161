"""Assertions about a backup: exact against the simulator's ground truth, consistent with its manifest, compacted to the current state; and one-line errors."""

from __future__ import annotations

import hashlib
from collections import Counter
from pathlib import Path
from typing import Any

import orjson
import pyarrow.parquet as pq

from exporter.audit.verify import verify
from exporter.backup.compact import compact, inverse_columns, read_current
from exporter.core.errors import ExitCode
from exporter.model.normalize import table_layout
from exporter.model.schema import RESOURCE_TYPES, resource_type
from tests.helpers.sim import Running
from tests.helpers.truth import (
    STEP_RELATIONSHIP_COLUMNS,
    assert_rows_equal,
    expected_related,
    expected_row,
    expected_steps_for_seed,
    read_rows,
    rel_columns,
)


def assert_manifest_matches_files(out: Path) -> None:
    manifest = orjson.loads((out / "_manifest.json").read_bytes())
    listed = {entry["path"] for entry in manifest["files"]}
    on_disk = {  # `exporter compact`'s output (_current/) is not part of the backup
        str(p.relative_to(out))
        for p in out.rglob("*.parquet")
        if not p.name.startswith(".") and p.relative_to(out).parts[0] != "_current"
    }
    assert listed == on_disk, (sorted(listed - on_disk)[:5], sorted(on_disk - listed)[:5])
    for entry in manifest["files"]:
        path = out / entry["path"]
        assert hashlib.sha256(path.read_bytes()).hexdigest() == entry["sha256"], entry["path"]
        assert pq.read_metadata(path).num_rows == entry["rows"], entry["path"]
    for type_name, resource in manifest["resources"].items():
        rows = sum(e["rows"] for e in manifest["files"] if e["type"] == type_name)
        assert rows == resource["rows"], type_name


def assert_exact(running: Running, out: Path) -> None:
    """Every dataset equals the simulator's ground truth, with a manifest that matches the files."""
    steps = list(running.sim.truth.records("sequenceStep"))
    assert_rows_equal(
        read_rows(out / "sequenceSteps"),
        [expected_row(r, STEP_RELATIONSHIP_COLUMNS) for r in steps],
    )
    for target, rows in expected_related(running.sim, steps).items():
        directory = out / resource_type(target).collection
        assert_rows_equal(read_rows(directory), sorted(rows, key=lambda r: r["id"]))
    assert_manifest_matches_files(out)
    leftovers = [
        p for p in out.rglob("*") if p.name.startswith(".") or p.name.endswith(".inprogress")
    ]
    assert not leftovers, leftovers


def one_error_line(stderr: str) -> str:
    """The one `error:` line of a failed run (progress lines aside), never a traceback."""
    assert "Traceback" not in stderr, stderr
    lines = [line for line in stderr.splitlines() if "rror" in line]
    assert len(lines) == 1 and lines[0].startswith("error: "), stderr
    return lines[0]


def current_rows(directory: Path, type_name: str) -> list[dict[str, Any]]:
    from exporter.backup.compact import read_current  # the set `_current/_current.json` names

    assert resource_type(type_name).collection  # a type the backup knows
    _generation, tables = read_current(directory)
    return sorted(tables[type_name].to_pylist(), key=lambda r: r["id"])


def inverse_lists(type_name: str) -> list[str]:
    layout = table_layout(type_name)
    return [c.column for c in layout.to_many]


def assert_compacted_equals_truth(running: Running, out: Path) -> None:
    sim = running.sim
    compact(out)
    steps = list(sim.truth.records("sequenceStep"))
    got_steps = current_rows(out, "sequenceStep")
    want_steps = [expected_row(r, STEP_RELATIONSHIP_COLUMNS) for r in steps]
    assert [r["id"] for r in got_steps] == [r["id"] for r in want_steps]
    for got, want in zip(got_steps, want_steps, strict=True):
        for column, _target, _back in inverse_columns("sequenceStep"):
            want[column] = sorted(want[column] or [])  # derived by compaction, ids ascending
        assert {k: got[k] for k in want} == want, want["id"]
    for target, wanted in expected_related(sim, steps).items():
        rows = {r["id"]: r for r in current_rows(out, target)}
        # every record the current steps need is there, in its current version ...
        for want in wanted:
            assert want["id"] in rows, (target, want["id"])
        # ... and nothing in the backup is stale or gone
        for record_id, got in rows.items():
            truth = sim.truth.get(target, record_id)
            assert truth is not None, (target, record_id, "deleted but not tombstoned")
            want = expected_row(truth, rel_columns(target))
            # Inverse lists (a sequence's sequenceStepIds) change when a member comes or goes
            # without the record's updatedAt moving: an incremental run cannot see that, so
            # compaction derives them from the members' own to-one column (ids ascending).
            for column, _target, _back in inverse_columns(target):
                want[column] = sorted(want[column] or [])
            # Other inverse lists stay as of the record's last fetch (README, "Incremental runs").
            for column in set(inverse_lists(target)) - {c for c, _t, _b in inverse_columns(target)}:
                del want[column]
            assert {k: got[k] for k in want} == want, (target, record_id)


def assert_no_version_twice(out: Path) -> None:
    manifest = orjson.loads((out / "_manifest.json").read_bytes())
    for type_name in {f["type"] for f in manifest["files"]} - {"_tombstone"}:
        pairs: Counter[tuple[int, Any]] = Counter()
        for entry in manifest["files"]:
            if entry["type"] == type_name:
                table = pq.read_table(out / entry["path"], columns=["id", "updatedAt"])
                pairs.update(
                    zip(
                        table.column("id").to_pylist(),
                        table.column("updatedAt").to_pylist(),
                        strict=True,
                    )
                )
        twice = [p for p, n in pairs.items() if n > 1]
        assert not twice, (type_name, twice[:5])


def assert_consistent(out: Path) -> None:
    """The manifest matches the files, no version is written twice, nothing is left over."""
    assert_manifest_matches_files(out)  # _current/ (compact's output) is not the backup's
    assert_no_version_twice(out)
    report = verify(out)
    assert report.exit_code == ExitCode.OK, [d.line() for d in report.differences]
    leftovers = [
        p for p in out.rglob("*") if p.name.startswith(".") or p.name.endswith(".inprogress")
    ]
    assert not leftovers, leftovers


def current(out: Path, type_name: str) -> dict[int, dict[str, Any]]:
    """The published current state of `type_name` (the set `_current/_current.json` names)."""
    _generation, tables = read_current(out)
    table = tables.get(type_name)
    return {} if table is None else {r["id"]: r for r in table.to_pylist()}


def assert_current_state_is_the_truth(
    running: Running, out: Path, held: dict[str, set[int]]
) -> None:
    """Compact, then: every record the backup holds or the live steps reach is there, every
    field (relationship ids included) as the API serves it now; every deleted one is gone."""
    sim = running.sim
    compact(out)
    steps = list(sim.truth.records("sequenceStep"))
    reached = {t: {r["id"] for r in rows} for t, rows in expected_related(sim, steps).items()}
    reached["sequenceStep"] = {int(s["id"]) for s in steps}
    for type_name in RESOURCE_TYPES:
        rows = current(out, type_name)
        held[type_name] |= set(rows)
        deleted = sim.truth.deleted_ids(type_name)
        gone = deleted & set(rows)
        assert not gone, f"{type_name}: deleted by the API but current: {sorted(gone)[:10]}"
        missing = reached.get(type_name, set()) - set(rows)
        assert not missing, (
            f"{type_name}: reached by a live step but absent: {sorted(missing)[:10]}"
        )
        lost = (held[type_name] - deleted) - set(rows)
        assert not lost, f"{type_name}: held once, still live, but absent: {sorted(lost)[:10]}"
        for record_id, got in rows.items():
            truth = sim.truth.get(type_name, record_id)
            assert truth is not None
            want = expected_row(truth, rel_columns(type_name))
            for column, _target, _back in inverse_columns(type_name):
                # Derived by compaction from the members' to-one column, ids ascending.
                want[column] = sorted(want[column] or [])
            differing = sorted(k for k in want if got[k] != want[k])
            assert not differing, (
                f"{type_name} {record_id}: {[(k, got[k], want[k]) for k in differing][:3]}"
            )
            assert got["_extra"] is None


def assert_exact_for_seed(out: Path, steps: int, seed: int) -> None:
    assert_rows_equal(read_rows(out / "sequenceSteps"), expected_steps_for_seed(steps, seed))
    assert_manifest_matches_files(out)


def load_manifest(out: Path) -> dict[str, Any]:
    document: dict[str, Any] = orjson.loads((out / "_manifest.json").read_bytes())
    return document


def assert_refused(code: int, stderr: str, *words: str) -> None:
    assert code == ExitCode.USAGE, (code, stderr)
    assert "Traceback" not in stderr
    lines = stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), stderr
    for word in words:
        assert word in lines[0], (word, lines[0])
