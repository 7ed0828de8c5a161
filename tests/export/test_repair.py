"""Damaged committed files (cut short, a flipped bit, deleted) and a lost checkpoint: named in one line, and mended by `--repair` to equal an undamaged run."""

from __future__ import annotations

import asyncio
import random
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import orjson
import pytest

from exporter.api.auth import StaticToken
from exporter.backup.damage import DamagedFileError
from exporter.core.errors import ExitCode, Interrupted, UsageError
from exporter.core.secrets import Secret
from exporter.export.run import Export, ExportResult
from exporter.simulator import Faults
from tests.helpers.checks import (
    assert_compacted_equals_truth,
    assert_exact,
    assert_no_version_twice,
)
from tests.helpers.runs import command_settings, export_command, run_to_completion
from tests.helpers.sim import TOKEN, Running, StartSimulator, clean_env, mutate, spawn
from tests.helpers.waiting import wait_until

pytestmark = pytest.mark.slow  # exports stopped, damaged and repaired: seconds each

DAMAGE = ("truncate", "flip", "delete")


async def export(
    base_url: str, out: Path, *, repair: bool = False, **overrides: Any
) -> ExportResult:
    job = Export(
        command_settings(base_url, out, **overrides), StaticToken(Secret(TOKEN)), repair=repair
    )
    return await job.run()


async def stopped_run(running: Running, out: Path) -> dict[str, Any]:
    """An export stopped (as by SIGTERM) once several step and related files are committed."""
    # Pages of 5: the walk cuts a batch of users once a page's worth is queued, so user files
    # are committed mid-crawl (with pages of 100, the few users of 1,500 steps waited for the
    # crawl's end, and a stop that came after the run's last check was no stop at all).
    job = Export(command_settings(running.base_url, out, page_size=5), StaticToken(Secret(TOKEN)))
    task = asyncio.create_task(job.run())
    checkpoint = out / "_checkpoint.json"
    latency = running.sim.faults.latency_s

    def enough_committed() -> bool:
        assert not task.done(), "the export finished before it could be stopped"
        if not checkpoint.exists():
            return False
        resources = orjson.loads(checkpoint.read_bytes())["resources"]
        if resources["sequenceStep"]["files"]:
            # From the first committed file on, every answer is slower: the rest of the
            # run cannot finish between two looks.
            running.sim.faults.latency_s = 0.05
        return len(resources["sequenceStep"]["files"]) >= 3 and bool(resources["user"]["files"])

    await wait_until(enough_committed, what="3 step files and a user file committed", timeout=60)
    job.request_stop()
    with pytest.raises(Interrupted, match=r"stopped before the export finished; [\d,]+ "):
        await task
    running.sim.faults.latency_s = latency  # the runs after the stop at the usual pace
    state = orjson.loads(checkpoint.read_bytes())
    assert state["status"] == "running"
    return dict(state)


def damage(path: Path, how: str) -> None:
    data = bytearray(path.read_bytes())
    if how == "truncate":
        path.write_bytes(bytes(data[: len(data) // 2]))
    elif how == "flip":
        middle = len(data) // 2
        data[middle] ^= 0x10
        path.write_bytes(bytes(data))
    else:
        path.unlink()


@pytest.mark.parametrize("how", DAMAGE)
@pytest.mark.parametrize("type_name", ["sequenceStep", "user"])
async def test_resume_names_a_damaged_file_and_repair_makes_it_exact(
    start_simulator: StartSimulator, tmp_path: Path, how: str, type_name: str
) -> None:
    # 30 users (not 8): the walk fills batches of users while the crawl runs, so user files are
    # committed before the stop (with 8, a first batch of 5 waited behind the link-only types,
    # fetched first while their queues are longer, and came at the end of the crawl).
    running = await start_simulator(
        steps=1500, seed=61, faults=Faults(latency_s=0.004), users_per_step=0.02
    )
    state = await stopped_run(running, tmp_path)
    files = state["resources"][type_name]["files"]
    victim = files[len(files) // 2]["path"]
    damage(tmp_path / victim, how)
    before = (tmp_path / "_checkpoint.json").read_bytes()

    if how != "flip":  # a flipped bit may go unnoticed until --repair checks every sha256
        with pytest.raises(DamagedFileError, match=victim.replace(".", r"\.")) as caught:
            await export(running.base_url, tmp_path)
        assert "--repair" in str(caught.value) and "\n" not in str(caught.value)
        assert (tmp_path / "_checkpoint.json").read_bytes() == before  # nothing changed

    result = await export(running.base_url, tmp_path, repair=True)
    assert result.resumed
    assert_exact(running, tmp_path)
    aside = list(tmp_path.rglob(f"{Path(victim).name}.damaged-*"))
    assert len(aside) == (0 if how == "delete" else 1)
    manifest = orjson.loads((tmp_path / "_manifest.json").read_bytes())
    assert victim not in {f["path"] for f in manifest["files"]}
    assert all("repair" not in r.get("detail", {}) for r in manifest["resources"].values())


async def test_incremental_over_a_damaged_history_file_then_repair(
    start_simulator: StartSimulator, tmp_path: Path
) -> None:
    running = await start_simulator(steps=1200, seed=62)
    rng = random.Random(62)
    await export(running.base_url, tmp_path, file_rows=300)
    mutate(running, rng, 40)
    await export(running.base_url, tmp_path, file_rows=300, incremental=True)
    manifest = orjson.loads((tmp_path / "_manifest.json").read_bytes())
    first_run = manifest["runs"][0]["run_id"]
    step_files = [
        f for f in manifest["files"] if f["type"] == "sequenceStep" and f["run_id"] == first_run
    ]
    mailing_files = [f for f in manifest["files"] if f["type"] == "mailing"]
    damage(tmp_path / step_files[1]["path"], "truncate")
    damage(tmp_path / mailing_files[0]["path"], "delete")
    mutate(running, rng, 40)
    with pytest.raises(DamagedFileError, match="--repair"):
        await export(running.base_url, tmp_path, file_rows=300, incremental=True)
    with pytest.raises(UsageError, match="already holds a finished export"):
        await export(running.base_url, tmp_path, file_rows=300, repair=True)
    await export(
        running.base_url,
        tmp_path,
        file_rows=300,
        incremental=True,
        repair=True,
        detect_deletes=True,  # steps deleted since the first run, outside the damaged range
    )
    assert_no_version_twice(tmp_path)
    assert_compacted_equals_truth(running, tmp_path)


@pytest.mark.parametrize("how", ["missing", "garbled"])
async def test_a_finished_backup_without_its_checkpoint_is_rebuilt_from_the_manifest(
    start_simulator: StartSimulator, tmp_path: Path, how: str
) -> None:
    running = await start_simulator(steps=600, seed=63)
    await export(running.base_url, tmp_path)
    checkpoint = tmp_path / "_checkpoint.json"
    if how == "missing":
        checkpoint.unlink()
    else:
        checkpoint.write_bytes(checkpoint.read_bytes()[:100])
    files = {p: p.read_bytes() for p in tmp_path.rglob("*.parquet")}
    mutate(running, random.Random(63), 30)
    with pytest.raises(UsageError) as caught:
        await export(running.base_url, tmp_path, incremental=True)
    message = str(caught.value)
    assert "--restart" not in message and "--incremental --repair" in message
    assert all(p.read_bytes() == c for p, c in files.items())  # nothing changed
    await export(running.base_url, tmp_path, incremental=True, repair=True, detect_deletes=True)
    assert all(p.read_bytes() == c for p, c in files.items())  # the backup is kept
    assert_compacted_equals_truth(running, tmp_path)


def test_cli_names_the_damaged_file_in_one_line(tmp_path: Path) -> None:
    """Through the real command: exit 4, one line, no traceback; --repair then finishes."""
    out = tmp_path / "backup"
    base = [sys.executable, "-m", "exporter", "export", "--demo", "--demo-steps", "900"]
    # Pages of 100, so files roll at 200 rows (one page of 1000 would hold every step).
    common = [*base, "--out", str(out), "--file-rows", "200", "--relationships", "none"]
    common += ["--page-size", "100"]
    first = subprocess.run(common, capture_output=True, text=True, env=clean_env(), timeout=120)
    assert first.returncode == 0, first.stderr
    state = orjson.loads((out / "_checkpoint.json").read_bytes())
    victim = state["resources"]["sequenceStep"]["files"][1]["path"]
    damage(out / victim, "truncate")
    again = subprocess.run(
        [*common, "--incremental"], capture_output=True, text=True, env=clean_env(), timeout=120
    )
    assert again.returncode == ExitCode.OUTPUT, again.stderr
    [line] = again.stderr.strip().splitlines()[-1:]
    assert "Traceback" not in again.stderr and victim in line and "--repair" in line
    fixed = subprocess.run(
        [*common, "--incremental", "--repair"],
        capture_output=True,
        text=True,
        env=clean_env(),
        timeout=120,
    )
    assert fixed.returncode == 0, fixed.stderr


async def test_a_damaged_tombstone_file_is_checked_again_by_detect_deletes(
    start_simulator: StartSimulator, tmp_path: Path
) -> None:
    running = await start_simulator(steps=500, seed=64)
    rng = random.Random(64)
    await export(running.base_url, tmp_path)
    mutate(running, rng, 60)
    await export(running.base_url, tmp_path, incremental=True, detect_deletes=True)
    manifest = orjson.loads((tmp_path / "_manifest.json").read_bytes())
    stones = next(f for f in manifest["files"] if f["type"] == "_tombstone")
    damage(tmp_path / stones["path"], "flip")
    with pytest.raises(UsageError, match="--detect-deletes"):
        await export(running.base_url, tmp_path, incremental=True, repair=True)
    assert (tmp_path / stones["path"]).exists()  # refused before anything was moved
    await export(running.base_url, tmp_path, incremental=True, repair=True, detect_deletes=True)
    assert list(tmp_path.rglob("*.damaged-*"))
    assert_compacted_equals_truth(running, tmp_path)


async def test_a_repair_killed_midway_is_finished_by_the_next_run(
    start_simulator: StartSimulator, tmp_path: Path
) -> None:
    """SIGKILL once the checkpoint records the pending repair; the next run (even without
    --repair) fetches the rest, and the result is exact."""
    running = await start_simulator(steps=1500, seed=65, faults=Faults(latency_s=0.004))
    state = await stopped_run(running, tmp_path)
    for type_name in ("sequenceStep", "user"):
        damage(tmp_path / state["resources"][type_name]["files"][0]["path"], "truncate")
    running.sim.faults.latency_s = 0.05  # slow enough to be killed mid-repair
    process = await spawn(*export_command(running, tmp_path, "--repair"))
    checkpoint = tmp_path / "_checkpoint.json"

    def repairing() -> bool:
        current = orjson.loads(checkpoint.read_bytes())
        return any("repair" in r["detail"] for r in current["resources"].values())

    await wait_until(repairing, what="the repair under way", timeout=60, process=process)
    process.send_signal(signal.SIGKILL)
    await process.communicate()
    assert process.returncode == -signal.SIGKILL  # the kill landed
    killed = orjson.loads(checkpoint.read_bytes())
    assert any("repair" in r["detail"] for r in killed["resources"].values())  # mid-repair
    running.sim.faults.latency_s = 0.0
    code, _codes = await run_to_completion(export_command(running, tmp_path), [])
    assert code == 0
    assert_exact(running, tmp_path)


async def test_a_lost_checkpoint_of_an_unfinished_incremental_run_is_rebuilt_as_of_the_last_finished(
    start_simulator: StartSimulator, tmp_path: Path
) -> None:
    running = await start_simulator(steps=400, seed=66)
    first = await export(running.base_url, tmp_path)
    mutate(running, random.Random(66), 30)
    # What an incremental run killed after its first commit leaves, once its checkpoint is lost.
    unfinished = "20990101T000000Z-0a0b0c"
    left = tmp_path / "sequenceSteps" / f"run={unfinished}" / f"part-{unfinished}-00001.parquet"
    left.parent.mkdir(parents=True)
    left.write_bytes((tmp_path / first.state.resources["sequenceStep"].files[0].path).read_bytes())
    (tmp_path / "_checkpoint.json").unlink()
    result = await export(
        running.base_url, tmp_path, incremental=True, repair=True, detect_deletes=True
    )
    assert result.state.kind == "incremental" and len(result.state.history) == 1
    assert not left.exists()
    assert_no_version_twice(tmp_path)
    assert_compacted_equals_truth(running, tmp_path)
