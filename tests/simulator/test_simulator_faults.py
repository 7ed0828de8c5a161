"""Every fault kind, seeded and switchable at runtime; live mutations and walks that run through them."""

from __future__ import annotations

import time
from typing import Any

import aiohttp
import orjson
import pytest

from exporter.model import schema
from exporter.simulator import Faults, Simulator, SimulatorConfig
from exporter.simulator.data import BASE_TIME
from tests.helpers.simulator_http import Running, running

STEPS = "/sequenceSteps"


async def _statuses(run: Running, n: int, path: str = STEPS) -> list[int]:
    out = []
    for _ in range(n):
        out.append((await run.get(path)).status)
    return out


@pytest.mark.slow
async def test_error_rate_gives_500_and_503_with_errors_documents() -> None:
    async with running(SimulatorConfig(steps=50, seed=2)) as run:
        run.sim.faults.error_rate = 1.0
        statuses = []
        for _ in range(30):
            reply = await run.get(STEPS)
            statuses.append(reply.status)
            assert reply.json["errors"][0]["id"]
            assert "X-RateLimit-Remaining" in reply.headers
        assert set(statuses) == {500, 503}
        run.sim.faults.error_rate = 0.3
        share = (await _statuses(run, 300)).count(200) / 300
        assert 0.6 < share < 0.8
        run.sim.faults.error_rate = 0.0
        assert set(await _statuses(run, 20)) == {200}


async def test_faults_are_reproducible_from_the_seed() -> None:
    runs = []
    for _ in range(2):
        faults = Faults(error_rate=0.4, html_rate=0.2)
        async with running(SimulatorConfig(steps=30, seed=5, faults=faults)) as run:
            runs.append(await _statuses(run, 40))
    assert runs[0] == runs[1]
    assert len(set(runs[0])) >= 3


async def test_big_pages_get_502() -> None:
    async with running(SimulatorConfig(steps=50, faults=Faults(big_page_502_above=100))) as run:
        assert (await run.get(STEPS, {"page[size]": "101"})).status == 502
        assert (await run.get(STEPS, {"page[size]": "100"})).status == 200
        assert (await run.get(STEPS)).status == 200


async def test_html_error_pages() -> None:
    async with running(SimulatorConfig(steps=30, faults=Faults(html_rate=1.0))) as run:
        seen = set()
        for _ in range(20):
            reply = await run.get(STEPS)
            assert reply.headers["Content-Type"].startswith("text/html")
            assert b"<html>" in reply.raw
            seen.add(reply.status)
        assert seen == {200, 502}


async def test_connection_reset_mid_body() -> None:
    async with running(SimulatorConfig(steps=200, faults=Faults(reset_rate=1.0))) as run:
        for _ in range(3):
            with pytest.raises(aiohttp.ClientPayloadError, match="payload is not completed"):
                await run.get(STEPS, {"page[size]": "200"})
        run.sim.faults.reset_rate = 0.0
        assert (await run.get(STEPS)).status == 200  # the server lives on


async def test_truncated_and_malformed_bodies_are_200_and_do_not_parse() -> None:
    async with running(SimulatorConfig(steps=100)) as run:
        params = {"page[size]": "100"}
        good = await run.get(STEPS, params)
        for name in ("truncate_rate", "malformed_rate"):
            setattr(run.sim.faults, name, 1.0)
            for _ in range(5):
                reply = await run.get(STEPS, params)
                assert reply.status == 200
                assert reply.raw != good.raw
                # The parser's words depend on where the cut or splice falls (in a number, in
                # a multi-byte character): what the body is, is asserted instead.
                with pytest.raises(orjson.JSONDecodeError):
                    orjson.loads(reply.raw)
                if name == "truncate_rate":  # a strict prefix of the page
                    assert good.raw.startswith(reply.raw)
                else:  # the page with a raw control byte and a stray byte spliced in
                    assert reply.raw.replace(b"\x01\xff", b"", 1) == good.raw
            setattr(run.sim.faults, name, 0.0)
        assert (await run.get(STEPS, params)).raw == good.raw


@pytest.mark.slow
async def test_slow_bodies_and_latency() -> None:
    async with running(SimulatorConfig(steps=100)) as run:
        good = await run.get(STEPS)
        run.sim.faults.slow_body_s = 0.3
        started = time.perf_counter()
        slow = await run.get(STEPS)
        assert time.perf_counter() - started >= 0.25
        assert slow.raw == good.raw
        run.sim.faults.slow_body_s = 0.0
        run.sim.faults.latency_s = 0.2
        started = time.perf_counter()
        await run.get(STEPS)
        assert time.perf_counter() - started >= 0.19
        run.sim.faults.latency_s = 0.0
        run.sim.faults.latency_per_record_s = 0.004
        started = time.perf_counter()
        await run.get(STEPS, {"page[size]": "50"})
        assert time.perf_counter() - started >= 0.19
        started = time.perf_counter()
        await run.get(STEPS, {"page[size]": "1"})
        assert time.perf_counter() - started < 0.15


# ----------------------------------------------------------------------------- mutations


def _snapshot(sim: Simulator) -> dict[str, dict[int, Any]]:
    return {t: {r["id"]: r for r in sim.truth.records(t)} for t in schema.RESOURCE_TYPES}


@pytest.mark.slow
def test_mutations_insert_update_delete_every_type() -> None:
    clock_now = [float(BASE_TIME + 10_000)]
    sim = Simulator(SimulatorConfig(steps=300, seed=3, clock=lambda: clock_now[0]))
    before = _snapshot(sim)
    sim.mutate(1500)
    clock_now[0] += 5
    after = _snapshot(sim)
    for type_name in schema.RESOURCE_TYPES:
        old, new = before[type_name], after[type_name]
        inserted = set(new) - set(old)
        deleted = set(old) - set(new)
        assert deleted <= sim.truth.deleted_ids(type_name)
        assert inserted, type_name
        assert min(inserted) > max(old)  # autoincrement
        touched = [
            i
            for i, r in new.items()
            if r["attributes"]["updatedAt"] > r["attributes"]["createdAt"] >= "2025"
        ]
        updated = [i for i in set(old) & set(new) if old[i]["attributes"] != new[i]["attributes"]]
        assert touched or updated, type_name
        for record_id in updated:
            # (Two updates may flip an attribute back, so only the stamp must have moved.)
            assert (
                new[record_id]["attributes"]["updatedAt"]
                > old[record_id]["attributes"]["updatedAt"]
            )
        for record_id in inserted:
            created = new[record_id]["attributes"]["createdAt"]
            assert created >= "2025-01-01"  # the simulator clock, newer than generated data
        if type_name not in ("callPurpose", "taskPriority"):
            assert deleted, type_name
    assert sum(len(sim.truth.deleted_ids(t)) for t in schema.RESOURCE_TYPES) > 0
    # Nothing stale in the byte cache: a fresh render agrees with what is served.
    sim.store.clear_cache()
    assert _snapshot(sim) == after
    # References to deleted records read as null; to-many arrays list only live records.
    for type_name in schema.RESOURCE_TYPES:
        for record in after[type_name].values():
            for relationship in record["relationships"].values():
                data = relationship.get("data")
                for ref in data if isinstance(data, list) else [data] if data else []:
                    if ref["type"] in after:
                        assert ref["id"] in after[ref["type"]], (type_name, ref)
    for step in after["sequenceStep"].values():
        listed = [d["id"] for d in step["relationships"]["sequenceTemplates"]["data"]]
        expected = [
            t["id"]
            for t in after["sequenceTemplate"].values()
            if (t["relationships"]["sequenceStep"]["data"] or {}).get("id") == step["id"]
        ]
        assert listed == expected


def test_one_update_changes_one_attribute_and_the_stamp() -> None:
    sim = Simulator(SimulatorConfig(steps=100, seed=2, clock=lambda: BASE_TIME + 99.0))
    for type_name in schema.RESOURCE_TYPES:
        record_id = sim.truth.ids(type_name)[-1]
        before = sim.truth.get(type_name, record_id)
        attribute = sim.store.update(type_name, record_id)
        after = sim.truth.get(type_name, record_id)
        assert before is not None and after is not None
        changed = {
            k for k in after["attributes"] if after["attributes"][k] != before["attributes"][k]
        }
        assert changed == {attribute, "updatedAt"}, type_name
        # The clock's time, or later: a delete below bumped the records naming the deleted
        # one, and stamps never go back (see `Store._now`).
        stamp = after["attributes"]["updatedAt"]
        assert stamp >= "2025-01-01T00:01:39.000Z" and stamp > before["attributes"]["updatedAt"]
        sim.store.delete(type_name, record_id)
        assert sim.truth.get(type_name, record_id) is None
        assert record_id in sim.truth.deleted_ids(type_name)
        new_id = sim.store.insert(type_name)
        assert new_id > record_id
        assert sim.truth.ids(type_name)[-1] == new_id


def test_mutations_are_deterministic() -> None:
    results = []
    for _ in range(2):
        sim = Simulator(SimulatorConfig(steps=100, seed=9, clock=lambda: BASE_TIME + 50.0))
        sim.mutate(200)
        results.append(_snapshot(sim))
    assert results[0] == results[1]


async def _walk_while_mutating(
    run: Running, params: dict[str, str], per_page: int, type_name: str = "sequenceStep"
) -> list[dict[str, Any]]:
    collection = schema.resource_type(type_name).collection
    records: list[dict[str, Any]] = []
    reply = await run.get(f"/{collection}", params)
    while True:
        assert reply.status == 200
        document = reply.json
        records += document["data"]
        if not document["links"].get("next"):
            return records
        run.sim.mutate(per_page)
        reply = await run.get(document["links"]["next"])


@pytest.mark.slow
@pytest.mark.parametrize("type_name", ["sequenceStep", "mailing", "task"])
async def test_id_walk_under_mutation_is_exactly_the_survivors_plus_inserts(type_name: str) -> None:
    async with running(SimulatorConfig(steps=300, seed=4)) as run:
        sim = run.sim
        start = set(sim.truth.ids(type_name))
        walked = await _walk_while_mutating(run, {"page[size]": "25"}, 40, type_name)
        ids = [r["id"] for r in walked]
        end = set(sim.truth.ids(type_name))
        deleted = sim.truth.deleted_ids(type_name)
        assert len(ids) == len(set(ids)), "no record twice"
        assert ids == sorted(ids)
        assert start & end <= set(ids), "every record that lived throughout"
        assert end <= set(ids), "inserts (above the max id) are reached by the walk"
        assert set(ids) - end <= deleted, "anything else was deleted during the walk"
        assert end - start, "the walk saw inserts"
        assert deleted & start, "the walk saw deletes"


@pytest.mark.slow
async def test_updated_at_walk_under_mutation_misses_nothing() -> None:
    async with running(SimulatorConfig(steps=300, seed=6)) as run:
        sim = run.sim
        start = set(sim.truth.ids("sequenceStep"))
        walked = await _walk_while_mutating(run, {"page[size]": "25", "sort": "updatedAt"}, 40)
        ids = [r["id"] for r in walked]
        end = set(sim.truth.ids("sequenceStep"))
        assert start & end <= set(ids)
        assert end <= set(ids), "updated and inserted records move to the end, still ahead"
        stamps = [r["attributes"]["updatedAt"] for r in walked]
        assert stamps == sorted(stamps)
        repeated = {i for i in ids if ids.count(i) > 1}
        for record_id in repeated:  # only a record updated mid-walk is served again, newer
            versions = [r["attributes"]["updatedAt"] for r in walked if r["id"] == record_id]
            assert versions == sorted(set(versions))


@pytest.mark.slow
async def test_background_mutation_stream() -> None:
    faults = Faults(mutation_rate=400.0, latency_s=0.01)
    async with running(SimulatorConfig(steps=300, seed=8, faults=faults)) as run:
        sim = run.sim
        start = set(sim.truth.ids("sequenceStep"))
        walked = [r["id"] for r in await run.walk(STEPS, {"page[size]": "20"})]
        end = set(sim.truth.ids("sequenceStep"))
        assert len(walked) == len(set(walked))
        assert start & end <= set(walked)
        assert set(walked) - end <= sim.truth.deleted_ids("sequenceStep")
        changed = sum(len(sim.truth.deleted_ids(t)) for t in schema.RESOURCE_TYPES)
        assert changed > 0
        assert end != start


def _step_of(record: dict[str, Any] | None) -> int | None:
    assert record is not None
    data = record["relationships"]["sequenceStep"]["data"]
    return None if data is None else int(data["id"])


def test_deleting_a_step_nulls_and_bumps_its_mailings_calls_tasks_and_templates() -> None:
    """As the API does: the children read `sequenceStep: null` with a newer updatedAt, so an
    incremental export sees them change."""
    sim = Simulator(SimulatorConfig(steps=200, seed=4, clock=lambda: BASE_TIME + 500.0))
    children: dict[tuple[str, int], str] = {}
    step_id = next(
        s
        for s in sim.truth.ids("sequenceStep")
        if any(
            _step_of(r) == s for r in sim.truth.records("mailing")
        )  # an email step with mailings
    )
    for type_name in ("mailing", "call", "task", "sequenceTemplate"):
        for record in sim.truth.records(type_name):
            if _step_of(record) == step_id:
                children[(type_name, int(record["id"]))] = record["attributes"]["updatedAt"]
    assert any(t == "mailing" for t, _ in children) and any(t == "task" for t, _ in children)
    sim.store.delete("sequenceStep", step_id)
    for (type_name, record_id), stamp in children.items():
        after = sim.truth.get(type_name, record_id)
        assert _step_of(after) is None, (type_name, record_id)
        assert after is not None and after["attributes"]["updatedAt"] > stamp
    # The byte renderer agrees with the dict rendering for every changed record.
    for type_name, record_id in children:
        row = sim.store.table(type_name).row_of(record_id)
        assert row is not None
        assert orjson.loads(sim.store.record_bytes(type_name, row)) == orjson.loads(
            sim.store.reference_bytes(type_name, row)
        )


def test_a_move_changes_one_relationship_and_the_stamp() -> None:
    sim = Simulator(SimulatorConfig(steps=200, seed=5, clock=lambda: BASE_TIME + 700.0))
    moved: dict[str, int] = {}
    for type_name in schema.RESOURCE_TYPES:
        for record_id in sim.truth.ids(type_name)[:30]:
            before = sim.truth.get(type_name, record_id)
            relationship = sim.store.move(type_name, record_id)
            after = sim.truth.get(type_name, record_id)
            assert before is not None and after is not None
            if relationship is None:
                assert type_name == "taskPriority"  # no relationship to move
                assert after == before
                continue
            moved[type_name] = moved.get(type_name, 0) + 1
            changed = {
                k
                for k in after["relationships"]
                if after["relationships"][k] != before["relationships"][k]
            }
            assert relationship in changed, (type_name, record_id, relationship)
            assert after["attributes"]["updatedAt"] > before["attributes"]["updatedAt"]
    assert set(moved) == set(schema.RESOURCE_TYPES) - {"taskPriority"}


async def test_a_skewed_date_header() -> None:
    from email.utils import parsedate_to_datetime

    async with running(SimulatorConfig(steps=20, seed=3)) as run:
        for skew in (86_400.0, -3600.0, 0.0):
            run.sim.faults.date_skew_s = skew
            before = time.time()
            reply = await run.get(STEPS)
            after = time.time()
            assert reply.status == 200
            sent = parsedate_to_datetime(reply.headers["Date"]).timestamp()
            assert before + skew - 1 <= sent <= after + skew + 1, (skew, reply.headers["Date"])
