"""Restores against a simulator: in this process or as `python -m exporter restore` subprocesses, the damage they mend, and the check that every step is back once."""

from __future__ import annotations

import os
import random
import sys
from collections import Counter
from pathlib import Path
from typing import Any

import aiohttp
import orjson

from exporter.api.account import Account, canonical_base_url
from exporter.api.auth import StaticToken
from exporter.core.config import RateLimit
from exporter.core.errors import ExitCode
from exporter.core.secrets import Secret
from exporter.restore.fields import Values, lookup_key, values_of_record
from exporter.restore.journal import read_mapping, replay
from exporter.restore.report import RestoreReport
from exporter.restore.restore import Restore, RestoreSettings, default_journal
from exporter.restore.source import backup_steps
from tests.helpers.runs import run_cli, run_export
from tests.helpers.sim import TOKEN, Running, StartSimulator

JSONAPI = "application/vnd.api+json"


async def exported(
    start_simulator: StartSimulator, out: Path, steps: int = 240, seed: int = 7, **config: Any
) -> tuple[Running, dict[int, Values]]:
    running = await start_simulator(steps=steps, seed=seed, **config)
    await run_export(running.base_url, out)
    return running, backup_steps(out, None)


async def restore(
    running: Running, out: Path, base_url: str | None = None, **overrides: Any
) -> RestoreReport:
    """A restore in this process from the backup in `out` into `running` (or `base_url`, another
    spelling of it), without waits between lookups."""
    settings = RestoreSettings(
        directory=out,
        base_url=base_url or running.base_url,
        rate_limit=RateLimit(100_000, 1.0),
        lookup_delay=0.0,
        backoff_base=0.01,
        **overrides,
    )
    return await Restore(settings, StaticToken(Secret(TOKEN))).run()


def account(running: Running) -> Account:
    """The account a simulator stands for, as its API root states it."""
    cfg = running.sim.cfg
    return Account(canonical_base_url(running.base_url), cfg.org_guid or f"sim-org-{cfg.seed}")


def target(running: Running) -> dict[int, Values]:
    return {r["id"]: values_of_record(r) for r in running.sim.truth.records("sequenceStep")}


def damage(
    running: Running, rng: random.Random, deletes: int, alters: int
) -> tuple[list[int], list[int]]:
    """Delete some steps and change a writable field of others (alive, distinct). Only steps
    with a sequence are deleted: the API refuses to create one without (a test of its own)."""
    records = sorted(running.sim.truth.records("sequenceStep"), key=lambda r: r["id"])
    with_sequence = [r["id"] for r in records if r["relationships"]["sequence"]["data"]]
    deleted = rng.sample(with_sequence, deletes)
    altered = rng.sample([r["id"] for r in records if r["id"] not in deleted], alters)
    for step_id in deleted:
        running.sim.store.delete("sequenceStep", step_id)
    for step_id in altered:
        running.sim.store.update("sequenceStep", step_id)
    return sorted(deleted), sorted(altered)


def writes(running: Running) -> Counter[str]:
    routes = running.sim.counters.by_route
    return Counter({k.split()[0]: v for k, v in routes.items() if k.startswith(("POST", "PATCH"))})


def key(values: Values) -> tuple[Any, ...]:
    return tuple(lookup_key(values).values())


def assert_restored(running: Running, backup: dict[int, Values], journal: Path) -> None:
    """Every backed-up step is on the target exactly once, with the backup's writable fields."""
    now = target(running)
    mapping = read_mapping(journal) if journal.exists() else {}
    for old_id, values in backup.items():
        step_id = old_id if old_id in now else mapping.get(old_id)
        assert step_id in now, f"step {old_id} is not on the target"
        assert now[step_id] == values, old_id
    # Exactly one target step per backed-up step: nothing was created twice.
    assert Counter(key(v) for v in now.values()) == Counter(key(v) for v in backup.values())
    assert len(now) == len(backup)


async def post(running: Running, body: dict[str, Any]) -> int:
    async with (
        aiohttp.ClientSession() as session,
        session.post(
            running.base_url + "/sequenceSteps",
            data=orjson.dumps(body),
            headers={"Authorization": f"Bearer {TOKEN}", "Content-Type": JSONAPI},
        ) as response,
    ):
        assert response.status == 201
        return int((await response.json(content_type=None))["data"]["id"])


def restore_command(running: Running, out: Path, *extra: str) -> list[str]:
    return [
        sys.executable,
        "-m",
        "exporter",
        "restore",
        str(out),
        "--base-url",
        running.base_url,
        "--token",
        TOKEN,
        "--rate-limit",
        "100000/1",
        "--lookup-delay",
        "0.05",
        *extra,
    ]


KILL_POINTS = int(os.environ.get("RESTORE_KILL_POINTS", "8"))


async def settle(running: Running, out: Path, command: list[str]) -> None:
    """Run the restore to its end once no write is in the API's hands: a create still
    unresolved then was never applied (checked against the simulator's truth), and only then,
    as an operator who checked would, is it sent again with --resend-lost."""
    code, stdout, err = await run_cli(command)
    assert "Traceback" not in err
    if code == 0:
        return
    assert code == ExitCode.FAILED and "unresolved" in err, err + stdout
    journal = default_journal(out, running.base_url)
    backup = backup_steps(out, None)
    now = Counter(orjson.dumps(v, option=orjson.OPT_SORT_KEYS) for v in target(running).values())
    then = Counter(orjson.dumps(v, option=orjson.OPT_SORT_KEYS) for v in backup.values())
    for intent in replay(journal).unresolved:
        shown = orjson.dumps(backup[intent.old_id], option=orjson.OPT_SORT_KEYS)
        assert now[shown] < then[shown], f"step {intent.old_id} landed but was not found"
    code, stdout, err = await run_cli([*command, "--resend-lost"])
    assert code == 0, err + stdout
