"""`exporter compact` publishes one set: a reader sees the old set or the new one, never a mix, while compactions are SIGKILLed at random instants."""

from __future__ import annotations

import asyncio
import hashlib
import random
import re
import signal
import sys
import threading
import time
import uuid
from pathlib import Path

import pyarrow as pa
import pytest

from exporter.backup.compact import (
    CURRENT_PREFIX,
    POINTER_NAME,
    compact,
    load_pointer,
    read_current,
)
from exporter.backup.storage import Storage
from exporter.core.errors import ExitCode
from tests.helpers.runs import kill_now, run_export
from tests.helpers.sim import Running, StartSimulator, clean_env, mutate, spawn

Fingerprint = dict[str, str]  # type -> sha256 of its rows (as Arrow IPC), one set


def fingerprint(tables: dict[str, pa.Table]) -> Fingerprint:
    found = {}
    for type_name, table in tables.items():
        sink = pa.BufferOutputStream()
        with pa.ipc.new_stream(sink, table.schema) as stream:
            stream.write_table(table.sort_by("id"))
        found[type_name] = hashlib.sha256(sink.getvalue().to_pybytes()).hexdigest()
    return found


def expected_set(storage: Storage, scratch: Path) -> Fingerprint:
    """What a compaction of the backup as it is now publishes: compacted in this process into a
    scratch directory (the published files under test are not read)."""
    target = scratch / f"expected-{uuid.uuid4().hex[:6]}"
    compact(storage, str(target))
    return fingerprint(read_current(str(target), "")[1])


class Reader(threading.Thread):
    """Reads the published set again and again, as a consumer would, and records what it saw."""

    def __init__(self, where: str) -> None:
        super().__init__(daemon=True)
        self.storage = Storage.open(where)
        self.seen: list[Fingerprint] = []
        self.errors: list[str] = []
        self.stop = threading.Event()

    def run(self) -> None:
        while not self.stop.is_set():
            try:
                _generation, tables = read_current(self.storage)
                self.seen.append(fingerprint(tables))
            except Exception as exc:  # noqa: BLE001 - recorded, asserted on
                self.errors.append(f"{type(exc).__name__}: {exc}")


async def kill_compactions(
    where: str,
    allowed: list[Fingerprint],
    rng: random.Random,
    kills: int,
    reader: Reader,
    within: float,
) -> int:
    """Start `exporter compact`, SIGKILL it at a random instant, `kills` times; each time the
    reader must only have seen sets in `allowed`. Returns how many were killed mid-way: the
    kills that landed (exit by SIGKILL), not those sent to a compaction that had just ended."""
    killed = 0
    for _ in range(kills):
        process = await spawn(sys.executable, "-m", "exporter", "compact", where, env=clean_env())
        try:
            await asyncio.wait_for(process.wait(), timeout=rng.uniform(0.2, within))
        except TimeoutError:
            kill_now(process)
        _out, err = await process.communicate()
        assert process.returncode in (0, -signal.SIGKILL), err.decode()
        killed += process.returncode == -signal.SIGKILL
        assert b"Traceback" not in err
        assert not reader.errors, reader.errors[:3]
        mixed = [s for s in reader.seen if s not in allowed]
        assert not mixed, f"a reader saw a set that is neither the old nor the new one: {mixed[0]}"
    return killed


async def nights_of_killed_compactions(
    running: Running,
    where: str,
    storage: Storage,
    scratch: Path,
    nights: int,
    kills: int,
    within: float,
) -> None:
    rng = random.Random(2601)
    await run_export(running.base_url, where, relationships="all")
    compact(where)
    published = expected_set(storage, scratch)
    assert fingerprint(read_current(where)[1]) == published
    user_file = f"{CURRENT_PREFIX}notes.txt"  # not compact's: must survive every compaction
    storage.write_atomically(user_file, b"mine")
    reader = Reader(where)
    reader.start()
    killed = 0
    try:
        for _night in range(nights):
            mutate(running, rng, 30)
            await run_export(running.base_url, where, relationships="all", incremental=True)
            new = expected_set(storage, scratch)
            assert new != published  # the night changed something a reader can tell
            killed += await kill_compactions(where, [published, new], rng, kills, reader, within)
            started = time.monotonic()
            process = await spawn(
                sys.executable, "-m", "exporter", "compact", where, env=clean_env()
            )
            _out, err = await process.communicate()
            # The next night's kills fall within what a whole compaction takes here (start-up
            # included), so they land however fast this machine runs it.
            within = max(0.3, min(within, time.monotonic() - started))
            assert process.returncode == 0, err.decode()
            assert fingerprint(read_current(where)[1]) == new
            published = new
            reader.seen = [s for s in reader.seen if s == published]
    finally:
        reader.stop.set()
        reader.join(timeout=30)
    assert not reader.errors, reader.errors[:3]
    # Compactions really were cut short: kills that landed, at least one a night on average.
    assert len(reader.seen) > 0 and killed >= nights, killed
    # What is left: the pointer, the newest generation and the one before, the user's file.
    pointer = load_pointer(storage)
    assert pointer is not None
    left = storage.list_files(CURRENT_PREFIX.rstrip("/"))
    generations = {p.split("/")[1] for p in left if p.count("/") == 2}
    assert pointer["generation"] in generations and len(generations) <= 2, left
    assert user_file in left and storage.read_bytes(user_file) == b"mine"
    assert f"{CURRENT_PREFIX}{POINTER_NAME}" in left
    assert not [p for p in left if p.endswith(".inprogress")], left


@pytest.mark.slow
async def test_killed_compactions_never_show_a_mixed_set_locally(
    start_simulator: StartSimulator, tmp_path: Path
) -> None:
    running = await start_simulator(steps=1500, seed=2601)
    out = tmp_path / "backup"
    await nights_of_killed_compactions(running, str(out), Storage.open(out), tmp_path, 4, 4, 2.0)


@pytest.mark.slow
async def test_killed_compactions_never_show_a_mixed_set_on_s3(
    s3_server: str,
    start_simulator: StartSimulator,
    tmp_path: Path,
) -> None:
    running = await start_simulator(steps=800, seed=2602)
    uri = f"s3://backups/current-{uuid.uuid4().hex[:6]}"
    await nights_of_killed_compactions(running, uri, Storage.open(uri), tmp_path, 2, 3, 3.0)


def test_a_killed_writes_leftovers_and_old_layout_are_removed_not_others(tmp_path: Path) -> None:
    """Only names `compact` writes go: old generations, unfinished ones, the old layout's
    `<collection>.parquet`, temporary files; never a file it did not write."""
    from exporter.backup.compact import remove_stale

    current = tmp_path / "_current"
    names = {
        "gen-20260101T000000Z-aaaaaa/sequenceSteps.parquet": True,  # old generation
        "gen-20260102T000000Z-bbbbbb/.users.parquet.inprogress": True,  # killed write
        "gen-20260103T000000Z-cccccc/sequenceSteps.parquet": False,  # kept (previous)
        "sequenceSteps.parquet": True,  # the old layout
        ".sequences.parquet.inprogress": True,
        "._current.json.inprogress": True,
        "_current.json": False,
        "notes.txt": False,
        "gen-20260101T000000Z-aaaaaa/mine.csv": False,
        "elsewhere/sequenceSteps.parquet": False,
    }
    for name in names:
        (current / name).parent.mkdir(parents=True, exist_ok=True)
        (current / name).write_bytes(b"x")
    removed = remove_stale(Storage.open(tmp_path), CURRENT_PREFIX, {"gen-20260103T000000Z-cccccc"})
    assert sorted(removed) == sorted(CURRENT_PREFIX + n for n, gone in names.items() if gone)
    for name, gone in names.items():
        assert (current / name).exists() != gone, name
    assert not (current / "gen-20260102T000000Z-bbbbbb").exists()  # emptied: removed


@pytest.mark.slow
@pytest.mark.parametrize("damage", ["truncated", "bit-flipped", "deleted"])
async def test_compact_names_a_damaged_part_in_one_line(
    damage: str, start_simulator: StartSimulator, tmp_path: Path
) -> None:
    """A damaged committed file: damage.read_failure's line with compact's advice, exit 4
    (`DamagedFileError`), the published set and its generations untouched. A flipped bit that
    Parquet still decodes must not be compacted as if it were data (its sha256 differs)."""
    running = await start_simulator(steps=300, seed=2603)
    # Pages of 50, so files roll at 100 rows (one page of 1000 would hold every step).
    await run_export(running.base_url, tmp_path, file_rows=100, page_size=50)
    compact(tmp_path)
    before = load_pointer(Storage.open(tmp_path))
    assert before is not None
    generations = sorted(p.name for p in (tmp_path / "_current").iterdir() if p.is_dir())
    part = sorted((tmp_path / "sequenceSteps").glob("part-*.parquet"))[1]
    payload = bytearray(part.read_bytes())
    if damage == "truncated":
        part.write_bytes(payload[: len(payload) // 2])
        reason = f"{len(payload) // 2:,} bytes instead of the {len(payload):,} recorded"
    elif damage == "bit-flipped":
        payload[len(payload) // 2] ^= 0x01
        part.write_bytes(payload)
        reason = "its content differs from the recorded sha256"
    else:
        part.unlink()
        reason = "missing"
    process = await spawn(sys.executable, "-m", "exporter", "compact", str(tmp_path))
    _out, err = await process.communicate()
    assert process.returncode == ExitCode.OUTPUT, err.decode()
    [line] = err.decode().strip().splitlines()
    assert line.startswith(f"error: {part} is damaged: {reason}; the backup's files were not"), line
    assert "Run `exporter export --out DIR --incremental --repair` (with the backup's" in line
    assert re.search(r"\(\d[\d,]* sequenceStep records in this one\), then compact again$", line)
    assert load_pointer(Storage.open(tmp_path)) == before  # the published set is untouched
    after = sorted(p.name for p in (tmp_path / "_current").iterdir() if p.is_dir())
    assert after == generations  # and no half-written generation is left beside it
