"""Exports run in this process or as `python -m exporter` subprocesses: settings and commands as the tests give them, runs killed at chosen moments."""

from __future__ import annotations

import asyncio
import contextlib
import signal
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson
import pyarrow as pa
import pytest

from exporter.api.auth import StaticToken, TokenSource
from exporter.api.client import ClientSettings
from exporter.backup.storage import Storage
from exporter.core.config import RETRY_BACKOFF_VARIABLE, ExportSettings, RateLimit, RetryPolicy
from exporter.core.errors import ExitCode
from exporter.core.secrets import Secret
from exporter.export.relationships import RelationshipWalk
from exporter.export.run import Export, ExportResult
from tests.helpers.sim import TOKEN, Running, clean_env, spawn


def export_settings(
    base_url: str, out: Path | str, token: str = TOKEN, **overrides: Any
) -> ExportSettings:
    """A test's export: the simulator's token, a rate limit that never waits, no
    relationships; `overrides` replace any of these or set the rest."""
    return ExportSettings(
        out=out,
        base_url=base_url,
        token=Secret(token),
        **{"rate_limit": RateLimit(100_000, 1.0), "relationships": "none", **overrides},
    )


def fast_retries(attempts: int = ClientSettings.max_attempts) -> RetryPolicy:
    """Backoffs of milliseconds (0.005 s, doubling to at most 0.05 s) for a run whose faults
    the simulator makes; at most `attempts` sends (the client's own number unless told)."""
    return RetryPolicy(attempts, backoff_base=0.005, backoff_max=0.05)


def fast_retries_variable(attempts: int = ClientSettings.max_attempts) -> dict[str, str]:
    """`fast_retries(attempts)` as the environment a command line reads it from."""
    policy = fast_retries(attempts)
    value = f"{policy.attempts}/{policy.backoff_base}/{policy.backoff_max}"
    return {RETRY_BACKOFF_VARIABLE: value}


async def run_export(
    base_url: str,
    out: Path | str,
    tokens: TokenSource | None = None,
    *,
    token: str = TOKEN,
    repair: bool = False,
    **overrides: Any,
) -> tuple[Export, ExportResult]:
    """An export in this process (`export_settings`, with `tokens` or the static `token`):
    the job, whose client holds the run's request statistics, and its result."""
    job = Export(
        export_settings(base_url, out, token, **overrides),
        tokens or StaticToken(Secret(token)),
        repair=repair,
    )
    return job, await job.run()


def run_exporter(
    *args: str,
    env: dict[str, str] | None = None,
    timeout: float = 120,
    preexec_fn: Callable[[], object] | None = None,
) -> subprocess.CompletedProcess[str]:
    """`python -m exporter ARGS` to its end, in `clean_env(**env)`; its output as text."""
    return subprocess.run(
        [sys.executable, "-m", "exporter", *args],
        capture_output=True,
        text=True,
        env=clean_env(**(env or {})),
        timeout=timeout,
        check=False,
        preexec_fn=preexec_fn,
    )


def command_settings(base_url: str, out: Path | str, **overrides: Any) -> ExportSettings:
    """What `export_command` runs (relationships, pages of 100, 4 at once, commits every
    0.05 s, files of 250 rows), for a run in this process."""
    return export_settings(
        base_url,
        out,
        **{
            "relationships": "all",
            "page_size": 100,
            "concurrency": 4,
            "commit_interval": 0.05,
            "file_rows": 250,
            **overrides,
        },
    )


def export_command(running: Running, out: Path | str, *extra: str) -> list[str]:
    return [
        sys.executable,
        "-m",
        "exporter",
        "export",
        "--out",
        str(out),
        "--base-url",
        running.base_url,
        "--token",
        TOKEN,
        "--page-size",
        "100",
        "--concurrency",
        "4",
        "--commit-interval",
        "0.05",
        "--file-rows",
        "250",
        "--rate-limit",
        "100000/1",
        *extra,
    ]


def kill_now(process: asyncio.subprocess.Process) -> bool:
    """SIGKILL `process`; False when it had already exited (and been reaped) just before: the
    kill did not land, so the caller must not count it (its exit code says how it ended).

    asyncio may not have closed the transport yet when the exit is already reaped; then
    `send_signal` raises nothing (Popen ignores a signal to a reaped child), so the return code is
    looked at first."""
    if process.returncode is not None:
        return False
    with contextlib.suppress(ProcessLookupError):
        process.send_signal(signal.SIGKILL)
        return True
    return False


async def run_to_completion(
    command: list[str],
    kills: list[float],
    on_start: Callable[[], object] | None = None,
) -> tuple[int, list[int]]:
    """Run `command`, SIGKILL it after each delay in `kills` (restarting it), then let it finish;
    `on_start` is called before each start (to look at what the last one left)."""
    codes: list[int] = []
    for delay in [*kills, None]:
        if on_start is not None:
            on_start()
        process = await spawn(*command)
        if delay is not None:
            try:
                await asyncio.wait_for(process.wait(), timeout=delay)
            except TimeoutError:
                kill_now(process)  # a race with its own exit is counted by its exit code
        _out, err = await process.communicate()
        assert b"Traceback" not in err, err.decode()
        codes.append(process.returncode if process.returncode is not None else -1)
        if (
            codes[-1] == ExitCode.USAGE
            and b"already holds a finished export" in err
            and len(codes) > 1
        ):
            break  # the previous run was killed after it had finished: nothing left to do
        if delay is None or process.returncode == 0:
            assert process.returncode == 0, err.decode()
            break  # finished (before the kill was due, or at last)
    return codes[-1], codes


def mtime_ns(path: Path) -> int | None:
    try:
        return path.stat().st_mtime_ns
    except FileNotFoundError:
        return None


async def timed_run(command: list[str], out: Path) -> tuple[float, float]:
    """Run `command` uninterrupted; return (seconds until its first checkpoint commit, seconds in all)."""
    checkpoint = out / "_checkpoint.json"
    before = mtime_ns(checkpoint)
    loop = asyncio.get_running_loop()
    started = loop.time()
    run = asyncio.create_task(run_to_completion(command, []))
    first_commit: float | None = None
    while not run.done():
        if first_commit is None and mtime_ns(checkpoint) != before:
            first_commit = loop.time() - started
        await asyncio.sleep(0.005)
    code, _codes = await run
    assert code == 0
    duration = loop.time() - started
    return (first_commit if first_commit is not None else 0.0), duration


async def run_killed_after_commits(
    command: list[str], out: Path, commits: list[int], deadline: float = 120.0
) -> tuple[int, list[int]]:
    """Run `command`; for each n in `commits`, SIGKILL the run once its checkpoint has been
    committed n times since it started (each commit renames a new `_checkpoint.json` into
    place: a new mtime), restarting it; then let it finish. Synchronised on commits, not on
    time, so the kills land however loaded the machine is. Returns (last code, every code);
    a run that finishes before its n-th commit is not killed (its code says so)."""
    checkpoint = out / "_checkpoint.json"
    codes: list[int] = []
    loop = asyncio.get_running_loop()
    for wanted in [*commits, None]:
        process = await spawn(*command)
        if wanted is not None:
            seen, last = 0, mtime_ns(checkpoint)
            give_up = loop.time() + deadline
            while process.returncode is None and seen < wanted:
                assert loop.time() < give_up, f"no {wanted} commits within {deadline} s"
                now = mtime_ns(checkpoint)
                if now is not None and now != last:
                    seen, last = seen + 1, now
                await asyncio.sleep(0.002)
            if process.returncode is None:
                kill_now(process)
        _out, err = await process.communicate()
        assert b"Traceback" not in err, err.decode()
        codes.append(process.returncode if process.returncode is not None else -1)
        if codes[-1] == ExitCode.USAGE and b"already holds a finished export" in err:
            assert len(codes) > 1, err.decode()
            return 0, codes  # the run before was killed after its last commit: it had finished
        if wanted is None or process.returncode == 0:
            assert process.returncode == 0, err.decode()
            break
    return codes[-1], codes


def checkpoint_reader(out: Path | str) -> Callable[[], bytes | None]:
    """What reads a backup's checkpoint as another process would: a local file, or an object
    store's document (whole or not at all); None while there is none."""
    if isinstance(out, Path):
        path = out / "_checkpoint.json"

        def local() -> bytes | None:
            try:
                return path.read_bytes()
            except FileNotFoundError:
                return None

        return local
    storage = Storage.open(out)
    return lambda: storage.read_document("_checkpoint.json")


async def kill_export_when(
    command: list[str], out: Path | str, ready: Callable[[dict[str, Any]], bool]
) -> dict[str, Any]:
    """Run `command` (a real export into `out`, a directory or an object store's URI) and
    SIGKILL it once its checkpoint satisfies `ready`; return that checkpoint (a commit may
    still land between that look and the kill: read it again for what the kill left)."""
    process = await asyncio.create_subprocess_exec(
        *command,
        env=clean_env(),
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
    )
    read = checkpoint_reader(out)
    state: dict[str, Any] = {}
    try:
        for _ in range(1200):
            await asyncio.sleep(0.02)
            assert process.returncode is None, "the export finished before it could be killed"
            try:
                state = orjson.loads(await asyncio.to_thread(read) or b"null") or {}
            except orjson.JSONDecodeError:
                continue
            if state and ready(state):
                break
        else:
            raise AssertionError("the checkpoint was not ready within 24 s")
    finally:
        if process.returncode is None:
            process.send_signal(signal.SIGKILL)
        await process.wait()
    assert process.returncode == -signal.SIGKILL
    return state


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


async def export_deleting_a_sequence_midway(running: Running, out: Path) -> int:
    """Export with relationships=sequence, deleting one referenced sequence from the simulator
    after the steps that name it were announced and before its batch is fetched; its id."""
    victim: int = running.sim.truth.ids("sequence")[5]
    original_announce = RelationshipWalk.announce

    def announce_then_delete(
        self: RelationshipWalk, table: pa.Table, only: set[str] | None = None
    ) -> dict[str, int]:
        needs = original_announce(self, table, only)
        if (
            running.sim.truth.get("sequence", victim) is not None
            and victim in self.targets["sequence"].requested
        ):
            running.sim.store.delete("sequence", victim)
        return needs

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(RelationshipWalk, "announce", announce_then_delete)
        await run_export(
            running.base_url, out, relationships="sequence", concurrency=1, page_size=100
        )
    return victim


async def run_cli(
    command: list[str], kill_after: float | None = None, env: dict[str, str] | None = None
) -> tuple[int, str, str]:
    """Run `command` to its end (SIGKILLed after `kill_after` seconds if given) in
    `clean_env(**env)`, without blocking the loop: its exit code, stdout and stderr."""
    process = await spawn(*command, env=clean_env(**(env or {})))
    if kill_after is not None:
        try:
            await asyncio.wait_for(asyncio.shield(process.wait()), timeout=kill_after)
        except TimeoutError:
            kill_now(process)  # may have exited just then: not a landed kill
    out, err = await process.communicate()
    code = process.returncode if process.returncode is not None else -1
    return code, out.decode(), err.decode()
