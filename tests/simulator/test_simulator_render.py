"""The byte renderer against the dict reference rendering, and the record cache's admission policy."""

from __future__ import annotations

import orjson
import pytest

from exporter.model import schema
from exporter.simulator import Simulator, SimulatorConfig
from exporter.simulator.data import BASE_TIME, iso_date, iso_datetime
from exporter.simulator.render import Stamps, TypeRenderer


def _assert_renders_like_the_reference(sim: Simulator) -> int:
    """Every live row of every type: spliced bytes == orjson.dumps(dict rendering)."""
    store = sim.store
    checked = 0
    for name, table in store.tables.items():
        for row in range(len(table)):
            if not table.alive[row]:
                continue
            expected = store.reference_bytes(name, row)
            assert store.record_bytes(name, row) == expected, (name, row)
            checked += 1
    return checked


@pytest.mark.slow
@pytest.mark.parametrize("specialized", [True, False])
def test_spliced_bytes_equal_the_reference_rendering(specialized: bool) -> None:
    clock = [float(BASE_TIME + 1000)]
    sim = Simulator(SimulatorConfig(steps=600, seed=21, clock=lambda: clock[0]))
    for renderer in sim.store._renderers.values():
        renderer.specialized = specialized
    sim.store.set_base_url('http://127.0.0.1:1/api/v2/50%25 "odd"')
    assert _assert_renders_like_the_reference(sim) > 600
    # Deleted targets read as null, inserts and updates go through, children come and go.
    sim.mutate(800)
    for name in ("user", "sequence", "callPurpose", "taskPriority", "sequenceTemplate"):
        for record_id in sim.truth.ids(name)[:2]:
            sim.store.delete(name, record_id)
    clock[0] += 10
    sim.store.clear_cache()
    assert _assert_renders_like_the_reference(sim) > 600
    step = sim.store._renderers["sequenceStep"]
    # The specialized step path is taken when asked for (the slot order matches the schema).
    assert (step._values == step._generic_values) is not specialized


@pytest.mark.slow
def test_every_variant_of_every_type_renders_like_the_reference() -> None:
    # POOL_SIZE rows or more per type would be slow; rows % pool cover the variants in use.
    sim = Simulator(SimulatorConfig(steps=2500, seed=5, tasks_per_step=0.2))
    store = sim.store
    for name, table in store.tables.items():
        renderer = TypeRenderer(store, table, Stamps())
        for row in range(0, len(table), 7):
            assert renderer.render(row) == store.reference_bytes(name, row), (name, row)


def test_stamps_match_iso_format() -> None:
    stamps = Stamps()
    for seconds in (0, 59, 86_399, 86_400, BASE_TIME - 1, BASE_TIME, 4_102_444_799):
        assert stamps.datetime(seconds) == orjson.dumps(iso_datetime(seconds))
        assert stamps.date(seconds // 86_400) == orjson.dumps(iso_date(seconds // 86_400))


def test_the_cache_keeps_what_it_holds_when_full() -> None:
    sim = Simulator(SimulatorConfig(steps=400, seed=3))
    store = sim.store
    one = len(store.record_bytes("sequenceStep", 10))
    store.clear_cache()
    store.cache_limit = 50 * one  # room for a few dozen steps
    first = list(sim.truth.records("sequenceStep"))
    cached = set(store._cache["sequenceStep"])
    assert cached and len(cached) < len(first)
    assert store._cache_size <= store.cache_limit
    # A second walk serves the same records and evicts nothing: what was cached stays cached.
    assert list(sim.truth.records("sequenceStep")) == first
    assert set(store._cache["sequenceStep"]) == cached
    # A mutation frees the bytes it makes stale, and the room is used again.
    row = min(cached)
    store.update("sequenceStep", store.tables["sequenceStep"].ids[row])
    assert row not in store._cache["sequenceStep"]
    size = store._cache_size
    encoded = store.record_bytes("sequenceStep", row)
    fits = size + len(encoded) <= store.cache_limit
    assert (row in store._cache["sequenceStep"]) is fits
    assert sum(len(b) for c in store._cache.values() for b in c.values()) == store._cache_size


def test_every_resource_type_has_a_renderer() -> None:
    sim = Simulator(SimulatorConfig(steps=10, seed=1))
    assert set(sim.store._renderers) == set(schema.RESOURCE_TYPES)
