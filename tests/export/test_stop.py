"""Stopping a run that waits on a trickling answer: bounded, committed, exit 130, never a traceback."""

from __future__ import annotations

import asyncio
import signal
import sys
import time
from pathlib import Path

import orjson
import pytest

from exporter.api.client import STOP_GRACE
from exporter.core.errors import ExitCode
from exporter.simulator import Faults
from tests.helpers.checks import assert_exact
from tests.helpers.runs import export_command, run_to_completion
from tests.helpers.sim import TOKEN, Running, StartSimulator, clean_env, spawn
from tests.helpers.waiting import wait_until

pytestmark = pytest.mark.slow  # signals to export subprocesses stuck on trickles: seconds each


def committed_rows(out: Path) -> int:
    checkpoint = out / "_checkpoint.json"
    if not checkpoint.exists():
        return 0
    state = orjson.loads(checkpoint.read_bytes())
    return sum(f["rows"] for r in state["resources"].values() for f in r["files"])


async def stuck_export(running: Running, out: Path) -> asyncio.subprocess.Process:
    """An export whose every answer, once some pages are committed, trickles in 5 bytes a second."""
    process = await spawn(*export_command(running, out, "--concurrency", "2"))
    await wait_until(lambda: committed_rows(out) > 0, what="a first commit", timeout=60)
    faults = running.sim.hostile
    faults.trickle_bytes_per_s = 5
    faults.trickle = 1_000_000
    await wait_until(lambda: faults.served["trickle"] >= 2, what="requests stuck on a trickle")
    return process


async def test_sigterm_during_a_trickle_stops_within_the_grace_period(
    start_simulator: StartSimulator, tmp_path: Path
) -> None:
    """Bug caught: the stop request waits for the requests in flight, and a trickling answer
    (a few bytes a second: the read timeout never fires) keeps it waiting forever."""
    running = await start_simulator(steps=3000, seed=41, faults=Faults(latency_s=0.01))
    process = await stuck_export(running, tmp_path)
    before = committed_rows(tmp_path)
    sent = time.monotonic()
    process.send_signal(signal.SIGTERM)
    try:
        _out, err = await asyncio.wait_for(process.communicate(), STOP_GRACE + 30)
    finally:
        if process.returncode is None:
            process.kill()
    elapsed = time.monotonic() - sent
    text = err.decode()
    assert process.returncode == ExitCode.INTERRUPTED, text
    assert elapsed < STOP_GRACE + 15, elapsed
    assert "Traceback" not in text and "CancelledError" not in text
    last = text.strip().splitlines()[-1]
    assert last.startswith("stopped: ") and "run the same command again" in last.lower(), text
    assert committed_rows(tmp_path) >= before > 0  # what was fetched is kept
    running.sim.hostile.trickle = 0
    code, _codes = await run_to_completion(export_command(running, tmp_path), [])
    assert code == 0
    assert_exact(running, tmp_path)


async def test_a_second_signal_stops_at_once_without_a_traceback(
    start_simulator: StartSimulator, tmp_path: Path
) -> None:
    """Bug caught: the second SIGINT cancels the run's task and a CancelledError traceback ends
    the process (exit 1), not one line and exit 130."""
    running = await start_simulator(steps=3000, seed=42, faults=Faults(latency_s=0.01))
    process = await stuck_export(running, tmp_path)
    process.send_signal(signal.SIGINT)
    assert process.stderr is not None
    seen = b""
    while b"stopping:" not in seen:  # the first signal is handled: the stop was requested
        seen += await asyncio.wait_for(process.stderr.readline(), 10)
    sent = time.monotonic()
    process.send_signal(signal.SIGINT)
    try:
        _out, err = await asyncio.wait_for(process.communicate(), 30)
    finally:
        if process.returncode is None:
            process.kill()
    text = (seen + err).decode()
    assert process.returncode == ExitCode.INTERRUPTED, text
    assert time.monotonic() - sent < STOP_GRACE
    assert "Traceback" not in text and "CancelledError" not in text and "Task" not in text
    assert text.strip().splitlines()[-1].startswith("stopped: "), text
    state = orjson.loads((tmp_path / "_checkpoint.json").read_bytes())
    assert state["status"] == "running" and committed_rows(tmp_path) > 0


async def test_a_fleet_stuck_on_trickles_stops_within_the_grace_period(
    start_simulator: StartSimulator, tmp_path: Path
) -> None:
    """Bug caught: the fleet's stop waited on every running export's requests in flight (a
    trickle: forever) and ignored a second signal."""
    sims = [
        await start_simulator(steps=6000, seed=43 + i, faults=Faults(latency_s=0.2))
        for i in range(2)
    ]
    config = tmp_path / "fleet.toml"
    lines = ["[defaults]", 'rate_limit = "100000/1"', 'relationships = "none"', "page_size = 100"]
    lines += ["concurrency = 1", "commit_interval = 0.05"]
    lines.append(f'out = "{tmp_path}/out/{{name}}"')
    for i, running in enumerate(sims):
        lines += ["[[account]]", f'name = "a{i}"', f'base_url = "{running.base_url}"']
        lines.append('token_env = "FLEET_TOKEN"')
    config.write_text("\n".join(lines) + "\n")
    process = await spawn(
        sys.executable,
        *("-m", "exporter", "fleet", "--config", str(config)),
        env=clean_env(FLEET_TOKEN=TOKEN),
    )
    outs = [tmp_path / "out" / f"a{i}" for i in range(2)]
    await wait_until(
        lambda: all(committed_rows(out) > 0 for out in outs), what="first commits", timeout=60
    )
    for running in sims:
        running.sim.hostile.trickle_bytes_per_s = 5
        running.sim.hostile.trickle = 1_000_000
    await wait_until(
        lambda: all(r.sim.hostile.served["trickle"] >= 1 for r in sims),
        what="requests stuck on a trickle in both accounts",
    )
    sent = time.monotonic()
    process.send_signal(signal.SIGTERM)
    try:
        out, err = await asyncio.wait_for(process.communicate(), STOP_GRACE + 30)
    finally:
        if process.returncode is None:
            process.kill()
    text = err.decode()
    assert process.returncode == ExitCode.INTERRUPTED, text
    assert time.monotonic() - sent < STOP_GRACE + 15
    assert "Traceback" not in text and "CancelledError" not in text
    table = out.decode()
    assert table.count("stopped") >= 2, table
    assert all(committed_rows(out) > 0 for out in outs)
