"""`exporter status`: finished, killed (SIGKILL mid-run) and empty directories, high-water marks, next action."""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from click.testing import CliRunner

from exporter.cli import main
from exporter.errors import ExitCode
from exporter.simulator import Faults
from exporter.status import updated_high_water
from tests.conftest import TOKEN, StartSimulator
from tests.test_export import run_export
from tests.test_relationships import export_deleting_a_sequence_midway


def status_json(out: Path) -> dict[str, Any]:
    result = CliRunner().invoke(main, ["status", str(out), "--json"])
    assert result.exit_code == 0, (result.output, result.exception)
    report: dict[str, Any] = orjson.loads(result.stdout)
    return report


def status_text(out: Path) -> list[str]:
    result = CliRunner().invoke(main, ["status", str(out)])
    assert result.exit_code == 0, (result.output, result.exception)
    return result.stdout.splitlines()


def newest_updated_at(out: Path, paths: list[str]) -> datetime | None:
    """Independent of the footer statistics: read the whole column of every file."""
    values = [
        pc.max(pq.read_table(out / p, columns=["updatedAt"]).column(0)).as_py() for p in paths
    ]
    present = [v for v in values if v is not None]
    return max(present) if present else None


def parse(stamp: str | None) -> datetime | None:
    return None if stamp is None else datetime.fromisoformat(stamp.replace("Z", "+00:00"))


def resources_by_type(run: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {r["type_name"]: r for r in run["resources"]}


async def test_finished_run(start_simulator: StartSimulator, tmp_path: Path) -> None:
    running = await start_simulator(steps=600, seed=4)
    await run_export(running.base_url, tmp_path, relationships="sequence,creator", file_rows=250)
    manifest = orjson.loads((tmp_path / "_manifest.json").read_bytes())
    report = status_json(tmp_path)
    assert report["state"] == "complete"
    [run] = report["runs"]
    assert run["run_id"] == manifest["run_id"] and run["status"] == "complete"
    assert (run["started_at"], run["finished_at"]) == (
        manifest["started_at"],
        manifest["finished_at"],
    )
    assert run["source"] == running.base_url and run["parameters"] == manifest["parameters"]
    resources = resources_by_type(run)
    assert set(resources) == set(manifest["resources"]) == {"sequenceStep", "sequence", "user"}
    for type_name, resource in manifest["resources"].items():
        mine = [f["path"] for f in manifest["files"] if f["type"] == type_name]
        assert resources[type_name]["rows"] == resource["rows"]
        assert resources[type_name]["files"] == resource["files"] == len(mine)
        newest = newest_updated_at(tmp_path, mine)
        assert newest is not None
        assert parse(resources[type_name]["updated_at_max"]) == newest
    assert (
        resources["sequenceStep"]["partitions_finished"]
        == resources["sequenceStep"]["partitions_total"]
    )
    assert resources["sequence"]["positions_through"] is not None
    assert report["next_export"]["action"] == "refuse"
    assert report["next_export"]["run_id"] == manifest["run_id"]

    lines = status_text(tmp_path)
    assert lines[0].endswith(": complete")
    assert any(line.startswith(f"run {manifest['run_id']}: complete") for line in lines)
    assert lines[-1].startswith("next export would: refuse") and "--restart" in lines[-1]


async def test_missing_references_are_counted(
    start_simulator: StartSimulator, tmp_path: Path
) -> None:
    """A sequence deleted while the export runs (as in test_relationships): counted in status."""
    running = await start_simulator(steps=1000, seed=12)
    await export_deleting_a_sequence_midway(running, tmp_path)
    manifest = orjson.loads((tmp_path / "_manifest.json").read_bytes())
    expected = manifest["resources"]["sequence"]["detail"]["missing"]["count"]
    assert expected == 1
    report = status_json(tmp_path)
    assert resources_by_type(report["runs"][0])["sequence"]["missing_references"] == expected
    assert any(
        line.startswith("  missing references") and f"sequence {expected}" in line
        for line in status_text(tmp_path)
    )


def test_empty_and_absent_directories(tmp_path: Path) -> None:
    for directory in (tmp_path, tmp_path / "not-yet"):
        report = status_json(directory)
        assert report["state"] == "none" and report["runs"] == []
        assert report["next_export"]["action"] == "start"
        assert status_text(directory)[-1] == "next export would: start a new run"
    a_file = tmp_path / "file"
    a_file.write_text("x")
    result = CliRunner().invoke(main, ["status", str(a_file)])
    assert result.exit_code == ExitCode.USAGE
    [line] = result.stderr.splitlines()
    assert line.startswith("error: ") and "not a directory" in line


def test_high_water_without_statistics_reads_the_column(tmp_path: Path) -> None:
    stamps = [datetime(2024, 1, d, 12, tzinfo=UTC) for d in (3, 17, 9)]
    table = pa.table({"id": [1, 2, 3], "updatedAt": pa.array(stamps, pa.timestamp("us", "UTC"))})
    with_stats = tmp_path / "a.parquet"
    without = tmp_path / "b.parquet"
    pq.write_table(table, with_stats, row_group_size=2)
    pq.write_table(table, without, write_statistics=False, row_group_size=2)
    assert not pq.read_metadata(without).row_group(0).column(1).is_stats_set
    assert updated_high_water(with_stats) == max(stamps)
    assert updated_high_water(without) == max(stamps)
    nulls = tmp_path / "c.parquet"
    pq.write_table(
        pa.table({"id": [1], "updatedAt": pa.array([None], pa.timestamp("us", "UTC"))}), nulls
    )
    assert updated_high_water(nulls) is None
    no_column = tmp_path / "d.parquet"
    pq.write_table(pa.table({"id": [1]}), no_column)
    assert updated_high_water(no_column) is None


async def kill_export_mid_run(base_url: str, out: Path) -> None:
    """Start a real `exporter export` subprocess and SIGKILL it once it has committed step files."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("OUTREACH_")}
    process = await asyncio.create_subprocess_exec(
        *export_args(base_url, out),
        env=env,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
    )
    checkpoint_path = out / "_checkpoint.json"
    try:
        for _ in range(1200):
            await asyncio.sleep(0.05)
            assert process.returncode is None, "the export finished before it could be killed"
            try:
                state = orjson.loads(checkpoint_path.read_bytes())
            except (FileNotFoundError, orjson.JSONDecodeError):
                continue
            if len(state["resources"]["sequenceStep"]["files"]) >= 2:
                break
        else:
            raise AssertionError("no commit within 60 s")
    finally:
        if process.returncode is None:
            process.send_signal(signal.SIGKILL)
        await process.wait()
    assert process.returncode == -signal.SIGKILL


def export_args(base_url: str, out: Path) -> list[str]:
    return [
        sys.executable,
        "-m",
        "exporter",
        "export",
        "--base-url",
        base_url,
        "--token",
        TOKEN,
        "--out",
        str(out),
        "--commit-interval",
        "0.2",
        "--file-rows",
        "200",
        "--page-size",
        "50",
        "--concurrency",
        "2",
        "--rate-limit",
        "100000/1",
        "--relationships",
        "sequence,creator,mailings",
    ]


async def test_killed_run_then_resumed(start_simulator: StartSimulator, tmp_path: Path) -> None:
    running = await start_simulator(steps=3000, seed=12, faults=Faults(latency_s=0.08))
    out = tmp_path / "out"
    await kill_export_mid_run(running.base_url, out)
    assert not (out / "_manifest.json").exists()
    state = orjson.loads((out / "_checkpoint.json").read_bytes())
    step_state = state["resources"]["sequenceStep"]
    committed = [f["path"] for f in step_state["files"]]

    report = status_json(out)
    assert report["state"] == "unfinished"
    [run] = report["runs"]
    assert run["run_id"] == state["run_id"] and run["status"] == "unfinished"
    assert run["finished_at"] is None and run["recorded_in"] == "checkpoint"
    steps = resources_by_type(run)["sequenceStep"]
    assert steps["rows"] == sum(pq.read_metadata(out / p).num_rows for p in committed)
    assert steps["files"] == len(committed)
    finished = sum(1 for p in step_state["partitions"] if p[4])
    assert (steps["partitions_finished"], steps["partitions_total"]) == (
        finished,
        len(step_state["partitions"]),
    )
    assert steps["partitions_finished"] < steps["partitions_total"]
    assert 0 < steps["id_range_committed"] < 1
    assert parse(steps["updated_at_max"]) == newest_updated_at(out, committed)
    on_disk = {f"{d.name}/{p.name}" for d in out.iterdir() if d.is_dir() for p in d.iterdir()} - {
        f["path"] for r in state["resources"].values() for f in r["files"]
    }
    assert set(run["uncommitted_files"]) == on_disk
    assert report["next_export"] == {
        "action": "resume",
        "run_id": state["run_id"],
        "message": report["next_export"]["message"],
    }
    lines = status_text(out)
    assert any("partitions" in line and line.lstrip().startswith("sequenceStep") for line in lines)
    assert lines[-1].startswith(f"next export would: resume run {state['run_id']}")

    # verify: an unfinished run whose committed files match exits 1 and says how to finish.
    result = CliRunner().invoke(main, ["verify", str(out)])
    assert result.exit_code == ExitCode.FAILED, result.output
    summary = result.stdout.splitlines()[-1]
    assert summary.startswith(f"unfinished run {state['run_id']}: ")
    assert "run export again to finish" in summary
    # ...and a committed file changed since is still a mismatch.
    tampered = tmp_path / "tampered"
    shutil.copytree(out, tampered)
    target = tampered / committed[0]
    data = bytearray(target.read_bytes())
    data[len(data) // 2] ^= 0x01
    target.write_bytes(bytes(data))
    result = CliRunner().invoke(main, ["verify", str(tampered), "--json"])
    assert result.exit_code == ExitCode.VERIFY_MISMATCH
    [difference] = orjson.loads(result.stdout)["differences"]
    assert (difference["subject"], difference["what"]) == (committed[0], "sha256")

    # Resume to the end: now the directory is a finished run and the next export would refuse.
    env = {k: v for k, v in os.environ.items() if not k.startswith("OUTREACH_")}
    process = await asyncio.create_subprocess_exec(
        *export_args(running.base_url, out), env=env, stdout=asyncio.subprocess.PIPE
    )
    stdout, _ = await asyncio.wait_for(process.communicate(), timeout=120)
    assert process.returncode == 0, stdout
    report = status_json(out)
    assert report["state"] == "complete" and report["runs"][0]["run_id"] == state["run_id"]
    assert report["next_export"]["action"] == "refuse"
    assert resources_by_type(report["runs"][0])["sequenceStep"]["rows"] == 3000
    assert CliRunner().invoke(main, ["verify", str(out)]).exit_code == 0
