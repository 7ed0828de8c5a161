"""A simulator for a test: its static token, `Running`, subprocesses in a clean environment, and the changes made to its data between runs."""

from __future__ import annotations

import asyncio
import os
import random
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from exporter.model.schema import RESOURCE_TYPES
from exporter.simulator import Simulator

TOKEN = "test-token-3b9f"  # the simulator's static token in tests


@dataclass
class Running:
    sim: Simulator
    root_url: str

    @property
    def base_url(self) -> str:
        return self.root_url + "/api/v2"


StartSimulator = Callable[..., Awaitable[Running]]


def clean_env(**extra: str) -> dict[str, str]:
    """This process's environment without OUTREACH_* (so no developer's settings leak into a
    test's subprocess), plus `extra`."""
    return {**{k: v for k, v in os.environ.items() if not k.startswith("OUTREACH_")}, **extra}


async def spawn(*command: str, env: dict[str, str] | None = None) -> asyncio.subprocess.Process:
    """Start a subprocess with its output piped, in `clean_env()` unless told otherwise."""
    return await asyncio.create_subprocess_exec(
        *command,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=clean_env() if env is None else env,
    )


CHILDREN = ("mailing", "call", "task", "sequenceTemplate")


def mutate(running: Running, rng: random.Random, count: int) -> Counter[str]:
    """Changes of the kinds the API shows in `updatedAt` (or by an id disappearing):
    steps inserted, updated and deleted (childless ones), mailings, calls and tasks inserted,
    updated and deleted, and the other related records updated."""
    sim, store = running.sim, running.sim.store
    done: Counter[str] = Counter()
    parents = {
        r["relationships"]["sequenceStep"]["data"]["id"]
        for t in CHILDREN
        for r in sim.truth.records(t)
        if r["relationships"]["sequenceStep"]["data"] is not None
    }
    for _ in range(count):
        kind = rng.choice(["insert", "update", "delete"])
        type_name = rng.choice(RESOURCE_TYPES)
        ids = sim.truth.ids(type_name)
        if kind == "insert" and type_name in ("sequenceStep", "mailing", "call", "task"):
            store.insert(type_name)
        elif kind == "delete" and type_name in ("mailing", "call", "task"):
            store.delete(type_name, rng.choice(ids))
        elif kind == "delete" and type_name == "sequenceStep":
            childless = [i for i in ids if i not in parents]
            store.delete(type_name, rng.choice(childless))
        elif ids:
            kind = "update"
            store.update(type_name, rng.choice(ids))
        done[f"{kind} {type_name}"] += 1
    return done


PER_KIND = 3  # per type and night: inserts, updates, moves and deletes each


KINDS = ("insert", "update", "move", "delete")


# Lookup tables keep a few records: the API's accounts always have some.
KEEP_AT_LEAST = {"user": 3, "callPurpose": 3, "taskPriority": 3}


def night(running: Running, rng: random.Random) -> Counter[str]:
    """One night's changes: of every kind in every type (moves only where a type has a
    relationship to move: a task priority has none)."""
    store, truth = running.sim.store, running.sim.truth
    done: Counter[str] = Counter()
    for type_name in RESOURCE_TYPES:
        for kind in KINDS:
            for _ in range(PER_KIND):
                ids = truth.ids(type_name)
                if kind == "insert":
                    store.insert(type_name)
                elif kind == "update":
                    store.update(type_name, rng.choice(ids))
                elif kind == "move":
                    if store.move(type_name, rng.choice(ids)) is None:
                        continue
                elif len(ids) <= KEEP_AT_LEAST.get(type_name, 0):
                    continue
                else:
                    store.delete(type_name, rng.choice(ids))
                done[f"{kind} {type_name}"] += 1
    return done
