"""An API that refuses or ignores `filter[sequenceStep][id]` on sequenceTemplates: incremental runs go on, say so, stay exact and bounded."""

from __future__ import annotations

import random
from collections.abc import Collection, Iterable
from pathlib import Path
from typing import Any

import orjson
import pyarrow as pa
import pytest

import exporter.simulator.app as simulator_app
from exporter.backup.compact import with_inverse_lists
from exporter.backup.detail import NOT_ASKED_BY_STEP
from exporter.model.schema import ResourceType
from exporter.simulator import query
from exporter.simulator.query import Query, QueryError, parse_query
from tests.helpers.checks import assert_compacted_equals_truth
from tests.helpers.runs import run_export
from tests.helpers.sim import Running, StartSimulator, mutate
from tests.helpers.truth import recorded_events

TEMPLATE_BY_STEP = "sequenceTemplate.sequenceStep"


def honour_relation_filters(
    monkeypatch: pytest.MonkeyPatch, running: Running, asked: list[str]
) -> None:
    """Note each collection request that filters sequenceTemplates by step (the simulator
    itself serves `Faults.relation_filters`)."""

    def parse(rtype: ResourceType, pairs: Iterable[tuple[str, str]], **options: Any) -> Query:
        pairs = list(pairs)
        if rtype.name == "sequenceTemplate" and any(
            k == "filter[sequenceStep][id]" for k, _v in pairs
        ):
            asked.append(dict(pairs).get("page[after]", ""))
        return query.parse_query(rtype, pairs, **options)

    monkeypatch.setattr(simulator_app, "parse_query", parse)


def test_the_knob_refuses_or_ignores_the_filter() -> None:
    from exporter.model.schema import resource_type

    rtype = resource_type("sequenceTemplate")
    pairs = [("filter[sequenceStep][id]", "1,2")]
    relations: Collection[str] = ("sequenceStep", "creator")
    assert parse_query(rtype, pairs, relations=relations).relation_filters
    with pytest.raises(QueryError, match="sequenceStep is not a filterable"):
        parse_query(rtype, pairs, relations=relations, refused=["sequenceStep"])
    assert not parse_query(
        rtype, pairs, relations=relations, ignored=["sequenceStep"]
    ).relation_filters


def test_compaction_keeps_a_steps_own_members_the_backup_lacks_when_not_asked_by_step() -> None:
    step_type = pa.list_(pa.int64())
    steps = pa.table(
        {
            "id": pa.array([10, 20], pa.int64()),
            # 10 names 1 (held, its own), 2 (never fetched) and 3 (held, moved to step 20).
            "sequenceTemplateIds": pa.array([[1, 2, 3], []], step_type),
        }
    )
    templates = pa.table(
        {"id": pa.array([1, 3], pa.int64()), "sequenceStepId": pa.array([10, 20], pa.int64())}
    )
    owners = {"sequenceTemplate": templates}
    derived = with_inverse_lists(steps, "sequenceStep", owners)
    assert derived.column("sequenceTemplateIds").to_pylist() == [[1], [3]]
    unsure = with_inverse_lists(steps, "sequenceStep", owners, frozenset({"sequenceTemplate"}))
    assert unsure.column("sequenceTemplateIds").to_pylist() == [[1, 2], [3]]


@pytest.mark.slow
@pytest.mark.parametrize("how", ["refuse", "ignore"])
async def test_incremental_runs_go_on_when_templates_cannot_be_asked_for_by_step(
    start_simulator: StartSimulator,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    how: str,
) -> None:
    running = await start_simulator(steps=1500, seed=77)
    asked: list[str] = []
    honour_relation_filters(monkeypatch, running, asked)
    rng = random.Random(77)
    await run_export(running.base_url, tmp_path, relationships="all", page_size=100)
    running.sim.faults.relation_filters = {TEMPLATE_BY_STEP: how}
    for night in range(2):
        mutate(running, rng, 60)
        # Templates move between steps too (their updatedAt moves, their steps' does not).
        for template in rng.sample(running.sim.truth.ids("sequenceTemplate"), 15):
            running.sim.store.move("sequenceTemplate", template)
        asked.clear()
        with recorded_events() as events:
            _job, result = await run_export(
                running.base_url,
                tmp_path,
                relationships="all",
                incremental=True,
                page_size=100,
                concurrency=4,
                max_url_length=1500,  # many batches by step: each would page through all
                detect_deletes=night == 1,
            )
        assert events.count("walk.not_asked") == 1, events  # warned once
        detail = result.state.resources["sequenceTemplate"].detail.not_asked_by_step
        assert detail is not None and detail["how"] == (
            "refused" if how == "refuse" else "ignored"
        ), detail
        # Bounded: once an answer shows the filter unusable, no more is asked by step (but for
        # requests already under way, one per worker): refused, a request per worker at most;
        # ignored, at most one pass over the collection, not one per batch of steps.
        templates = len(running.sim.truth.ids("sequenceTemplate"))
        bound = 4 if how == "refuse" else -(-templates // 100) + 4
        assert 1 <= len(asked) <= bound, (len(asked), bound)
        manifest = orjson.loads((tmp_path / "_manifest.json").read_bytes())
        assert NOT_ASKED_BY_STEP in manifest["resources"]["sequenceTemplate"]["detail"]
        assert manifest["stats"][NOT_ASKED_BY_STEP]["sequenceTemplate"]["how"] == detail["how"]
        assert result.state.resources["sequenceTemplate"].detail.unrequested is None
    assert_compacted_equals_truth(running, tmp_path)
    # The API honours the filter again: the next run asks by step, and says nothing of it.
    running.sim.faults.relation_filters = {}
    asked.clear()
    _job, result = await run_export(
        running.base_url, tmp_path, relationships="all", incremental=True, page_size=100
    )
    assert result.state.resources["sequenceTemplate"].detail.not_asked_by_step is None
    assert len(asked) > 4
    assert_compacted_equals_truth(running, tmp_path)
