"""End to end against the simulator: faults of every kind, retries given up then resumed, rate limits, a full disk."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import math
import resource
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest
from click.testing import CliRunner

from exporter.commands.main import main
from exporter.core.config import RateLimit
from exporter.core.errors import ExitCode
from exporter.simulator import Faults, Simulator, SimulatorConfig, serve_in_thread
from tests.helpers.checks import assert_exact, one_error_line
from tests.helpers.runs import fast_retries, fast_retries_variable, run_export
from tests.helpers.sim import TOKEN, StartSimulator, clean_env, spawn
from tests.helpers.truth import (
    assert_rows_equal,
    expected_steps,
    read_rows,
)

pytestmark = pytest.mark.slow  # exports through faults, rate windows and a full disk: seconds each


def assert_checkpoint_intact(out: Path) -> dict[str, Any]:
    """The checkpoint of an unfinished run: readable, and every file it names is on disk as named."""
    state: dict[str, Any] = orjson.loads((out / "_checkpoint.json").read_bytes())
    assert state["status"] == "running"
    assert not (out / "_manifest.json").exists()
    files = [f for r in state["resources"].values() for f in r["files"]]
    for entry in files:
        path = out / entry["path"]
        assert hashlib.sha256(path.read_bytes()).hexdigest() == entry["sha256"], entry["path"]
    return state


async def test_every_fault_kind_export_equals_truth(
    start_simulator: StartSimulator, tmp_path: Path
) -> None:
    faults = Faults(
        error_rate=0.08,
        big_page_502_above=300,
        reset_rate=0.05,
        truncate_rate=0.05,
        malformed_rate=0.05,
        html_rate=0.06,
        slow_body_s=0.05,
        slow_body_rate=0.1,
        seed=5,
    )
    # Each request draws its faults from one seeded sequence in the order requests arrive, so
    # which requests draw a 500 or 503 varies with timing. 3,000 steps make about 95 requests
    # that draw it (besides the big pages' 502s), at 8% each: a run that meets none is about
    # 0.04%, against 2% at 1,500 steps (48 draws).
    running = await start_simulator(steps=3000, seed=21, faults=faults)
    job, _result = await run_export(
        running.base_url,
        tmp_path,
        relationships="all",
        concurrency=4,
        retry=fast_retries(12),  # ~35% of answers are faulty here
    )
    assert_exact(running, tmp_path)
    stats = job.client.stats if job.client else None
    assert stats is not None
    assert stats.retries >= 10 and stats.smaller_pages >= 2
    assert 502 in stats.statuses and {500, 503} & set(stats.statuses)


async def test_an_answer_silent_past_the_read_timeout_is_asked_again(
    start_simulator: StartSimulator, tmp_path: Path
) -> None:
    """Some answers trickle their body in 10 chunks 0.4 s apart. With --read-timeout 0.15 those
    are given up and asked again; with the default they are waited for. Either way: exact."""
    faults = Faults(slow_body_s=4.0, slow_body_rate=0.15, seed=6)
    running = await start_simulator(steps=600, seed=22, faults=faults)
    common = ["--base-url", running.base_url, "--token", TOKEN, "--page-size", "50"]
    common += ["--rate-limit", "100000/1", "--relationships", "none", "--quiet"]

    impatient = tmp_path / "impatient"
    process = await spawn(
        *(sys.executable, "-m", "exporter", "export", "--out", str(impatient), *common),
        *("--read-timeout", "0.15"),
        env=clean_env(OUTREACH_READ_TIMEOUT="999"),  # the flag wins over the environment
    )
    _out, err = await process.communicate()
    assert process.returncode == 0, err.decode()
    assert_rows_equal(read_rows(impatient / "sequenceSteps"), expected_steps(running.sim))
    stats = orjson.loads((impatient / "_manifest.json").read_bytes())["stats"]
    assert stats["retries"] > 0  # the silent answers were given up on and asked again

    patient = tmp_path / "patient"
    job, _result = await run_export(running.base_url, patient, page_size=50, concurrency=8)
    assert_rows_equal(read_rows(patient / "sequenceSteps"), expected_steps(running.sim))
    assert job.client is not None and job.client.stats.retries == 0  # waited them out


def test_retries_exhausted_one_line_then_resume(tmp_path: Path) -> None:
    """Every answer fails after the first commit: one line naming URL, status and error id, exit
    1, the checkpoint intact; with the faults gone the same command finishes exactly."""
    fast = fast_retries_variable(3)
    sim = Simulator(
        SimulatorConfig(steps=2000, seed=41, static_token=TOKEN, faults=Faults(latency_s=0.01))
    )
    out = tmp_path / "out"
    with serve_in_thread(sim) as root:
        base = root + "/api/v2"
        stop = threading.Event()

        def fail_after_first_commit() -> None:
            while not stop.is_set():
                if (out / "_checkpoint.json").exists():
                    sim.faults.error_rate = 1.0
                    return
                time.sleep(0.002)

        flipper = threading.Thread(target=fail_after_first_commit)
        flipper.start()
        args = [
            "export",
            *("--out", str(out), "--base-url", base, "--token", TOKEN),
            *("--page-size", "50", "--concurrency", "2", "--commit-interval", "0.05"),
            *("--relationships", "none", "--rate-limit", "100000/1"),
        ]
        try:
            result = CliRunner().invoke(main, args, env=fast)
        finally:
            stop.set()
            flipper.join()
        assert result.exit_code == ExitCode.FAILED, (result.stdout, result.stderr)
        line = one_error_line(result.stderr)
        assert line.startswith("error: gave up after 3 attempts"), line
        assert "status 500" in line or "status 503" in line
        assert "error id 'internalServerError'" in line or "scheduledServerMaintenance" in line
        assert f"url {base}/sequenceSteps?" in line and "run the same command" in line
        assert TOKEN not in result.stdout + result.stderr
        state = assert_checkpoint_intact(out)
        committed = sum(f["rows"] for r in state["resources"].values() for f in r["files"])
        assert 0 < committed < 2000

        sim.faults.error_rate = 0.0
        again = CliRunner().invoke(main, args, env=fast)
        assert again.exit_code == 0, again.stderr
        assert "resumed and finished" in again.stdout
    assert_rows_equal(read_rows(out / "sequenceSteps"), expected_steps(sim))


async def test_rate_limit_alone_uses_the_window_without_429(
    start_simulator: StartSimulator, tmp_path: Path
) -> None:
    running = await start_simulator(steps=700, seed=8, rate_limit=20, rate_window=1.0)
    started = time.monotonic()
    job, _result = await run_export(
        running.base_url, tmp_path, page_size=20, concurrency=4, rate_limit=RateLimit(20, 1.0)
    )
    elapsed = time.monotonic() - started
    assert running.sim.counters.rate_limited == 0
    assert_rows_equal(read_rows(tmp_path / "sequenceSteps"), expected_steps(running.sim))
    requests = running.sim.counters.requests
    assert requests >= 40
    # No 429, yet no window wasted: about one window per 20 requests (plus the partial first).
    assert elapsed <= math.ceil(requests / 20) + 1.0, (requests, elapsed)
    assert job.client is not None and job.client.stats.rate_limited == 0


async def test_another_program_spending_the_budget(
    start_simulator: StartSimulator, tmp_path: Path
) -> None:
    """A second program spends about half of each window with the same token: the export
    pauses on a low X-RateLimit-Remaining (and waits out any 429), and loses or repeats no page."""
    running = await start_simulator(steps=500, seed=9, rate_limit=20, rate_window=1.0)
    other_requests = 0

    async def other_program() -> None:
        nonlocal other_requests
        url = running.base_url + "/users?page[size]=1"
        headers = {"Authorization": f"Bearer {TOKEN}"}
        async with aiohttp.ClientSession(headers=headers) as session:
            while True:
                async with session.get(url) as response:
                    await response.read()
                other_requests += 1
                await asyncio.sleep(0.1)

    spender = asyncio.create_task(other_program())
    try:
        job, _result = await run_export(
            running.base_url,
            tmp_path,
            page_size=20,
            concurrency=4,
            rate_limit=RateLimit(20, 1.0),
        )
    finally:
        spender.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await spender
    assert_rows_equal(read_rows(tmp_path / "sequenceSteps"), expected_steps(running.sim))
    assert job.client is not None
    stats = job.client.stats
    assert other_requests >= 10
    assert stats.rate_pauses > 0, stats  # it held back on the API's count, not only its own
    assert stats.rate_limited <= running.sim.counters.rate_limited


@pytest.mark.parametrize("retry_after", [False, True])
async def test_a_429_waits_for_the_window_then_sends_the_same_request(
    start_simulator: StartSimulator, tmp_path: Path, retry_after: bool
) -> None:
    """Another program spent the whole window before the export began: its first request gets
    a 429. It waits for X-RateLimit-Reset (or Retry-After when sent), asks again, and the
    result is exact; it does not hammer the API while the window is closed."""
    running = await start_simulator(
        steps=300, seed=10, rate_limit=15, rate_window=2.0, retry_after=retry_after
    )
    url = running.base_url + "/users?page[size]=1"
    async with aiohttp.ClientSession(headers={"Authorization": f"Bearer {TOKEN}"}) as session:
        while True:  # spend the current window down to nothing
            async with session.get(url) as response:
                await response.read()
                if response.status == 429:
                    break
    spent = running.sim.counters.rate_limited
    started = time.monotonic()
    job, _result = await run_export(running.base_url, tmp_path, page_size=50, concurrency=4)
    assert_rows_equal(read_rows(tmp_path / "sequenceSteps"), expected_steps(running.sim))
    assert job.client is not None
    stats = job.client.stats
    assert stats.rate_limited >= 1 and running.sim.counters.rate_limited - spent == (
        stats.rate_limited
    )
    assert stats.rate_limited <= 2  # waited for the reset, did not retry into a closed window
    assert stats.rate_wait_seconds > 0 and time.monotonic() - started > stats.rate_wait_seconds
    assert stats.retries == 0  # a 429 is waited out, not counted as a failed attempt


# -- a full output directory -----------------------------------------------------------------


@contextlib.contextmanager
def small_filesystem(path: Path, size: str) -> Iterator[bool]:
    """A tmpfs of `size` at `path` (yields True), or False when mounting is not allowed here."""
    path.mkdir(parents=True, exist_ok=True)
    mounted = (
        shutil.which("mount") is not None
        and subprocess.run(
            ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
            capture_output=True,
            check=False,
        ).returncode
        == 0
    )
    try:
        yield mounted
    finally:
        if mounted:
            subprocess.run(["umount", "-l", str(path)], capture_output=True, check=False)


def _limit_file_size(limit: int) -> Any:
    def apply() -> None:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails with EFBIG
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    return apply


async def test_full_output_directory_exit_4_then_resume(
    start_simulator: StartSimulator, tmp_path: Path
) -> None:
    running = await start_simulator(steps=3000, seed=12)
    out = tmp_path / "small"
    command = [
        sys.executable,
        *("-m", "exporter", "export", "--out", str(out), "--base-url", running.base_url),
        *("--token", TOKEN, "--page-size", "100", "--commit-interval", "0.05"),
        *("--file-rows", "200", "--rate-limit", "100000/1", "--concurrency", "2"),
    ]
    env = clean_env()

    async def run(preexec: Any = None) -> subprocess.CompletedProcess[str]:
        return await asyncio.to_thread(
            subprocess.run,
            command,
            capture_output=True,
            text=True,
            env=env,
            timeout=15,
            check=False,
            preexec_fn=preexec,
        )

    with small_filesystem(out, "400k") as mounted:
        # Without the right to mount, a file size limit is the next real thing (EFBIG).
        result = await run(None if mounted else _limit_file_size(60_000))
        assert result.returncode == ExitCode.OUTPUT, (result.stdout, result.stderr)
        line = one_error_line(result.stderr)
        expected = "No space left on device" if mounted else "File too large"
        assert expected in line and "run the same command again" in line, line
        state = assert_checkpoint_intact(out)
        assert sum(f["rows"] for r in state["resources"].values() for f in r["files"]) > 0
        if mounted:
            remount = ["mount", "-o", "remount,size=64m", str(out)]
            subprocess.run(remount, check=True, capture_output=True)
        again = await run()
        assert again.returncode == 0, again.stderr
        assert "resumed and finished" in again.stdout
        assert_exact(running, out)
