"""One writer per backup: a second export or compact into a backup being written stops with exit 7 and harms nothing."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import orjson
import pytest

from exporter.audit.status import status
from exporter.backup.compact import read_current
from exporter.backup.lock import LEASE_NAME, BusyError, OutputLock, read_lease
from exporter.backup.storage import DocumentChanged, Storage
from exporter.core.errors import ExitCode
from exporter.simulator import Faults
from tests.helpers.checks import assert_exact
from tests.helpers.runs import export_command, run_to_completion
from tests.helpers.s3 import assert_exact_on_s3
from tests.helpers.sim import StartSimulator, spawn
from tests.helpers.waiting import wait_until, wait_until_blocking

pytestmark = pytest.mark.slow  # exports and compactions racing, S3 leases: seconds each


async def run_cli(command: list[str]) -> tuple[int, str]:
    """Run a command to its end without blocking the loop (the simulator answers on it);
    its exit code and what it printed (stderr, then stdout)."""
    process = await spawn(*command)
    out, err = await process.communicate()
    assert process.returncode is not None
    return process.returncode, err.decode() + out.decode()


async def test_second_export_into_a_busy_directory_stops_and_harms_nothing(
    start_simulator: StartSimulator, tmp_path: Path
) -> None:
    # Slow answers, so the first export is still writing while the second starts (seconds).
    running = await start_simulator(steps=3000, seed=41, faults=Faults(latency_s=0.2))
    command = export_command(running, tmp_path)
    first = await spawn(*command)
    checkpoint = tmp_path / "_checkpoint.json"
    await wait_until(checkpoint.exists, what="the first export's first commit", process=first)

    code, err = await run_cli(command)
    assert code == ExitCode.BUSY, err
    assert f"pid {first.pid}" in err and "being written by another run" in err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert first.returncode is None, "the first export ended before the second was refused"

    _out, first_err = await first.communicate()
    assert first.returncode == 0, first_err.decode()
    assert_exact(running, tmp_path)  # the refused export deleted nothing, wrote nothing


async def test_compact_refuses_while_the_backup_is_locked_then_runs(
    start_simulator: StartSimulator, tmp_path: Path
) -> None:
    running = await start_simulator(steps=800, seed=42)
    code, _ = await run_to_completion(export_command(running, tmp_path), [])
    assert code == 0
    compact = [sys.executable, "-m", "exporter", "compact", str(tmp_path)]
    with OutputLock(Storage.open(tmp_path), "export"):  # as an export running into it would
        code, err = await run_cli(compact)
        busy = status(tmp_path)  # status peeks without taking the lock from its holder
        assert busy.writing is not None and busy.writing["pid"] == os.getpid()
        assert busy.next_export.action == "busy" and "exit 7" in busy.next_export.message
        status_code, status_text = await run_cli(
            [sys.executable, "-m", "exporter", "status", str(tmp_path)]
        )
        assert (
            status_code == 0
            and f"being written now by another run (export, pid {os.getpid()}" in status_text
        )
    assert code == ExitCode.BUSY, err
    assert f"export, pid {os.getpid()}" in err and "Traceback" not in err
    assert not (tmp_path / "_current").exists()
    idle = status(tmp_path)
    assert idle.writing is None and idle.next_export.action == "refuse"
    code, err = await run_cli(compact)
    assert code == 0, err
    _generation, tables = read_current(tmp_path)
    assert tables["sequenceStep"].num_rows == 800


async def test_a_killed_export_leaves_no_lock_behind(
    start_simulator: StartSimulator, tmp_path: Path
) -> None:
    running = await start_simulator(steps=2000, seed=43, faults=Faults(latency_s=0.01))
    command = export_command(running, tmp_path)
    first = await spawn(*command)
    checkpoint = tmp_path / "_checkpoint.json"
    await wait_until(checkpoint.exists, what="the first export's first commit", process=first)
    first.send_signal(signal.SIGKILL)
    await first.communicate()
    assert first.returncode == -signal.SIGKILL  # killed holding the lock, not finished
    code, _ = await run_to_completion(command, [])  # at once: the kernel dropped the lock
    assert code == 0
    assert_exact(running, tmp_path)


# -- object stores: a lease -----------------------------------------------------------------


def lease(storage: Storage, **fields: object) -> None:
    holder = {
        "purpose": "export",
        "pid": 4242,
        "host": "elsewhere.example",
        "started_at": "2026-11-27T00:00:00+00:00",
        "renewed_at": time.time(),
        "token": "someone-else",
        **fields,
    }
    other = Storage.open(storage.display)  # another process: it read nothing, writes blindly
    other.write_atomically(LEASE_NAME, orjson.dumps(holder))


def dead_pid() -> int:
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait()
    return process.pid


async def test_export_to_s3_respects_a_live_lease_and_takes_over_dead_ones(
    s3_server: str,
    start_simulator: StartSimulator,
) -> None:
    running = await start_simulator(steps=600, seed=44)
    uri = f"s3://backups/lock-{uuid.uuid4().hex[:8]}"
    storage = Storage.open(uri)
    command = export_command(running, uri, "--relationships", "none")

    lease(storage)  # held, renewed just now, by a process on another host
    code, err = await run_cli(command)
    assert code == ExitCode.BUSY, err
    assert "pid 4242 on elsewhere.example" in err
    assert "lapses" in err and "Traceback" not in err
    assert not storage.exists("_checkpoint.json")
    busy = status(uri)
    assert busy.writing is not None and busy.writing["host"] == "elsewhere.example"
    assert "token" not in busy.writing

    lease(storage, renewed_at=time.time() - 3600)  # lapsed an hour ago
    code, err = await run_cli(command)
    assert code == 0, err
    assert not storage.exists(LEASE_NAME)  # a finished run lets its lease go

    storage.delete("_manifest.json")
    storage.delete("_checkpoint.json")
    lease(storage, host=socket.gethostname(), pid=dead_pid())  # a killed run on this host
    code, err = await run_cli(command)
    assert code == 0, err


def test_lease_is_renewed_and_a_lost_lease_stops_commits(s3_server: str) -> None:
    """Waits on what it asserts, not on a duration: the renewal (every ttl/3) seen in the
    store, then the renewer finding the lease taken over. A lifetime of 3 s (renewed every 1 s):
    for `check` to call it lapsed instead, the renewer would have to stall three renewals."""
    storage = Storage.open(f"s3://backups/lease-{uuid.uuid4().hex[:8]}")
    lock = OutputLock(storage, "export", ttl=3.0)
    lock.acquire()
    # Another process's view (its own versions; whole documents only, as a read can race a
    # renewal): reading through `storage` would move the version the renewer writes against.
    observer = Storage.open(storage.display)
    try:
        first = read_lease(observer)
        assert first is not None

        def renewed() -> dict[str, Any] | None:
            current = read_lease(observer)
            return current if current and current["renewed_at"] > first["renewed_at"] else None

        again = wait_until_blocking(renewed, what="the lease's renewal", timeout=60)
        assert again["token"] == first["token"]
        lock.check()  # still ours

        other = OutputLock(storage, "export", ttl=3.0)
        with pytest.raises(BusyError, match="being written by another run"):
            other.acquire()

        lease(storage)  # someone took it over (we were paused past the lifetime)
        wait_until_blocking(
            lambda: lock.lost, what="the renewer to find the lease taken", timeout=60
        )
        assert "pid 4242 on elsewhere.example" in (lock.lost or "")
        taken = read_lease(observer)
        assert taken is not None and taken["token"] == "someone-else"  # not written over
        with pytest.raises(BusyError, match=r"lease lapsed and .*pid 4242.* took the backup over"):
            lock.check()
    finally:
        lock.release()
    assert storage.exists(LEASE_NAME)  # not ours any more: left to its holder


def test_guarded_documents_are_written_only_as_last_read(s3_server: str) -> None:
    """create-if-absent and replace-if-unchanged on the checkpoint: a run never overwrites a
    checkpoint another run wrote since it read it."""
    uri = f"s3://backups/cond-{uuid.uuid4().hex[:8]}"
    first, second = Storage.open(uri), Storage.open(uri)
    assert first.conditional_writes and second.conditional_writes
    assert first.read_document("_checkpoint.json") is None
    assert second.read_document("_checkpoint.json") is None
    first.write_atomically("_checkpoint.json", b'{"by": 1}')
    with pytest.raises(DocumentChanged, match="changed by another run"):
        second.write_atomically("_checkpoint.json", b'{"by": 2}')  # it read "absent"
    assert first.read_document("_checkpoint.json") == b'{"by": 1}'
    first.write_atomically("_checkpoint.json", b'{"by": 1, "n": 2}')  # its own version: fine
    assert second.read_document("_checkpoint.json") == b'{"by": 1, "n": 2}'
    second.write_atomically("_checkpoint.json", b'{"by": 2}')
    with pytest.raises(DocumentChanged, match=r"_checkpoint\.json was changed by another run"):
        first.write_atomically("_checkpoint.json", b'{"by": 1, "n": 3}')
    assert second.read_document("_checkpoint.json") == b'{"by": 2}'


def test_two_runs_reading_no_lease_at_once_cannot_both_take_it(
    s3_server: str,
) -> None:
    """B reads "no lease", pauses; A takes the lease; B writes: B must not hold it too."""
    storage_uri = f"s3://backups/race-{uuid.uuid4().hex[:8]}"
    first = OutputLock(Storage.open(storage_uri), "export")
    second = OutputLock(Storage.open(storage_uri), "export")
    first_holds = threading.Event()
    write = second._write_lease

    def write_after_the_other() -> None:
        assert first_holds.wait(30)
        write()

    second._write_lease = write_after_the_other  # type: ignore[method-assign]
    outcome: list[BaseException | None] = []

    def take() -> None:
        try:
            second.acquire()
            outcome.append(None)
        except BaseException as exc:  # noqa: BLE001 - asserted on below
            outcome.append(exc)

    thread = threading.Thread(target=take)
    thread.start()
    try:
        deadline = time.monotonic() + 30
        while second.storage._conditional is None or not second.storage._conditional.versions:
            assert time.monotonic() < deadline, "the second run never read the lease"
            time.sleep(0.01)
        first.acquire()
        first_holds.set()
        thread.join(30)
        [result] = outcome
        assert isinstance(result, BusyError), result
        assert "took the lease at the same moment" in str(result)
        first.check()  # still ours
    finally:
        first.release()
        second.release()
    assert not Storage.open(storage_uri).exists(LEASE_NAME)


def test_the_lease_is_read_again_at_every_commit(s3_server: str) -> None:
    storage = Storage.open(f"s3://backups/recheck-{uuid.uuid4().hex[:8]}")
    lock = OutputLock(storage, "export")  # renewed every 100 s: the renewer will not notice
    lock.acquire()
    try:
        lock.check()
        lease(Storage.open(storage.display))  # another run wrote the lease just now
        with pytest.raises(BusyError, match="took the backup over"):
            lock.check()
    finally:
        lock.release()


async def test_two_exports_started_together_on_s3_one_runs_one_stops(
    s3_server: str,
    start_simulator: StartSimulator,
) -> None:
    running = await start_simulator(steps=800, seed=45, faults=Faults(latency_s=0.002))
    for trial in range(3):
        uri = f"s3://backups/together-{trial}-{uuid.uuid4().hex[:6]}"
        command = export_command(running, uri)
        processes = await asyncio.gather(spawn(*command), spawn(*command))
        results = [await p.communicate() for p in processes]
        codes = sorted(p.returncode for p in processes)
        errors = [err.decode() for _out, err in results]
        assert codes == [0, ExitCode.BUSY], errors
        assert not any("Traceback" in e for e in errors), errors
        assert_exact_on_s3(running, uri)
        code, text = await run_cli([sys.executable, "-m", "exporter", "verify", uri])
        assert code == 0, text
