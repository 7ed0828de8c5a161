"""Restore never writes what it should not: lost and slow creates, target identity, other accounts, tampered backups and journals."""

from __future__ import annotations

import asyncio
import random
import signal
import time
from collections import Counter
from pathlib import Path

import orjson
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from exporter.core.errors import ExitCode, UsageError
from exporter.restore.fields import Values, create_body
from exporter.restore.journal import replay
from exporter.restore.restore import default_journal
from exporter.restore.source import backup_steps
from exporter.simulator import Faults
from tests.helpers.restore import (
    KILL_POINTS,
    account,
    assert_restored,
    damage,
    post,
    restore,
    restore_command,
    run_cli,
    settle,
    target,
    writes,
)
from tests.helpers.runs import run_export
from tests.helpers.sim import Running, StartSimulator
from tests.helpers.waiting import wait_until

SEQUENCELESS = 8


def sequenceless_values(i: int) -> Values:
    return {
        "date": None,
        "interval": 60 * (i + 1),
        "order": 1 + i % 3,
        "stepType": ("call", "task", "auto_email")[i % 3],
        "taskAutoskipDelay": None,
        "taskNote": f"no sequence {i}" if i % 2 else None,
        "sequence": None,
        "callPurpose": None,
        "taskPriority": None,
    }


async def exported_with_sequenceless(
    start_simulator: StartSimulator, out: Path, seed: int, steps: int = 200
) -> tuple[Running, dict[int, Values], list[int]]:
    """A simulator whose API takes steps without a sequence, holding SEQUENCELESS of them,
    exported to `out`: (running, the backup's steps, the sequence-less ids)."""
    running = await start_simulator(steps=steps, seed=seed)
    running.sim.write_policy.require_sequence = False
    made = [await post(running, create_body(sequenceless_values(i))) for i in range(SEQUENCELESS)]
    await run_export(running.base_url, out)
    backup = backup_steps(out, None)
    assert all(backup[i]["sequence"] is None for i in made)
    return running, backup, made


def delete(running: Running, ids: list[int]) -> None:
    for step_id in ids:
        running.sim.store.delete("sequenceStep", step_id)


def created_once(running: Running, backup: dict[int, Values]) -> None:
    """The target holds each backed-up step exactly once, counted by every writable field."""
    now = Counter(orjson.dumps(v, option=orjson.OPT_SORT_KEYS) for v in target(running).values())
    then = Counter(orjson.dumps(v, option=orjson.OPT_SORT_KEYS) for v in backup.values())
    assert now == then


# ---------------------------------------------------------------------------- 17.1


@pytest.mark.slow
async def test_a_lost_create_of_a_step_without_sequence_is_found_not_sent_again(
    start_simulator: StartSimulator, tmp_path: Path
) -> None:
    """Every create applied but its answer dropped: a step without a sequence is found by
    what was created above the highest id before sending, equal in every field sent."""
    running, backup, made = await exported_with_sequenceless(start_simulator, tmp_path, seed=31)
    delete(running, made)
    running.sim.faults = Faults(lost_write_rate=1.0, seed=1)
    report = await restore(running, tmp_path, apply=True)
    assert running.sim.counters.writes_lost == SEQUENCELESS
    assert writes(running)["POST"] == 2 * SEQUENCELESS  # once each (and 8 made before export)
    assert report.exit_code is ExitCode.OK, [e.note for e in report.unresolved]
    assert sorted(report.created) == made
    created_once(running, backup)
    assert_restored(running, backup, default_journal(tmp_path, running.base_url))


# ---------------------------------------------------------------------------- 17.2


@pytest.mark.slow
async def test_a_slow_create_killed_and_rerun_at_once_is_never_sent_twice(
    start_simulator: StartSimulator, tmp_path: Path
) -> None:
    """Writes take 2 s; the restore is SIGKILLed once its POSTs reached the API and run again
    at once: the rerun finds nothing yet and must not send them again."""
    running, backup, made = await exported_with_sequenceless(start_simulator, tmp_path, seed=32)
    deleted, _altered = damage(running, random.Random(32), 3, 0)
    gone = [*deleted, *made[:3]]
    delete(running, made[:3])
    running.sim.write_policy.apply_delay_s = 2.0
    command = restore_command(running, tmp_path, "--apply", "--concurrency", "4")
    process = await asyncio.create_subprocess_exec(
        *command, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL
    )
    await wait_until(lambda: writes(running)["POST"] >= SEQUENCELESS + 2, what="POSTs to arrive")
    process.send_signal(signal.SIGKILL)
    assert await process.wait() == -signal.SIGKILL
    sent = writes(running)["POST"] - SEQUENCELESS
    code, out, err = await run_cli(command)  # at once: the writes are still in the API's hands
    assert "Traceback" not in err
    if code != 0:
        assert code == ExitCode.FAILED, err + out
        assert "unresolved" in err and "--resend-lost" in err and len(err.splitlines()) == 1
    await wait_until(lambda: running.sim.counters.in_flight == 0, what="the slow writes to land")
    await settle(running, tmp_path, command)
    assert writes(running)["POST"] - SEQUENCELESS == len(gone)  # each sent once, kill or not
    assert sent >= 2
    created_once(running, backup)
    assert not replay(default_journal(tmp_path, running.base_url)).unresolved


# ---------------------------------------------------------------------------- 17.3


def state_account(out: Path, running: Running) -> None:
    """Give the backup's manifest the `account` the exporter records (its org, as the API
    root states it), as a manifest written by a version that records it would hold."""
    from exporter.backup.manifest import canonical_digest

    path = out / "_manifest.json"
    document = orjson.loads(path.read_bytes())
    document["account"] = account(running).to_json()
    document["manifest_sha256"] = canonical_digest(document)
    path.write_bytes(orjson.dumps(document))


@pytest.mark.slow
async def test_two_spellings_of_one_target_use_one_journal(
    start_simulator: StartSimulator, tmp_path: Path
) -> None:
    running = await start_simulator(steps=240, seed=33)
    await run_export(running.base_url, tmp_path)
    state_account(tmp_path, running)
    backup = backup_steps(tmp_path, None)
    deleted, _altered = damage(running, random.Random(33), 13, 0)
    first = await restore(running, tmp_path, apply=True)
    assert sorted(first.created) == deleted
    port = running.base_url.split(":")[2].split("/")[0]
    for spelling in (
        f"http://localhost:{port}/api/v2/",
        f"HTTP://LOCALHOST:{port}/api/./v2",
        f"http://127.0.0.1:{port}/api//v2/",
    ):
        again = await restore(running, tmp_path, base_url=spelling, apply=True)
        assert again.exit_code is ExitCode.OK
        assert writes(running)["POST"] == 13, spelling  # not one created twice
    assert [p.name for p in (tmp_path / "_restore").glob("*-journal.jsonl")] == [
        default_journal(tmp_path, running.base_url).name
    ]
    assert_restored(running, backup, default_journal(tmp_path, running.base_url))


async def test_a_journal_of_another_account_is_refused(
    start_simulator: StartSimulator, tmp_path: Path
) -> None:
    """The journal records whose it is: handed to a restore into another account (the same
    URL spelling is not needed: another org behind it is enough), it is refused."""
    running = await start_simulator(steps=240, seed=34, org_guid="acct-one")
    await run_export(running.base_url, tmp_path)
    damage(running, random.Random(34), 3, 0)
    await restore(running, tmp_path, apply=True)
    journal = default_journal(tmp_path, running.base_url)
    assert b'"org":"acct-one"' in journal.read_bytes().splitlines()[0]
    other = await start_simulator(steps=240, seed=34, org_guid="acct-two")
    with pytest.raises(UsageError, match="written against"):
        await restore(other, tmp_path, journal=journal, apply=True, into_another_account=True)
    assert writes(other) == Counter()


# ---------------------------------------------------------------------------- 17.4


@pytest.mark.slow
async def test_a_backup_of_another_account_is_refused_then_only_created(
    start_simulator: StartSimulator, tmp_path: Path
) -> None:
    """Account C's backup into account G, whose steps share ids with C's (one seed): refused;
    with --into-another-account every step is created and none of G's is patched."""
    source = await start_simulator(steps=120, seed=35, org_guid="acct-C")
    await run_export(source.base_url, tmp_path)
    backup = backup_steps(tmp_path, None)
    into = await start_simulator(steps=120, seed=35, org_guid="acct-G")
    _deleted, altered = damage(into, random.Random(35), 0, 5)  # G's steps differ from C's
    theirs = target(into)
    with pytest.raises(UsageError, match="--into-another-account"):
        await restore(into, tmp_path, apply=True)
    assert writes(into) == Counter()
    report = await restore(into, tmp_path, apply=True, into_another_account=True)
    # (This API refuses a step without a sequence: those few fail with a 422.)
    without = sorted(i for i, v in backup.items() if v["sequence"] is None)
    assert sorted(e.old_id for e in report.failed) == without
    assert {e.status for e in report.failed} == {422}
    assert writes(into) == Counter({"POST": len(backup)})  # no PATCH at all
    now = target(into)
    assert all(now[i] == theirs[i] for i in theirs)  # G's own steps untouched
    assert all(now[report.created[i]] == v for i, v in backup.items() if i not in without)
    assert len(now) == len(theirs) + len(backup) - len(without)
    posts = len(backup) + len(without)  # the refused ones are tried again, nothing else
    again = await restore(into, tmp_path, apply=True, into_another_account=True)
    assert writes(into) == Counter({"POST": posts})
    assert sorted(e.old_id for e in again.failed) == without
    assert altered  # (what made G's steps differ)


# ---------------------------------------------------------------------------- 12.8


async def _backup(start_simulator: StartSimulator, out: Path, seed: int) -> Running:
    running = await start_simulator(steps=240, seed=seed)
    await run_export(running.base_url, out)
    return running


@pytest.mark.slow
async def test_a_tampered_parquet_file_is_refused_before_any_write(
    start_simulator: StartSimulator, tmp_path: Path
) -> None:
    running = await _backup(start_simulator, tmp_path, seed=36)
    damage(running, random.Random(36), 2, 2)
    [part, *_rest] = sorted((tmp_path / "sequenceSteps").rglob("*.parquet"))
    table = pq.read_table(part)
    order = table.column("order")
    table = table.set_column(
        table.column_names.index("order"), "order", pc.add(order, pc.cast(1, order.type))
    )
    pq.write_table(table, part)  # a valid Parquet file whose content is not the backup's
    code, out, err = await run_cli(restore_command(running, tmp_path, "--apply"))
    assert code == ExitCode.VERIFY_MISMATCH, err + out
    assert part.name in err and "sha256" in err and len(err.splitlines()) == 1
    assert writes(running) == Counter()


@pytest.mark.slow
async def test_an_edited_manifest_or_a_path_outside_is_refused(
    start_simulator: StartSimulator, tmp_path: Path
) -> None:
    running = await _backup(start_simulator, tmp_path, seed=37)
    manifest_path = tmp_path / "_manifest.json"
    original = manifest_path.read_bytes()
    document = orjson.loads(original)
    document["source"] = "http://elsewhere.invalid/api/v2"
    manifest_path.write_bytes(orjson.dumps(document))
    code, _out, err = await run_cli(restore_command(running, tmp_path))
    assert code == ExitCode.VERIFY_MISMATCH and "manifest_sha256" in err, err
    # A path that climbs out, with the digest made to match: still refused.
    from exporter.backup.manifest import canonical_digest

    document = orjson.loads(original)
    step_file = next(f for f in document["files"] if f["type"] == "sequenceStep")
    step_file["path"] = "../elsewhere/" + step_file["path"]
    document["manifest_sha256"] = canonical_digest(document)
    manifest_path.write_bytes(orjson.dumps(document))
    code, _out, err = await run_cli(restore_command(running, tmp_path))
    assert code == ExitCode.VERIFY_MISMATCH and "outside the backup" in err, err
    assert writes(running) == Counter()


async def test_a_forged_journal_line_cannot_make_restore_patch_an_unrelated_step(
    start_simulator: StartSimulator, tmp_path: Path
) -> None:
    running = await _backup(start_simulator, tmp_path, seed=38)
    backup = backup_steps(tmp_path, None)
    deleted, _altered = damage(running, random.Random(38), 2, 0)
    await restore(running, tmp_path, apply=True)  # a real journal
    posts = writes(running)["POST"]
    journal = default_journal(tmp_path, running.base_url)
    lines = journal.read_bytes()
    step = deleted[0]
    delete(running, [replay(journal).created[step]])  # gone again: restore wants it back
    now = target(running)
    victim = next(i for i in sorted(now) if now[i] != backup[step])  # an unrelated live step
    forged: list[bytes] = [
        # 1. a `done` that closes no intent
        orjson.dumps(
            {"write": "f00d", "op": "create", "old_id": step, "state": "done", "new_id": victim}
        ),
        # 2. an intent and its `done` naming a step that existed long before the intent
        orjson.dumps(
            {
                "write": "f00e",
                "op": "create",
                "old_id": step,
                "key": {"sequence": backup[step]["sequence"]},
                "seen": [],
                "above": None,
                "body": create_body(backup[step]),
                "at": time.time(),
                "state": "intent",
            }
        )
        + b"\n"
        + orjson.dumps(
            {"write": "f00e", "op": "create", "old_id": step, "state": "done", "new_id": victim}
        ),
    ]
    for forgery in forged:
        journal.write_bytes(lines + forgery + b"\n")
        with pytest.raises(UsageError, match="journal"):
            await restore(running, tmp_path, apply=True)
        assert writes(running) == Counter({"POST": posts})  # not a PATCH, not a POST
        assert target(running)[victim] == now[victim]


@pytest.mark.slow
async def test_restore_writes_go_through_the_api_window(
    start_simulator: StartSimulator, tmp_path: Path
) -> None:
    """The API allows 20 requests a second: restore's POSTs and PATCHes are paced by the same
    window as its reads, so not one 429 comes back."""
    running = await start_simulator(steps=300, seed=39, rate_limit=20, rate_window=1.0)
    await run_export(running.base_url, tmp_path)
    backup = backup_steps(tmp_path, None)
    running.sim.counters.rate_limited = 0
    damage(running, random.Random(39), 30, 15)
    report = await restore(running, tmp_path, apply=True)
    assert report.exit_code is ExitCode.OK
    assert running.sim.counters.rate_limited == 0
    assert_restored(running, backup, default_journal(tmp_path, running.base_url))


# ---------------------------------------------------------------------------- kills


@pytest.mark.slow
async def test_sigkill_at_random_moments_with_slow_writes_and_steps_without_sequence(
    start_simulator: StartSimulator, tmp_path: Path
) -> None:
    """Writes take 0.3 s (killed mid-write, they land after the process is gone), some steps
    have no sequence, some answers are lost: SIGKILL the restore at random moments and run
    it again at once, until enough kills have landed; after each round the target holds each
    backed-up step exactly once, compared with the simulator's truth."""
    running, backup, _made = await exported_with_sequenceless(start_simulator, tmp_path, seed=41)
    policy = running.sim.write_policy
    running.sim.faults = Faults(lost_write_rate=0.05, seed=6)
    rng = random.Random(41)
    command = restore_command(running, tmp_path, "--apply", "--concurrency", "4")
    journal = default_journal(tmp_path, running.base_url)

    def damage_both() -> None:
        records = sorted(running.sim.truth.records("sequenceStep"), key=lambda r: r["id"])
        bare = [r["id"] for r in records if not r["relationships"]["sequence"]["data"]]
        delete(running, rng.sample(bare, 3))
        damage(running, rng, 8, 4)

    damage_both()
    policy.apply_delay_s = 0.3
    started = asyncio.get_running_loop().time()
    await settle(running, tmp_path, command)
    duration = asyncio.get_running_loop().time() - started
    created_once(running, backup)
    kills = 0
    for _trial in range(40):  # bounded; a trial whose kills all came too late lands none
        if kills >= KILL_POINTS:
            break
        damage_both()
        for delay in [*(rng.uniform(0.2 * duration, duration) for _ in range(3)), None]:
            started = asyncio.get_running_loop().time()
            code, out, err = await run_cli(command, delay)  # at once, writes still in flight
            assert "Traceback" not in err, err
            if code == -signal.SIGKILL:
                kills += 1
                continue
            assert code in (0, ExitCode.FAILED), err + out
            assert code == 0 or "unresolved" in err, err + out
            duration = min(duration, asyncio.get_running_loop().time() - started)
            break
        await wait_until(
            lambda: running.sim.counters.in_flight == 0, what="the slow writes to land"
        )
        await settle(running, tmp_path, command)
        created_once(running, backup)
        assert_restored(running, backup, journal)
    assert kills >= KILL_POINTS
    assert not replay(journal).unresolved
    # The lost and killed creates were settled by lookups, not by sending them again.
    lines = [orjson.loads(line) for line in journal.read_bytes().splitlines()]
    found = sum(1 for line in lines if line.get("how") == "lookup")
    resent = sum(1 for line in lines if line.get("how") == "operator")
    print(f"kills {kills}, creates found by lookup {found}, resent on the operator's word {resent}")
    assert found >= 1
    code, out, _err = await run_cli(command)
    assert code == 0 and f"{len(backup)} equal" in out


async def test_two_journals_for_one_account_or_an_older_one_are_refused(
    start_simulator: StartSimulator, tmp_path: Path
) -> None:
    running = await start_simulator(steps=120, seed=42)
    await run_export(running.base_url, tmp_path)
    damage(running, random.Random(42), 2, 0)
    await restore(running, tmp_path, apply=True)
    journal = default_journal(tmp_path, running.base_url)
    copy = journal.with_name("copy-journal.jsonl")
    copy.write_bytes(journal.read_bytes())
    with pytest.raises(UsageError, match="2 restore journals are for"):
        await restore(running, tmp_path, apply=True)
    # An older version's journal, which does not say whose it is, named by the host spelling.
    copy.write_bytes(b"".join(journal.read_bytes().splitlines(keepends=True)[1:]))
    with pytest.raises(UsageError, match="does not say which account"):
        await restore(running, tmp_path)
    assert writes(running) == Counter({"POST": 2})
    report = await restore(running, tmp_path, journal=copy, apply=True)  # named: bound
    assert report.exit_code is ExitCode.OK and writes(running) == Counter({"POST": 2})
    assert b'"state":"target"' in copy.read_bytes().splitlines()[-1]
