"""A file where the backup keeps a type's folder: export and verify say so and touch nothing."""

from __future__ import annotations

import shutil
from pathlib import Path

from tests.helpers.runs import export_command, run_cli
from tests.helpers.sim import StartSimulator

IN_THE_WAY = "a file stands where the backup keeps a folder; move that file out of the way"


async def test_a_file_named_like_a_type_folder_is_named_and_kept(
    start_simulator: StartSimulator, tmp_path: Path
) -> None:
    """Before, the message ended "check the path, its permissions or credentials, then run the
    same command again", and running again failed the same way: it now says what is in the
    way, and nothing is deleted."""
    running = await start_simulator(steps=40, seed=5)
    fresh = tmp_path / "fresh"
    fresh.mkdir()
    (fresh / "sequenceSteps").write_text("notes of mine\n")
    code, _out, err = await run_cli(export_command(running, fresh))
    assert code == 4, err
    assert IN_THE_WAY in err and str(fresh / "sequenceSteps") in err
    assert (fresh / "sequenceSteps").read_text() == "notes of mine\n"

    done = tmp_path / "done"
    code, _out, err = await run_cli(export_command(running, done))
    assert code == 0, err
    shutil.rmtree(done / "calls")
    (done / "calls").write_text("notes of mine\n")
    code, out, err = await run_cli(
        [*export_command(running, done)[:3], "verify", str(done)]  # python -m exporter verify
    )
    assert code == 4, out + err
    assert IN_THE_WAY in err and str(done / "calls") in err
    assert (done / "calls").read_text() == "notes of mine\n"
