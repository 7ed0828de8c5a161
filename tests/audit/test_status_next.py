"""`status`'s "next export would" says what `export` then does: checked by running that export (run.py `_prepare`, `_refuse_early`, `_check_files`)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from exporter.backup.damage import DamagedFileError
from exporter.core.errors import UsageError
from exporter.simulator import Faults
from tests.helpers.commands import status_json, status_text
from tests.helpers.runs import export_args, kill_export_when, run_export
from tests.helpers.sim import StartSimulator


async def test_part_files_without_a_checkpoint_or_manifest_are_left_alone(
    start_simulator: StartSimulator, tmp_path: Path
) -> None:
    running = await start_simulator(steps=50, seed=171)
    source = tmp_path / "source"
    await run_export(running.base_url, source)
    out = tmp_path / "out"
    (out / "sequenceSteps").mkdir(parents=True)
    part = next((source / "sequenceSteps").glob("part-*.parquet"))
    shutil.copyfile(part, out / "sequenceSteps" / part.name)
    assert status_text(out)[-1] == (
        "next export would: start a new run; it leaves the 1 part file(s) of this tool's naming "
        "here as they are (no checkpoint or manifest names them)"
    )
    await run_export(running.base_url, out)
    assert (out / "sequenceSteps" / part.name).is_file()  # what status said


@pytest.mark.parametrize("checkpoint", ["missing", "damaged"])
async def test_a_manifest_without_its_checkpoint(
    checkpoint: str, start_simulator: StartSimulator, tmp_path: Path
) -> None:
    running = await start_simulator(steps=50, seed=172)
    await run_export(running.base_url, tmp_path)
    if checkpoint == "missing":
        (tmp_path / "_checkpoint.json").unlink()
    else:
        (tmp_path / "_checkpoint.json").write_text("{bad")
    report = status_json(tmp_path)
    assert report["state"] == "complete" and len(report["runs"]) == 1  # from the manifest
    assert report["next_export"]["action"] == "refuse"
    message = report["next_export"]["message"]
    assert f"{checkpoint} beside the manifest" in message, message
    assert "--incremental --repair rebuilds the checkpoint from the manifest" in message, message
    with pytest.raises(UsageError, match="--incremental --repair"):
        await run_export(running.base_url, tmp_path, incremental=True)
    await run_export(running.base_url, tmp_path, incremental=True, repair=True)  # as status said
    assert (tmp_path / "_checkpoint.json").is_file()


@pytest.mark.parametrize("checkpoint", ["missing", "damaged"])
async def test_neither_the_checkpoint_nor_the_manifest_readable(
    checkpoint: str, start_simulator: StartSimulator, tmp_path: Path
) -> None:
    """Bug caught: status listed no run and said "start a new run", where export refuses
    (deleting would lose a finished backup whose documents could be put back)."""
    running = await start_simulator(steps=50, seed=175)
    await run_export(running.base_url, tmp_path)
    (tmp_path / "_manifest.json").write_text("{bad")
    if checkpoint == "missing":
        (tmp_path / "_checkpoint.json").unlink()
    else:
        (tmp_path / "_checkpoint.json").write_text("{bad")
    report = status_json(tmp_path)
    assert report["runs"] == [] and report["next_export"]["action"] == "refuse", report
    message = report["next_export"]["message"]
    assert f"_checkpoint.json is {checkpoint}" in message, message
    assert "and its _manifest.json cannot be read; nothing was changed" in message, message
    parts = sorted((tmp_path / "sequenceSteps").glob("part-*.parquet"))
    with pytest.raises(UsageError, match="cannot be read; nothing was changed"):
        await run_export(running.base_url, tmp_path)
    assert parts and all(p.is_file() for p in parts)  # as status said: nothing deleted


@pytest.mark.slow
async def test_a_finished_backup_with_damage_and_leftovers(
    start_simulator: StartSimulator, tmp_path: Path
) -> None:
    running = await start_simulator(steps=300, seed=173)
    # Pages of 50, so files roll at 100 rows (one page of 1000 would hold every step).
    await run_export(running.base_url, tmp_path, file_rows=100, page_size=50)
    parts = sorted((tmp_path / "sequenceSteps").glob("part-*.parquet"))
    run_id = parts[0].name.split("-", 1)[1].rsplit("-", 1)[0]
    leftover = tmp_path / "sequenceSteps" / f"part-{run_id}-99999.parquet"
    shutil.copyfile(parts[0], leftover)
    parts[1].write_bytes(parts[1].read_bytes()[:100])
    message = status_json(tmp_path)["next_export"]["message"]
    relative = f"sequenceSteps/{parts[1].name}"
    assert f"--incremental would first remove 1 uncommitted file(s), then stop: {tmp_path}/" in (
        message
    ), message
    assert f"{relative} is damaged (100 bytes instead of the " in message, message
    assert "pass --repair to set it aside and fetch its records again" in message, message
    with pytest.raises(DamagedFileError, match=relative):
        await run_export(running.base_url, tmp_path, incremental=True)
    assert not leftover.exists()  # removed, as status said
    await run_export(running.base_url, tmp_path, incremental=True, repair=True)
    assert "damaged" not in status_json(tmp_path)["next_export"]["message"]


@pytest.mark.slow
async def test_an_unfinished_run_with_a_damaged_file(
    start_simulator: StartSimulator, tmp_path: Path
) -> None:
    running = await start_simulator(steps=3000, seed=174, faults=Faults(latency_s=0.08))
    out = tmp_path / "out"
    state = await kill_export_when(
        export_args(running.base_url, out),
        out,
        lambda found: len(found["resources"]["sequenceStep"]["files"]) >= 2,
    )
    relative = state["resources"]["sequenceStep"]["files"][0]["path"]
    (out / relative).unlink()
    report = status_json(out)
    message = report["next_export"]["message"]
    assert report["next_export"]["action"] == "refuse", message
    assert message.startswith(f"stop: {out}/{relative} is damaged (missing); pass --repair"), (
        message
    )
    assert f", then resume run {state['run_id']}" in message, message
    with pytest.raises(DamagedFileError, match=relative):
        await run_export(running.base_url, out, relationships="sequence,creator,mailings")
    await run_export(running.base_url, out, relationships="sequence,creator,mailings", repair=True)
    assert (out / "_manifest.json").is_file()
