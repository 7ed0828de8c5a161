"""Kill a real `exporter export` at random instants (SIGKILL), run it again, and get exactly the uninterrupted result."""

from __future__ import annotations

import asyncio
import os
import random
import signal
import sys
from pathlib import Path
from typing import Any

import orjson
import pytest

from exporter.core.errors import ExitCode
from exporter.simulator import Faults
from tests.helpers.checks import assert_exact
from tests.helpers.runs import export_command, kill_now, run_to_completion
from tests.helpers.sim import StartSimulator, spawn
from tests.helpers.waiting import wait_until

KILL_POINTS = int(os.environ.get("RESUME_KILL_POINTS", "20"))


@pytest.mark.slow
async def test_sigkill_at_random_instants_then_resume_is_exact(
    start_simulator: StartSimulator, tmp_path: Path
) -> None:
    # A budget no soak exhausts: hundreds of kill points spend more than the API's 10,000
    # requests an hour, and the client would (rightly) wait for the window to reset.
    running = await start_simulator(
        steps=2500, seed=31, faults=Faults(latency_s=0.004), rate_limit=10**9
    )
    rng = random.Random(2026)
    # Measure an uninterrupted run first, to spread the kills over its whole length.
    reference = tmp_path / "reference"
    started = asyncio.get_running_loop().time()
    await run_to_completion(export_command(running, reference), [])
    duration = asyncio.get_running_loop().time() - started
    assert_exact(running, reference)

    kills_done = 0
    trial = 0
    while kills_done < KILL_POINTS:
        trial += 1
        out = tmp_path / f"trial-{trial}"
        # One to three kills in a row before the run is allowed to finish.
        kills = [rng.uniform(0.05, duration) for _ in range(rng.randint(1, 3))]
        left: list[str | None] = []  # before each start: the checkpoint's status, or None

        def look(out: Path = out, left: list[str | None] = left) -> None:
            checkpoint = out / "_checkpoint.json"
            exists = checkpoint.exists()
            left.append(orjson.loads(checkpoint.read_bytes())["status"] if exists else None)

        _code, codes = await run_to_completion(export_command(running, out), kills, look)
        kills_done += sum(1 for c in codes[:-1] if c == -signal.SIGKILL)
        assert_exact(running, out)
        manifest = orjson.loads((out / "_manifest.json").read_bytes())
        # The manifest's run is the last start that found no finished checkpoint (a start after
        # that one finished is refused, or killed while refusing); it resumed exactly when it
        # found an unfinished run's checkpoint, not when it found none (a kill before the first
        # commit).
        writer = max(i for i, status in enumerate(left) if status != "complete")
        assert manifest["stats"]["resumed"] is (left[writer] is not None), (codes, left)


@pytest.mark.slow
async def test_sigterm_commits_and_says_how_to_resume(
    start_simulator: StartSimulator, tmp_path: Path
) -> None:
    running = await start_simulator(steps=3000, seed=32, faults=Faults(latency_s=0.01))
    command = export_command(running, tmp_path)
    process = await spawn(*command)
    # Wait for the first commit, then ask it to stop.
    checkpoint = tmp_path / "_checkpoint.json"
    await wait_until(checkpoint.exists, what="the first commit", timeout=60, process=process)
    process.send_signal(signal.SIGTERM)
    _out, err = await process.communicate()
    text = err.decode()
    assert process.returncode == ExitCode.INTERRUPTED, text
    assert "run the same command again" in text.lower() and "Traceback" not in text
    state: dict[str, Any] = orjson.loads(checkpoint.read_bytes())
    assert state["status"] == "running"
    assert not (tmp_path / "_manifest.json").exists()
    # What was fetched before the signal is committed: a resumed run has less to do.
    committed = sum(f["rows"] for r in state["resources"].values() for f in r["files"])
    assert committed > 0
    code, _codes = await run_to_completion(command, [])
    assert code == 0
    assert_exact(running, tmp_path)
    manifest = orjson.loads((tmp_path / "_manifest.json").read_bytes())
    assert manifest["stats"]["resumed"] is True


@pytest.mark.slow
async def test_restart_discards_a_killed_run_and_starts_over(
    start_simulator: StartSimulator, tmp_path: Path
) -> None:
    running = await start_simulator(steps=2500, seed=33, faults=Faults(latency_s=0.01))
    command = export_command(running, tmp_path)
    process = await spawn(*command)
    checkpoint = tmp_path / "_checkpoint.json"

    def a_step_file_committed() -> bool:
        if not checkpoint.exists():
            return False
        return bool(orjson.loads(checkpoint.read_bytes())["resources"]["sequenceStep"]["files"])

    await wait_until(a_step_file_committed, what="a step file committed", process=process)
    assert kill_now(process)
    await process.communicate()
    assert process.returncode == -signal.SIGKILL
    killed = orjson.loads(checkpoint.read_bytes())
    assert killed["status"] == "running"
    old_files = {f["path"] for r in killed["resources"].values() for f in r["files"]}
    assert old_files

    code, _codes = await run_to_completion([*command, "--restart"], [])
    assert code == 0
    manifest = orjson.loads((tmp_path / "_manifest.json").read_bytes())
    assert manifest["run_id"] != killed["run_id"] and manifest["stats"]["resumed"] is False
    assert not old_files & {f["path"] for f in manifest["files"]}
    assert not any((tmp_path / p).exists() for p in old_files)  # the killed run's files are gone
    assert_exact(running, tmp_path)


@pytest.mark.slow
async def test_file_uri_output(start_simulator: StartSimulator, tmp_path: Path) -> None:
    running = await start_simulator(steps=800, seed=34)
    out = tmp_path / "via-uri"
    code, _codes = await run_to_completion(export_command(running, out.as_uri()), [])
    assert code == 0
    assert_exact(running, out)


async def test_kill_now_tolerates_a_process_that_just_exited() -> None:
    # The race `run_to_completion` meets: the kill is due, but the run ended (and was reaped)
    # an instant before. Sending SIGKILL then raises ProcessLookupError; it must count as a
    # kill that did not land, not end the test in an error.
    done = await spawn(sys.executable, "-c", "pass")
    await done.communicate()
    assert done.returncode == 0
    assert kill_now(done) is False
    assert done.returncode == 0
    running = await spawn(sys.executable, "-c", "import time; time.sleep(60)")
    assert kill_now(running) is True
    await running.communicate()
    assert running.returncode == -signal.SIGKILL
