"""Request budgets of a resumed run: killed mid-crawl, the resume asks only for what the checkpoint does not hold, within a stated number of pages over the minimum the data allows."""

from __future__ import annotations

import bisect
import math
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import orjson
import pyarrow.parquet as pq
import pytest

from exporter.simulator import Faults
from tests.helpers.checks import assert_manifest_matches_files
from tests.helpers.requests import watch
from tests.helpers.runs import export_command, kill_export_when, run_to_completion
from tests.helpers.sim import StartSimulator
from tests.helpers.truth import (
    assert_rows_equal,
    expected_related,
    expected_steps,
    read_rows,
    referenced,
)

pytestmark = pytest.mark.slow  # a real export killed, then resumed: seconds

STEPS = 3000
PAGE = 50  # records a page: 60 pages of steps, 15 in each of the 4 partitions


def step_ranges(state: dict[str, Any]) -> list[tuple[int, int, int, bool]]:
    """The checkpoint's sequenceStep partitions: (low, high, done_through, finished)."""
    return [(p[1], p[2], p[3], p[4]) for p in state["resources"]["sequenceStep"]["partitions"]]


def ids_in(ids: list[int], low: int, high: int) -> int:
    """How many of the sorted `ids` lie in [low, high]."""
    return bisect.bisect_right(ids, high) - bisect.bisect_left(ids, low)


def committed_in_unfinished(state: dict[str, Any], ids: list[int]) -> int:
    """Records the checkpoint holds in partitions it has not finished: what a resume that
    started them again from their low bound would ask for a second time."""
    return sum(ids_in(ids, low, done) for low, _h, done, end in step_ranges(state) if not end)


def held_ids(out: Path, state: dict[str, Any], type_name: str) -> set[int]:
    """The ids of `type_name` in the part files the checkpoint names (what a resume keeps)."""
    files = state["resources"].get(type_name, {}).get("files", [])
    return {
        int(value)
        for entry in files
        for value in pq.read_table(out / entry["path"], columns=["id"]).column("id").to_pylist()
    }


async def test_a_resumed_run_asks_only_for_what_the_checkpoint_does_not_hold(
    start_simulator: StartSimulator, tmp_path: Path
) -> None:
    """Killed (SIGKILL) once a third of the steps is committed in partitions still unfinished
    and the walk has committed sequences, then resumed with the request log cleared. The
    resume's budget, derived from the data:

    - the minimum: one `identify` request, then every step not yet committed, R = the truth's
      ids in each unfinished partition's (done_through, high], at PAGE a page: ceil(R / PAGE);
      and the sequences the steps refer to that no committed file holds, each asked once.
    - over it, at most one page per chain (a chain's last page is short, or a page cut by a
      split's lowered bound still carries records past it) plus one per split (the halved
      chain's page that runs past its new bound): U + 2 S, U the unfinished partitions, S the
      splits this run made (chains started below a committed bound would fail first).

    What was in flight at the kill (fetched, not committed) is inside the minimum: it lies past
    done_through. Bug caught: a resume restarting a partition from its low bound instead of
    past its done_through (`PartitionState.resume_from` returning `low`) asks again for every
    committed step of the unfinished partitions, over 1,000 here (20 pages, more than U + 2 S);
    the walk's resume not seeded with the committed sequences (`walk.seed(target, [], ...)` in
    `export/relationships.py`) asks for them again. Both checked by hand. Counts of requests,
    not times."""
    running = await start_simulator(steps=STEPS, seed=73, faults=Faults(latency_s=0.004))
    out = tmp_path / "backup"
    step_ids = sorted(int(i) for i in running.sim.truth.ids("sequenceStep"))
    command = export_command(
        running, out, "--page-size", str(PAGE), "--concurrency", "2", "--relationships", "sequence"
    )

    def ready(state: dict[str, Any]) -> bool:
        """A third of the steps committed in unfinished partitions, and sequences committed."""
        sequences = state["resources"].get("sequence", {}).get("files")
        return committed_in_unfinished(state, step_ids) >= STEPS // 3 and bool(sequences)

    await kill_export_when(command, out, ready)
    killed = orjson.loads((out / "_checkpoint.json").read_bytes())  # as the kill left it
    assert killed["status"] == "running" and ready(killed)

    log = watch(running)
    code, _codes = await run_to_completion(command, [])
    assert code == 0
    manifest = orjson.loads((out / "_manifest.json").read_bytes())
    assert manifest["stats"]["resumed"] is True

    # Partitions with ids left to ask for (one whose done_through reached its high bound
    # costs no request: the resume knows it is complete).
    unfinished = [
        (done + 1, high) for _l, high, done, end in step_ranges(killed) if not end and done < high
    ]
    remaining = sum(ids_in(step_ids, start, high) for start, high in unfinished)
    step_pages: list[tuple[int, bool]] = []  # (first id asked, a chain's first page)
    others = 0
    for line in log.lines():
        parts = urlsplit(line)
        query = parse_qs(parts.query)
        collection = parts.path.rstrip("/").rsplit("/", 1)[-1]
        if collection == "sequenceSteps" and "filter[id]" in query:
            low = int(query["filter[id]"][0].split("..")[0])
            step_pages.append((low, "page[after]" not in query))
        elif collection != "sequences":
            others += 1
    assert others == 1, log.lines()  # identify; no probe: the partitions are the checkpoint's

    # No chain starts at or below what a partition committed.
    starts = [low for low, first in step_pages if first]
    for low in starts:
        assert any(start <= low <= high for start, high in unfinished), (low, unfinished)
    splits = len(starts) - len(unfinished)
    assert splits >= 0, (starts, unfinished)
    least = math.ceil(remaining / PAGE)
    most = least + len(unfinished) + 2 * splits
    assert least <= len(step_pages) <= most, (
        f"{len(step_pages)} step pages for {remaining} uncommitted steps: at least {least}, "
        f"at most {most} ({len(unfinished)} partitions resumed, {splits} splits)"
    )

    # The walk asks for each sequence no committed file holds, once, and for no other.
    held = held_ids(out, killed, "sequence")
    assert held  # the walk's resume is exercised: some sequences are committed
    steps = list(running.sim.truth.records("sequenceStep"))
    wanted = referenced(steps)["sequence"]
    asked = log.asked_ids("sequences")
    assert set(asked) == wanted - held and set(asked.values()) <= {1}

    # And what it fetched is the truth (checked last: the budget is what this test is about).
    assert_rows_equal(read_rows(out / "sequenceSteps"), expected_steps(running.sim))
    sequences = expected_related(running.sim, steps)["sequence"]
    assert_rows_equal(read_rows(out / "sequences"), sorted(sequences, key=lambda r: r["id"]))
    assert_manifest_matches_files(out)
