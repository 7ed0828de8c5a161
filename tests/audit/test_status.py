"""`exporter status`: finished, killed (SIGKILL mid-run) and empty directories, nightly backups of full and incremental runs, high-water marks, next action."""

from __future__ import annotations

import asyncio
import random
import shutil
import sys
from collections import Counter
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import orjson
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner

from exporter import __version__
from exporter.audit.status import updated_high_water
from exporter.commands.main import main
from exporter.core.errors import ExitCode, UsageError
from exporter.export.run import ExportResult
from exporter.model.schema import RESOURCE_TYPES, resource_type
from exporter.simulator import Faults
from tests.helpers.commands import status_json, status_text
from tests.helpers.runs import (
    export_args,
    export_deleting_a_sequence_midway,
    kill_export_when,
    run_export,
)
from tests.helpers.sim import TOKEN, Running, StartSimulator, clean_env, mutate


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
    assert f"run {manifest['run_id']}: full, complete, recorded in manifest" in lines
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
    await kill_export_when(
        export_args(base_url, out),
        out,
        lambda state: len(state["resources"]["sequenceStep"]["files"]) >= 2,
    )


@pytest.mark.slow
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
        "mark": None,
        "since": None,
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
    env = clean_env()
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


# -- a nightly backup: a full run, then incremental runs with --detect-deletes ----------------

COLLECTIONS = {resource_type(t).collection: t for t in RESOURCE_TYPES} | {
    "tombstones": "_tombstone"
}
OVERLAPS = (300.0, 60.0)  # the incremental runs' --overlap (the default, then another)


def stamp(text: str) -> datetime:
    value = parse(text)
    assert value is not None
    return value


async def nightly_backup(
    running: Running, out: Path, overlaps: tuple[float, ...], seed: int
) -> list[ExportResult]:
    """A full run, then one incremental run with --detect-deletes per overlap, each after the
    simulator changed (records inserted, updated and deleted)."""
    rng = random.Random(seed)
    _job, full = await run_export(running.base_url, out, relationships="all")
    results = [full]
    for overlap in overlaps:
        mutate(running, rng, 60)
        _job, delta = await run_export(
            running.base_url,
            out,
            relationships="all",
            incremental=True,
            detect_deletes=True,
            overlap=overlap,
        )
        results.append(delta)
    return results


def part_files(out: Path) -> dict[str, list[tuple[str, str]]]:
    """Per run id, the (type, path) of every part file on disk: the run named by the file's name
    (`part-<run>-<n>.parquet`), which must agree with its directory (`run=<id>/` for an
    incremental run's files and every tombstone file, the type's directory for a full run's)."""
    found: dict[str, list[tuple[str, str]]] = {}
    for path in sorted(out.rglob("part-*.parquet")):
        parts = path.relative_to(out).parts
        if parts[0] not in COLLECTIONS:
            continue  # _current/ and the like are not the backup's
        run_id = path.name.removeprefix("part-").rsplit("-", 1)[0]
        if len(parts) == 3:
            assert parts[1] == f"run={run_id}", path
        else:
            assert len(parts) == 2 and parts[0] != "tombstones", path
        found.setdefault(run_id, []).append((COLLECTIONS[parts[0]], "/".join(parts)))
    return found


def written(out: Path, files: list[tuple[str, str]]) -> dict[str, tuple[int, int, int]]:
    """Per type: (rows, files, tombstones) of these files, read from the Parquet files themselves
    (tombstones counted by their `type` column)."""
    rows: Counter[str] = Counter()
    count: Counter[str] = Counter()
    stones: Counter[str] = Counter()
    for type_name, path in files:
        rows[type_name] += pq.read_metadata(out / path).num_rows
        count[type_name] += 1
        if type_name == "_tombstone":
            stones.update(pq.read_table(out / path, columns=["type"]).column(0).to_pylist())
    types = set(rows) | set(stones)
    return {t: (rows[t], count[t], stones[t]) for t in types}


def reported(resources: list[dict[str, Any]]) -> dict[str, tuple[int, int, int]]:
    """Status's (rows, files, tombstones) per type, leaving out types with none of them."""
    return {
        r["type_name"]: (r["rows"], r["files"], r["tombstones"])
        for r in resources
        if r["rows"] or r["files"] or r["tombstones"]
    }


def totals_on_disk(out: Path, files: list[tuple[str, str]]) -> dict[str, dict[str, Any]]:
    """Per type over the whole backup: rows, files, tombstones and the newest `updatedAt`
    (reading every file's whole column, not its footer)."""
    each = written(out, files)
    return {
        t: {
            "rows": rows,
            "files": count,
            "tombstones": stones,
            "updated_at_max": None
            if t == "_tombstone"
            else newest_updated_at(out, [p for k, p in files if k == t]),
        }
        for t, (rows, count, stones) in each.items()
    }


def reported_totals(report: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {
        t["type_name"]: {
            "rows": t["rows"],
            "files": t["files"],
            "tombstones": t["tombstones"],
            "updated_at_max": parse(t["updated_at_max"]),
        }
        for t in report["totals"]
    }


@pytest.mark.slow
async def test_every_run_of_a_nightly_backup(
    start_simulator: StartSimulator, tmp_path: Path
) -> None:
    running = await start_simulator(steps=800, seed=61)
    results = await nightly_backup(running, tmp_path, OVERLAPS, seed=61)
    on_disk = part_files(tmp_path)
    report = status_json(tmp_path)

    assert report["state"] == "complete"
    runs = report["runs"]
    assert [r["run_id"] for r in runs] == [r.state.run_id for r in results]
    assert [r["kind"] for r in runs] == ["full", "incremental", "incremental"]
    assert [(r["status"], r["recorded_in"]) for r in runs] == [("complete", "manifest")] * 3
    assert set(on_disk) == {r.state.run_id for r in results}
    for run, result in zip(runs, results, strict=True):
        # What each run wrote, per type: rows, files and ids found gone, as its files hold them.
        assert reported(run["resources"]) == written(tmp_path, on_disk[run["run_id"]])
        assert (run["started_at"], run["finished_at"]) == (
            result.state.started_at,
            result.state.finished_at,
        )
        assert run["window_end"] == result.state.window_end is not None
    assert sum(r["tombstones"] for run in runs[1:] for r in run["resources"]) > 0
    assert all(r["tombstones"] == 0 for r in runs[0]["resources"])  # a full run finds none gone

    # The windows chain: each incremental run starts at the previous run's mark less its overlap.
    assert runs[0]["window_start"] is None and runs[0]["overlap_seconds"] is None
    for previous, run, overlap in zip(runs[:-1], runs[1:], OVERLAPS, strict=True):
        assert stamp(run["window_start"]) == stamp(previous["window_end"]) - timedelta(
            seconds=overlap
        )
        assert run["overlap_seconds"] == overlap
    # Every run keeps the parameters it ran with, and the exporter version that started it.
    assert runs[-1]["parameters"]["overlap"] == OVERLAPS[-1]
    assert [r["parameters"]["incremental"] for r in runs] == [False] + [True] * len(OVERLAPS)
    assert [r["parameters"]["overlap"] for r in runs[1:]] == list(OVERLAPS)
    assert {r["tool_version"] for r in runs} == {__version__}

    # The backup's totals: every run's files.
    everything = [f for files in on_disk.values() for f in files]
    assert reported_totals(report) == totals_on_disk(tmp_path, everything)

    # The next export: a full one is refused; --incremental starts at the last mark less 300 s.
    mark = results[-1].state.window_end
    assert mark is not None
    since = (stamp(mark) - timedelta(seconds=300)).isoformat(timespec="milliseconds")
    since = since.replace("+00:00", "Z")
    next_export = report["next_export"]
    assert (next_export["action"], next_export["run_id"]) == ("refuse", runs[-1]["run_id"])
    assert (next_export["mark"], next_export["since"]) == (mark, since)
    assert f"--incremental would fetch what changed since {mark}" in next_export["message"]
    assert f"less --overlap (default 300 s: since {since}" in next_export["message"]
    # ... and says what the last run's own overlap would give.
    used = (stamp(mark) - timedelta(seconds=OVERLAPS[-1])).isoformat(timespec="milliseconds")
    assert f"the last run used 60 s: since {used.replace('+00:00', 'Z')}" in next_export["message"]

    lines = status_text(tmp_path)
    assert lines[0] == f"{tmp_path}: complete"
    headers = [line for line in lines if line.startswith("run ")]
    assert headers == [
        f"run {r['run_id']}: {r['kind']}, complete, recorded in manifest" for r in runs
    ]
    windows = [line.strip() for line in lines if line.startswith("  window ")]
    assert windows[0] == f"window     every record; mark {runs[0]['window_end']}"
    assert windows[2] == (
        f"window     updatedAt from {runs[2]['window_start']} (the previous mark less 60 s) "
        f"to mark {runs[2]['window_end']}"
    )
    assert lines[-1] == f"next export would: {next_export['message']}"
    backup = lines.index("backup: 3 runs (1 full, 2 incremental); totals over every committed file")
    table = {line.split()[0]: line.split() for line in lines[backup + 2 : backup + 11]}
    assert table["sequenceStep"][1:3] == [
        f"{report['totals'][0]['rows']:,}",
        f"{report['totals'][0]['files']:,}",
    ]
    stones = sum(t["tombstones"] for t in report["totals"])
    assert lines[backup + 11].endswith(f"; {stones:,} tombstones in 2 files")


def incremental_command(running: Running, out: Path) -> list[str]:
    """A nightly run as cron starts it, slowed down (small pages, one request at a time)."""
    return [
        *(sys.executable, "-m", "exporter", "export", "--base-url", running.base_url),
        *("--token", TOKEN, "--out", str(out), "--incremental", "--detect-deletes"),
        *("--relationships", "all", "--page-size", "20", "--concurrency", "1"),
        *("--file-rows", "40", "--commit-interval", "0.1", "--rate-limit", "100000/1"),
    ]


@pytest.mark.slow
async def test_a_killed_incremental_run_beside_the_finished_ones(
    start_simulator: StartSimulator, tmp_path: Path
) -> None:
    running = await start_simulator(steps=800, seed=62)
    results = await nightly_backup(running, tmp_path, OVERLAPS[:1], seed=62)
    before = status_json(tmp_path)
    finished_ids = [r.state.run_id for r in results]
    assert [r["run_id"] for r in before["runs"]] == finished_ids

    # Enough changes that the next run has pages to fetch, fetched slowly: SIGKILL it mid-crawl.
    for record_id in running.sim.truth.ids("sequenceStep")[:400]:
        running.sim.store.update("sequenceStep", record_id)
    running.sim.faults.latency_s = 0.05
    state = await kill_export_when(
        incremental_command(running, tmp_path),
        tmp_path,
        lambda s: (
            s["run_id"] not in finished_ids and len(s["resources"]["sequenceStep"]["files"]) >= 2
        ),
    )
    running.sim.faults.latency_s = 0.0
    killed = state["run_id"]
    # An upload that completed but was never committed, in the killed run's directory.
    first = state["resources"]["sequenceStep"]["files"][0]["path"]
    stray = tmp_path / "sequenceSteps" / f"run={killed}" / f"part-{killed}-99999.parquet"
    shutil.copyfile(tmp_path / first, stray)
    report = status_json(tmp_path)

    assert report["state"] == "unfinished"
    runs = report["runs"]
    assert [r["run_id"] for r in runs] == [*finished_ids, killed]
    # The finished runs, as they were before it started (but for the partition progress the
    # checkpoint gives of its own run only, the newest finished one before the kill).
    assert [without_progress(r) for r in runs[:-1]] == [without_progress(r) for r in before["runs"]]
    run = runs[-1]
    assert (run["kind"], run["status"], run["recorded_in"]) == (
        "incremental",
        "unfinished",
        "checkpoint",
    )
    assert run["finished_at"] is None and run["phase"] == state["phase"]
    # Its window starts where status said the next incremental run would.
    assert run["window_start"] == before["next_export"]["since"] is not None
    assert stamp(run["window_start"]) == stamp(runs[-2]["window_end"]) - timedelta(seconds=300)
    # What it committed so far (the checkpoint's files), not what it left on disk uncommitted.
    committed = [(f["type"], f["path"]) for r in state["resources"].values() for f in r["files"]]
    assert reported(run["resources"]) == written(tmp_path, committed)
    steps = resources_by_type(run)["sequenceStep"]
    assert steps["files"] >= 2 and steps["rows"] < 400
    assert steps["partitions_finished"] < steps["partitions_total"]
    on_disk = part_files(tmp_path)
    for run_id in finished_ids:
        assert reported(resources_by_type_list(runs, run_id)) == written(tmp_path, on_disk[run_id])
    named = {p for _t, p in committed} | {f["path"] for r in state["history"] for f in r["files"]}
    left = {p for files in on_disk.values() for _t, p in files} - named
    temporary = {
        "/".join(p.relative_to(tmp_path).parts)
        for p in tmp_path.rglob(".part-*")
        if p.relative_to(tmp_path).parts[0] in COLLECTIONS
    }
    assert set(run["uncommitted_files"]) == left | temporary
    assert "/".join(stray.relative_to(tmp_path).parts) in left
    # The backup's totals: the finished runs' files and the killed run's committed ones.
    kept = [f for run_id in finished_ids for f in on_disk[run_id]] + committed
    assert reported_totals(report) == totals_on_disk(tmp_path, kept)
    next_export = report["next_export"]
    assert (next_export["action"], next_export["run_id"]) == ("resume", killed)
    assert next_export["message"].startswith(
        f"resume run {killed} (incremental, changes since {run['window_start']}) "
        f"from {running.base_url} with --relationships all --detect-deletes"
    )
    lines = status_text(tmp_path)
    assert lines[0] == f"{tmp_path}: unfinished"
    header = (
        f"run {killed}: incremental, unfinished (phase {state['phase']}), recorded in checkpoint"
    )
    assert header in lines
    # Its block's step line, with the progress of its partitions.
    step_line = next(x for x in lines[lines.index(header) :] if x.startswith("  sequenceStep "))
    partitions = f"partitions {steps['partitions_finished']}/{steps['partitions_total']} finished"
    assert partitions in step_line

    # Resumed to the end, it is the third finished run (not a fourth).
    _job, resumed = await run_export(
        running.base_url, tmp_path, relationships="all", incremental=True, detect_deletes=True
    )
    assert resumed.state.run_id == killed and resumed.resumed
    after = status_json(tmp_path)
    assert [(r["run_id"], r["status"]) for r in after["runs"]] == [
        (run_id, "complete") for run_id in [*finished_ids, killed]
    ]
    final = part_files(tmp_path)
    assert reported(after["runs"][-1]["resources"]) == written(tmp_path, final[killed])
    assert after["next_export"]["mark"] == resumed.state.window_end


def resources_by_type_list(runs: list[dict[str, Any]], run_id: str) -> list[dict[str, Any]]:
    [run] = [r for r in runs if r["run_id"] == run_id]
    resources: list[dict[str, Any]] = run["resources"]
    return resources


PROGRESS = ("partitions_total", "partitions_finished", "id_range_committed")


def without_progress(run: dict[str, Any]) -> dict[str, Any]:
    resources = [{k: v for k, v in r.items() if k not in PROGRESS} for r in run["resources"]]
    return {**run, "resources": resources}


@pytest.mark.slow
async def test_when_the_checkpoint_and_the_manifest_disagree(
    start_simulator: StartSimulator, tmp_path: Path
) -> None:
    """What export does decides what status predicts: a backup without its checkpoint is
    refused (nothing deleted); a run killed between writing its manifest and its checkpoint is
    resumed (and only marked finished)."""
    running = await start_simulator(steps=300, seed=63)
    backup = tmp_path / "backup"
    results = await nightly_backup(running, backup, (300.0,), seed=63)
    ids = [r.state.run_id for r in results]

    no_checkpoint = tmp_path / "no-checkpoint"
    shutil.copytree(backup, no_checkpoint)
    (no_checkpoint / "_checkpoint.json").unlink()
    parts = sorted(no_checkpoint.rglob("part-*.parquet"))
    report = status_json(no_checkpoint)
    assert [(r["run_id"], r["recorded_in"]) for r in report["runs"]] == [
        (run_id, "manifest") for run_id in ids
    ]
    assert report["next_export"]["action"] == "refuse"
    assert "_checkpoint.json is missing beside the manifest" in report["next_export"]["message"]
    with pytest.raises(UsageError, match=r"its _checkpoint\.json is missing"):
        await run_export(running.base_url, no_checkpoint, incremental=True)
    assert all(p.exists() for p in parts)  # nothing was deleted
    assert status_json(no_checkpoint) == report  # nor changed
    _job, fresh = await run_export(running.base_url, no_checkpoint, restart=True)
    assert fresh.state.kind == "full" and not any(p.exists() for p in parts)

    half_written = tmp_path / "half-written"
    shutil.copytree(backup, half_written)
    state = orjson.loads((half_written / "_checkpoint.json").read_bytes())
    state.update(status="running", finished_at=None)
    (half_written / "_checkpoint.json").write_bytes(orjson.dumps(state))
    report = status_json(half_written)
    assert report["state"] == "complete"
    assert [r["status"] for r in report["runs"]] == ["complete", "complete"]
    assert (report["next_export"]["action"], report["next_export"]["run_id"]) == ("resume", ids[-1])
    assert "only marks the run finished" in report["next_export"]["message"]
    _job, again = await run_export(
        running.base_url, half_written, relationships="all", incremental=True, detect_deletes=True
    )
    assert again.resumed and again.state.run_id == ids[-1]
    assert [r["run_id"] for r in status_json(half_written)["runs"]] == ids


@pytest.mark.slow
async def test_runs_limits_the_listed_runs_not_the_totals(
    start_simulator: StartSimulator, tmp_path: Path
) -> None:
    """A year of nightly runs would print thousands of lines: by default the newest 10 are
    listed, --runs N|all says how many; the totals always cover every run."""
    running = await start_simulator(steps=300, seed=64)
    await nightly_backup(running, tmp_path, (300.0, 300.0), seed=64)  # 3 runs
    every = status_json(tmp_path)
    assert len(every["runs"]) == 3 and every["earlier_runs"] == 0

    def invoke(*args: str) -> Any:
        return CliRunner().invoke(main, ["status", str(tmp_path), *args])

    newest = orjson.loads(invoke("--runs", "1", "--json").stdout)
    assert [r["run_id"] for r in newest["runs"]] == [every["runs"][-1]["run_id"]]
    assert newest["earlier_runs"] == 2 and newest["earlier_kinds"] == {
        "full": 1,
        "incremental": 1,
    }
    assert newest["totals"] == every["totals"] and newest["next_export"] == every["next_export"]
    text = invoke("--runs", "2").stdout.splitlines()
    assert "(1 earlier run(s) not shown: --runs all lists them)" in text
    assert sum(line.startswith("run ") for line in text) == 2
    assert any(line.startswith("backup: 3 runs (1 full, 2 incremental)") for line in text)
    assert orjson.loads(invoke("--runs", "all", "--json").stdout) == every
    refused = invoke("--runs", "0")
    assert refused.exit_code == 2 and "--runs '0'" in refused.output
