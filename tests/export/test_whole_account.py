"""`exporter export --resources all` against a simulated whole account, as a real subprocess: a full run, kills and resume, nights of changes in every type then compact, and a token missing scopes, each against the simulator's ground truth for every type."""

from __future__ import annotations

import asyncio
import random
import signal
import sys
from collections import Counter
from pathlib import Path
from typing import Any

import orjson
import pyarrow.parquet as pq
import pytest

from exporter.model.schema import Kind, resource_type
from exporter.simulator import Faults
from tests.helpers.runs import export_command, kill_now, mtime_ns, run_cli
from tests.helpers.sim import Running, StartSimulator, spawn
from tests.helpers.truth import assert_account_equals_truth, compacted_current

pytestmark = pytest.mark.slow  # several real exports of a ~3,500-record account each

PROSPECTS = 150  # the account's size: ~2,000 records beyond the step world, every type present
STEPS = 300  # the step world's share
SEED = 14
REFUSED_EXIT = 8  # the documented exit of a run some of whose collections the token may not read


def account_command(running: Running, out: Path, *extra: str) -> list[str]:
    """A real `exporter export --resources all` of the simulated account, with the test
    command's small pages and files and frequent commits (a kill has somewhere to land)."""
    return export_command(running, out, "--resources", "all", *extra)


async def start_account(start_simulator: StartSimulator, **config: Any) -> Running:
    return await start_simulator(
        prospects=PROSPECTS, steps=STEPS, seed=SEED, rate_limit=10**9, **config
    )


async def finish(command: list[str]) -> None:
    code, stdout, stderr = await run_cli(command)
    assert code == 0, (code, stdout[-2000:], stderr[-2000:])
    assert "Traceback" not in stderr


async def test_a_full_run_equals_the_ground_truth_of_every_type(
    start_simulator: StartSimulator, tmp_path: Path
) -> None:
    running = await start_account(start_simulator)
    out = tmp_path / "backup"
    await finish(account_command(running, out))
    assert_account_equals_truth(running.sim, out)
    manifest = orjson.loads((out / "_manifest.json").read_bytes())
    held = {entry["type"] for entry in manifest["files"]}
    empty = [t for t in running.sim.truth.types() if running.sim.truth.count(t) == 0]
    assert held == set(running.sim.truth.types()) - set(empty), held ^ set(
        running.sim.truth.types()
    )


async def kill_at_next_commit(command: list[str], checkpoint: Path, deadline: float = 30) -> bool:
    """Start `command`, wait until the checkpoint file changes (a commit happened in this run),
    then SIGKILL it. True when the kill landed; False when the run finished first."""
    before = mtime_ns(checkpoint)
    process = await spawn(*command)
    loop = asyncio.get_running_loop()
    until = loop.time() + deadline
    while process.returncode is None and mtime_ns(checkpoint) == before:
        assert loop.time() < until, "no commit within the deadline"
        await asyncio.sleep(0.005)
    landed = kill_now(process) if process.returncode is None else False
    _out, err = await process.communicate()
    assert b"Traceback" not in err, err.decode()
    return landed and process.returncode == -signal.SIGKILL


async def test_killed_at_three_commits_then_resumed_equals_the_ground_truth(
    start_simulator: StartSimulator, tmp_path: Path
) -> None:
    # A little latency per response, so a run spans many commits.
    running = await start_account(start_simulator, faults=Faults(latency_s=0.01))
    out = tmp_path / "backup"
    command = account_command(running, out, "--concurrency", "2")
    landed = [await kill_at_next_commit(command, out / "_checkpoint.json") for _ in range(3)]
    assert landed == [True, True, True], landed
    await finish(command)
    assert_account_equals_truth(running.sim, out)
    leftovers = [p for p in out.rglob("*") if p.name.endswith(".inprogress")]
    assert not leftovers, leftovers


# Lookup types keep a few records, as a real account always has some.
KEEP_AT_LEAST = 3


def account_night(running: Running, rng: random.Random) -> Counter[str]:
    """One night's changes in every simulated type: an insert, an update and a relationship
    move where the type can change at all (a log's records never do), and a delete where the
    type keeps more than a few records."""
    store, truth = running.sim.store, running.sim.truth
    done: Counter[str] = Counter()
    for type_name in truth.types():
        store.insert(type_name)
        done[f"insert {type_name}"] += 1
        ids = store.ids(type_name)
        if not store.tables[type_name].append_only:
            store.update(type_name, rng.choice(ids))
            done[f"update {type_name}"] += 1
            if store.move(type_name, rng.choice(ids)) is not None:
                done[f"move {type_name}"] += 1
        ids = store.ids(type_name)
        if len(ids) > KEEP_AT_LEAST:
            store.delete(type_name, rng.choice(ids))
            done[f"delete {type_name}"] += 1
    return done


def tombstoned(out: Path) -> set[tuple[str, str]]:
    """(type, id as text) of every tombstone the backup holds."""
    manifest = orjson.loads((out / "_manifest.json").read_bytes())
    stones: set[tuple[str, str]] = set()
    for entry in manifest["files"]:
        if entry["type"] == "_tombstone":
            table = pq.read_table(out / entry["path"], columns=["type", "id"])
            for row in table.to_pylist():
                stones.add((row["type"], str(row["id"])))
    return stones


async def test_nights_of_changes_in_every_type_then_compact_equal_the_ground_truth(
    start_simulator: StartSimulator, tmp_path: Path
) -> None:
    running = await start_account(start_simulator)
    truth = running.sim.truth
    rng = random.Random(SEED)
    out = tmp_path / "backup"
    await finish(account_command(running, out))
    changes: Counter[str] = Counter()
    sizes = {t: running.sim.store.ids(t) for t in truth.types()}
    for _night in range(2):
        held = {t: {str(i) for i in ids} for t, ids in _held_ids(out, running).items()}
        changes += account_night(running, rng)
        await finish(account_command(running, out, "--incremental", "--detect-deletes"))
        code, stdout, stderr = await run_cli(
            [sys.executable, "-m", "exporter", "compact", str(out)]
        )
        assert code == 0, (stdout, stderr)
        assert_account_equals_truth(running.sim, out, compacted=True)
        gone = {
            (t, str(i))
            for t in truth.types()
            if resource_type(t).id_kind is not Kind.STRING  # a log with string ids is kept
            for i in truth.deleted_ids(t)
            if str(i) in held[t]
        }
        missing = gone - tombstoned(out)
        assert not missing, f"deleted since the last run but not tombstoned: {sorted(missing)[:10]}"
    for type_name in truth.types():
        assert changes[f"insert {type_name}"] == 2, type_name
    # A delete every night in each type that keeps more than a few records (`account_night`).
    big = {t for t in truth.types() if len(sizes[t]) > KEEP_AT_LEAST}
    assert big and all(changes[f"delete {t}"] == 2 for t in big), sorted(big)


def _held_ids(out: Path, running: Running) -> dict[str, set[Any]]:
    """Ids the backup holds now, per type (from a fresh compaction's `_current/` when there is
    one, else the part files)."""
    if (out / "_current").exists():
        return {t: set(rows) for t, rows in compacted_current(out).items()}
    manifest = orjson.loads((out / "_manifest.json").read_bytes())
    ids: dict[str, set[Any]] = {t: set() for t in running.sim.truth.types()}
    for entry in manifest["files"]:
        if entry["type"] in ids:
            ids[entry["type"]] |= set(
                pq.read_table(out / entry["path"], columns=["id"])["id"].to_pylist()
            )
    return ids


DENIED = {"prospect": "prospects.read", "event": "events.read"}


def _mentions(document: Any, key_part: str) -> list[Any]:
    """Every value of `document` (JSON) under a key containing `key_part`."""
    found: list[Any] = []
    if isinstance(document, dict):
        for key, value in document.items():
            if key_part in key.lower():
                found.append(value)
            found += _mentions(value, key_part)
    elif isinstance(document, list):
        for value in document:
            found += _mentions(value, key_part)
    return found


async def test_a_token_without_some_scopes_exports_the_rest_and_names_what_was_refused(
    start_simulator: StartSimulator, tmp_path: Path
) -> None:
    running = await start_account(start_simulator, denied_scopes=frozenset(DENIED.values()))
    out = tmp_path / "backup"
    code, stdout, stderr = await run_cli(account_command(running, out))
    assert code == REFUSED_EXIT, (code, stdout[-2000:], stderr[-2000:])
    assert "Traceback" not in stderr
    for scope in DENIED.values():
        assert scope in stdout + stderr, scope
    others = [t for t in running.sim.truth.types() if t not in DENIED]
    assert_account_equals_truth(running.sim, out, others)
    manifest = orjson.loads((out / "_manifest.json").read_bytes())
    assert not [e for e in manifest["files"] if e["type"] in DENIED]
    # The manifest names each refused type with the scope to add (README, "Exit codes": 8).
    refused = _mentions(manifest, "refused")
    assert DENIED in refused, refused
