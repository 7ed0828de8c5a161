"""`verify` and `status` over a backup of all 47 readable types: every type checked and listed, a flipped byte in a prospects file caught, a type this version does not know a difference."""

from __future__ import annotations

from pathlib import Path

import orjson
import pyarrow.parquet as pq
import pytest

from exporter.audit.status import status
from exporter.audit.status_text import render as render_status
from exporter.audit.verify import render as render_verify
from exporter.audit.verify import verify
from exporter.backup import manifest
from exporter.model.normalize import arrow_schema
from exporter.model.schema import readable_types, resource_type
from exporter.simulator import Simulator, SimulatorConfig
from tests.helpers.backups import BackupWriter, snapshot

pytestmark = pytest.mark.slow  # a backup of 47 types is built once (~4 s)


@pytest.fixture(scope="module")
def backup(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Simulator]:
    out = tmp_path_factory.mktemp("all")
    sim = Simulator(SimulatorConfig(steps=60, prospects=100, seed=21))
    writer = BackupWriter(out)
    writer.run(sim, "full")
    before = snapshot(sim)
    sim.mutate(200)
    writer.run(sim, "incremental", since=before)
    return out, sim


def test_verify_checks_every_type(backup: tuple[Path, Simulator]) -> None:
    out, _sim = backup
    report = verify(out)
    assert report.ok, render_verify(report)
    assert {f.type_name for f in report.files} >= set(readable_types())
    document = manifest.load(out)
    for entry in document["files"]:  # each file checked against its type's own schema
        if entry["type"] in readable_types():
            assert entry["schema"] == manifest.schema_fields(arrow_schema(entry["type"]))
    uuids = [f for f in document["files"] if f["type"] == "auditLog"]
    assert uuids and all(isinstance(f["min_id"], str) for f in uuids)
    assert all(f["min_id"] <= f["max_id"] for f in uuids)


def test_verify_catches_a_flipped_byte_in_a_prospects_file(
    backup: tuple[Path, Simulator], tmp_path: Path
) -> None:
    out, _sim = backup
    copy = tmp_path / "copy"
    copy.mkdir()
    for path in out.rglob("*"):
        if path.is_file() and not path.name.startswith("_lock"):
            target = copy / path.relative_to(out)
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(path.read_bytes())
    victim = sorted((copy / "prospects").glob("part-*.parquet"))[0]
    data = bytearray(victim.read_bytes())
    data[len(data) // 2] ^= 0x01
    victim.write_bytes(bytes(data))
    report = verify(copy)
    assert not report.ok
    relative = victim.relative_to(copy).as_posix()
    assert [d.what for d in report.differences if d.subject == relative] == ["sha256"]
    assert all(d.subject == relative for d in report.differences)


def test_a_type_this_version_does_not_know_is_a_difference(
    backup: tuple[Path, Simulator], tmp_path: Path
) -> None:
    out, _sim = backup
    document = orjson.loads((out / manifest.MANIFEST_NAME).read_bytes())
    entry = next(f for f in document["files"] if f["type"] == "stage")
    document["files"] = [
        {**entry, "type": "hologram"} if f is entry else f for f in document["files"]
    ]
    del document["manifest_sha256"]
    document["manifest_sha256"] = manifest.canonical_digest(document)
    folder = tmp_path / "newer"
    folder.mkdir()
    for path in out.rglob("*"):
        if path.is_file() and path.name not in ("_checkpoint.json",) and "_lock" not in path.name:
            target = folder / path.relative_to(out)
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(path.read_bytes())
    (folder / manifest.MANIFEST_NAME).write_bytes(orjson.dumps(document))
    report = verify(folder)
    assert not report.ok
    lines = render_verify(report)
    assert any("'hologram' is not one this exporter knows" in line for line in lines)
    assert status(folder).runs  # status reads it too, without a traceback


def test_status_lists_every_type_with_its_high_water_mark(
    backup: tuple[Path, Simulator],
) -> None:
    out, sim = backup
    report = status(out)
    totals = {t.type_name: t for t in report.totals}
    assert list(totals)[: len(readable_types())] == list(readable_types())
    for type_name in readable_types():
        total = totals[type_name]
        files = [f for f in manifest.load(out)["files"] if f["type"] == type_name]
        assert total.rows == sum(pq.read_metadata(out / f["path"]).num_rows for f in files)
        column = total.high_water_column
        if column is None:
            assert total.updated_at_max is None
            continue
        newest = max(
            (
                v
                for f in files
                for v in pq.read_table(out / f["path"], columns=[column]).column(column).to_pylist()
                if v is not None
            ),
            default=None,
        )
        assert total.updated_at_max is not None and newest is not None
        assert total.updated_at_max.startswith(newest.strftime("%Y-%m-%dT%H:%M:%S"))
    assert totals["auditLog"].high_water_column == "timestamp"
    assert totals["event"].high_water_column == "createdAt"
    assert totals["prospect"].high_water_column == "updatedAt"
    text = "\n".join(render_status(report))
    for type_name in readable_types():
        assert f"\n  {type_name} " in text
    assert "(timestamp)" in text
    assert resource_type("auditLog").append_only and sim.truth.count("auditLog")
