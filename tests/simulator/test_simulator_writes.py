"""Writes to the simulator (POST/PATCH sequenceSteps): bodies, validation, gates, faults, visibility."""

from __future__ import annotations

import asyncio
from typing import Any

import aiohttp
import pytest

from exporter.simulator import Faults, Simulator, SimulatorConfig
from exporter.simulator.data import BASE_TIME
from exporter.simulator.writes import WriteError, parse_write
from tests.helpers.simulator_http import Reply, running, validate_resource

STEPS = "/sequenceSteps"
NOW = BASE_TIME + 86_400 * 30 + 3_723  # 2025-01-31T01:02:03Z


def _config(**kw: Any) -> SimulatorConfig:
    clock = kw.pop("clock", lambda: float(NOW))
    return SimulatorConfig(steps=kw.pop("steps", 120), seed=kw.pop("seed", 13), clock=clock, **kw)


def _new_step(sim: Simulator, **attributes: Any) -> dict[str, Any]:
    sequence = sim.truth.ids("sequence")[3]
    return {
        "data": {
            "type": "sequenceStep",
            "attributes": {"stepType": "call", **attributes},
            "relationships": {"sequence": {"data": {"type": "sequence", "id": sequence}}},
        }
    }


def _step_ids(sim: Simulator) -> list[int]:
    return sim.truth.ids("sequenceStep")


def _assert_errors(reply: Reply, status: int, *pointers: str | None) -> list[dict[str, Any]]:
    assert reply.status == status, reply.raw
    assert reply.headers["Content-Type"].startswith("application/vnd.api+json")
    errors: list[dict[str, Any]] = reply.json["errors"]
    for error in errors:
        assert set(error) <= {"id", "title", "detail", "source"}
        assert error["id"] and error["title"] and error["detail"]
    assert [e.get("source", {}).get("pointer") for e in errors] == list(pointers)
    return errors


# ----------------------------------------------------------------------------- create / update


@pytest.mark.slow
async def test_create_answers_201_with_the_record_as_get_serves_it() -> None:
    async with running(_config()) as run:
        sim = run.sim
        before = _step_ids(sim)
        purpose = sim.truth.ids("callPurpose")[1]
        priority = sim.truth.ids("taskPriority")[0]
        document = _new_step(
            sim, order=7, taskNote='Grüße 👩\u200d💻 "q" 50%', interval=3600, taskAutoskipDelay=60
        )
        document["data"]["relationships"]["callPurpose"] = {
            "data": {"type": "callPurpose", "id": purpose}
        }
        document["data"]["relationships"]["taskPriority"] = {
            "data": {"type": "taskPriority", "id": priority}
        }
        reply = await run.send("POST", STEPS, document)
        assert reply.status == 201, reply.raw
        created = reply.json["data"]
        validate_resource(created)
        new_id = created["id"]
        assert new_id > max(before)  # autoincrement
        assert reply.headers["Location"] == f"{run.api}/sequenceSteps/{new_id}"
        attributes = created["attributes"]
        assert attributes["stepType"] == "call"
        assert attributes["order"] == 7
        assert attributes["displayName"] == "Step #7 (Call)"
        assert attributes["taskNote"] == 'Grüße 👩\u200d💻 "q" 50%'
        assert (attributes["interval"], attributes["taskAutoskipDelay"]) == (3600, 60)
        assert attributes["date"] is None
        assert attributes["createdAt"] == attributes["updatedAt"] == "2025-01-31T01:02:03.000Z"
        assert attributes["bounceCount"] == attributes["openCount"] == 0
        relationships = created["relationships"]
        sequence = document["data"]["relationships"]["sequence"]["data"]
        assert relationships["sequence"]["data"] == sequence
        assert relationships["callPurpose"]["data"] == {"type": "callPurpose", "id": purpose}
        assert relationships["taskPriority"]["data"] == {"type": "taskPriority", "id": priority}
        assert relationships["creator"]["data"] is None
        assert relationships["sequenceTemplates"]["data"] == []
        # Visible everywhere a record is: GET by id, the truth, walks, filters, the parent.
        assert (await run.get(f"{STEPS}/{new_id}")).json["data"] == created
        assert sim.truth.get("sequenceStep", new_id) == created
        assert _step_ids(sim) == [*before, new_id]
        walked = await run.walk(STEPS, {"page[size]": "1000"})
        assert walked[-1] == created
        by_sequence = await run.walk(STEPS, {"filter[sequence][id]": str(sequence["id"])})
        assert created in by_sequence
        stamped = await run.walk(STEPS, {"sort": "-updatedAt", "page[size]": "1"})
        assert stamped[0]["id"] == new_id
        parent = (await run.get(f"/sequences/{sequence['id']}")).json["data"]
        listed = parent["relationships"]["sequenceSteps"]["data"]
        assert {"type": "sequenceStep", "id": new_id} in listed
        assert sim.counters.by_route["POST /api/v2/sequenceSteps"] == 1
        assert sim.counters.writes_applied == 1


async def test_patch_changes_what_it_names_and_bumps_updated_at() -> None:
    now = [float(NOW)]
    async with running(_config(clock=lambda: now[0])) as run:
        sim = run.sim
        step_id = next(
            s["id"]
            for s in sim.truth.records("sequenceStep")
            if s["relationships"]["sequence"]["data"]
            and s["relationships"]["callPurpose"]["data"]
            and s["attributes"]["taskNote"]
        )
        before = sim.truth.get("sequenceStep", step_id)
        assert before is not None
        old_sequence = before["relationships"]["sequence"]["data"]["id"]
        new_sequence = next(i for i in sim.truth.ids("sequence") if i != old_sequence)
        document = {
            "data": {
                "type": "sequenceStep",
                "id": step_id,
                "attributes": {"stepType": "task", "taskNote": None, "date": "2025-02-03"},
                "relationships": {
                    "sequence": {"data": {"type": "sequence", "id": new_sequence}},
                    "callPurpose": {"data": None},
                },
            }
        }
        now[0] += 61
        reply = await run.send("PATCH", f"{STEPS}/{step_id}", document)
        assert reply.status == 200, reply.raw
        after = reply.json["data"]
        validate_resource(after)
        assert after["id"] == step_id
        changed = {
            k for k in after["attributes"] if after["attributes"][k] != before["attributes"][k]
        }
        assert changed == {"stepType", "taskNote", "date", "displayName", "updatedAt"}
        assert after["attributes"]["updatedAt"] == "2025-01-31T01:03:04.000Z"
        assert after["attributes"]["createdAt"] == before["attributes"]["createdAt"]
        assert after["attributes"]["displayName"].endswith("(Task)")
        assert after["relationships"]["sequence"]["data"]["id"] == new_sequence
        assert after["relationships"]["callPurpose"]["data"] is None
        assert after["relationships"]["creator"] == before["relationships"]["creator"]
        assert sim.truth.get("sequenceStep", step_id) == after
        assert (await run.get(f"{STEPS}/{step_id}")).json["data"] == after
        # Both parents and the relationship index follow the move.
        for sequence_id, present in ((old_sequence, False), (new_sequence, True)):
            parent = (await run.get(f"/sequences/{sequence_id}")).json["data"]
            listed = [d["id"] for d in parent["relationships"]["sequenceSteps"]["data"]]
            assert (step_id in listed) is present
            filtered = await run.walk(STEPS, {"filter[sequence][id]": str(sequence_id)})
            assert (step_id in [r["id"] for r in filtered]) is present
        assert [r["id"] for r in await run.walk(STEPS, {"filter[stepType]": "task"})].count(
            step_id
        ) == 1
        # An empty PATCH still counts as an update.
        now[0] += 1
        reply = await run.send(
            "PATCH", f"{STEPS}/{step_id}", {"data": {"type": "sequenceStep", "id": str(step_id)}}
        )
        assert reply.status == 200
        assert reply.json["data"]["attributes"]["updatedAt"] == "2025-01-31T01:03:05.000Z"
        assert sim.counters.by_route["PATCH /api/v2/sequenceSteps/{id}"] == 2
        assert sim.counters.writes_applied == 2


async def test_order_zero_and_null_round_trip() -> None:
    async with running(_config()) as run:
        created = (await run.send("POST", STEPS, _new_step(run.sim, order=0))).json["data"]
        assert created["attributes"]["order"] == 0
        step = f"{STEPS}/{created['id']}"
        body = {"data": {"type": "sequenceStep", "id": created["id"], "attributes": {"order": 4}}}
        patched = (await run.send("PATCH", step, body)).json["data"]
        assert patched["attributes"]["order"] == 4
        assert patched["attributes"]["displayName"] == "Step #4 (Call)"
        body["data"]["attributes"] = {"order": None}
        patched = (await run.send("PATCH", step, body)).json["data"]
        assert patched["attributes"]["order"] is None
        assert patched["attributes"]["displayName"] == "Call"
        assert run.sim.truth.get("sequenceStep", created["id"]) == patched


# ----------------------------------------------------------------------------- validation

READ_ONLY_ATTRIBUTES = ("bounceCount", "openCount", "createdAt", "updatedAt", "displayName")
READ_ONLY_RELATIONSHIPS = ("creator", "updater", "mailings", "calls", "tasks", "sequenceTemplates")


def _invalid_creates(sim: Simulator) -> list[tuple[str, Any, tuple[str, ...]]]:
    """(label, a change to a valid create body, the error pointers expected)."""
    missing = max(sim.truth.ids("sequence")) + 1
    cases: list[tuple[str, Any, tuple[str, ...]]] = [
        ("bad stepType", {"stepType": "email"}, ("/data/attributes/stepType",)),
        ("null stepType", {"stepType": None}, ("/data/attributes/stepType",)),
        ("unknown attribute", {"colour": "red"}, ("/data/attributes/colour",)),
        ("long taskNote", {"taskNote": "x" * 65_536}, ("/data/attributes/taskNote",)),
        ("taskNote not text", {"taskNote": 5}, ("/data/attributes/taskNote",)),
        ("order as text", {"order": "3"}, ("/data/attributes/order",)),
        ("order a bool", {"order": True}, ("/data/attributes/order",)),
        ("order too big", {"order": 2**40}, ("/data/attributes/order",)),
        ("bad date", {"date": "2024-13-01"}, ("/data/attributes/date",)),
        ("unknown relationship", {"rel:owner": {"data": None}}, ("/data/relationships/owner",)),
        ("null sequence", {"rel:sequence": {"data": None}}, ("/data/relationships/sequence/data",)),
        (
            "missing sequence",
            {"rel:sequence": {"data": {"type": "sequence", "id": missing}}},
            ("/data/relationships/sequence/data",),
        ),
        (
            "sequence of the wrong type",
            {"rel:sequence": {"data": {"type": "user", "id": sim.truth.ids("user")[0]}}},
            ("/data/relationships/sequence/data",),
        ),
        (
            "relationship without data",
            {"rel:sequence": {"type": "sequence", "id": 1}},
            ("/data/relationships/sequence",),
        ),
        (
            "missing callPurpose",
            {"rel:callPurpose": {"data": {"type": "callPurpose", "id": 10**9}}},
            ("/data/relationships/callPurpose/data",),
        ),
        (
            "missing taskPriority",
            {"rel:taskPriority": {"data": {"type": "taskPriority", "id": 10**9}}},
            ("/data/relationships/taskPriority/data",),
        ),
        (
            "two problems at once",
            {"stepType": "fax", "openCount": 3},
            ("/data/attributes/stepType", "/data/attributes/openCount"),
        ),
    ]
    for name in READ_ONLY_ATTRIBUTES:
        value = "2020-01-01T00:00:00.000Z" if name.endswith("At") else 1
        cases.append((f"read-only {name}", {name: value}, (f"/data/attributes/{name}",)))
    for name in READ_ONLY_RELATIONSHIPS:
        cases.append(
            (f"read-only {name}", {f"rel:{name}": {"data": None}}, (f"/data/relationships/{name}",))
        )
    return cases


async def test_every_invalid_write_is_a_422_naming_the_field_and_changes_nothing() -> None:
    async with running(_config()) as run:
        sim = run.sim
        before = list(sim.truth.records("sequenceStep"))
        for label, change, pointers in _invalid_creates(sim):
            document = _new_step(sim)
            data = document["data"]
            for key, value in change.items():
                if key.startswith("rel:"):
                    data["relationships"][key[4:]] = value
                else:
                    data["attributes"][key] = value
            errors = _assert_errors(await run.send("POST", STEPS, document), 422, *pointers)
            assert all(e["id"] == "validationError" for e in errors), label
            # The same problem in a PATCH of an existing record is refused the same way.
            data["id"] = before[0]["id"]
            _assert_errors(
                await run.send("PATCH", f"{STEPS}/{data['id']}", document), 422, *pointers
            )
        # Required on create only: stepType and sequence.
        bare = {"data": {"type": "sequenceStep", "attributes": {"taskNote": "x"}}}
        _assert_errors(
            await run.send("POST", STEPS, bare),
            422,
            "/data/attributes/stepType",
            "/data/relationships/sequence",
        )
        bare["data"]["id"] = before[0]["id"]
        assert (await run.send("PATCH", f"{STEPS}/{before[0]['id']}", bare)).status == 200
        before[0] = sim.truth.get("sequenceStep", before[0]["id"])
        assert list(sim.truth.records("sequenceStep")) == before
        assert sim.counters.writes_applied == 1


async def test_documents_that_are_not_writes_of_this_resource() -> None:
    async with running(_config()) as run:
        sim = run.sim
        step_id = _step_ids(sim)[5]
        other = _step_ids(sim)[6]
        path = f"{STEPS}/{step_id}"
        wrong_type = _new_step(sim)
        wrong_type["data"]["type"] = "sequence"
        _assert_errors(await run.send("POST", STEPS, wrong_type), 409, "/data/type")
        wrong_type["data"]["id"] = step_id
        _assert_errors(await run.send("PATCH", path, wrong_type), 409, "/data/type")
        mismatch = {"data": {"type": "sequenceStep", "id": other, "attributes": {"order": 2}}}
        _assert_errors(await run.send("PATCH", path, mismatch), 409, "/data/id")
        no_id = {"data": {"type": "sequenceStep", "attributes": {"order": 2}}}
        _assert_errors(await run.send("PATCH", path, no_id), 400, "/data/id")
        client_id = _new_step(sim)
        client_id["data"]["id"] = 10**9
        _assert_errors(await run.send("POST", STEPS, client_id), 403, "/data/id")
        _assert_errors(await run.send("POST", STEPS, raw=b'{"data": '), 400, None)
        _assert_errors(await run.send("POST", STEPS, [1]), 400, "/data")
        _assert_errors(await run.send("POST", STEPS, {"data": {"type": 3}}), 400, "/data/type")
        no_object = {"data": {"type": "sequenceStep", "attributes": [1]}}
        _assert_errors(await run.send("POST", STEPS, no_object), 400, "/data/attributes")
        assert sim.counters.writes_applied == 0


def test_parse_write_is_a_pure_function_of_the_document() -> None:
    sim = Simulator(_config(steps=20))
    rtype = sim.store.table("sequenceStep").rtype
    body = b'{"data":{"type":"sequenceStep","id":"12","attributes":{"order":3},"relationships":{"callPurpose":{"data":{"type":"callPurpose","id":"4"}}}}}'
    change = parse_write(
        body, rtype, record_id=12, exists=lambda t, i: (t, i) == ("callPurpose", 4)
    )
    assert change.attributes == {"order": 3}
    assert change.relationships == {"callPurpose": 4}
    with pytest.raises(WriteError, match="callPurpose 4 does not exist") as caught:
        parse_write(body, rtype, record_id=12, exists=lambda t, i: False)
    assert caught.value.status == 422


# ----------------------------------------------------------------------------- HTTP gates


async def test_writes_pass_the_same_gates_as_reads() -> None:
    async with running(_config(rate_limit=13, rate_window=3600.0)) as run:
        sim = run.sim
        step_id = _step_ids(sim)[0]
        document = _new_step(sim)
        patch = {"data": {"type": "sequenceStep", "id": step_id, "attributes": {"order": 9}}}
        anonymous = await run.send("POST", STEPS, document, headers={"Authorization": ""})
        _assert_errors(anonymous, 401, None)
        wrong = await run.send("POST", STEPS, document, content_type="application/json")
        _assert_errors(wrong, 415, None)
        none = await run.send(
            "PATCH",
            f"{STEPS}/{step_id}",
            patch,
            content_type=None,
            skip_auto_headers=["Content-Type"],
        )
        _assert_errors(none, 415, None)
        missing = max(_step_ids(sim)) + 100
        patch_missing = {"data": {"type": "sequenceStep", "id": missing}}
        _assert_errors(await run.send("PATCH", f"{STEPS}/{missing}", patch_missing), 404, None)
        _assert_errors(await run.send("PATCH", f"{STEPS}/abc", patch_missing), 404, None)
        for method, path in (
            ("DELETE", f"{STEPS}/{step_id}"),
            ("PATCH", STEPS),
            ("POST", f"{STEPS}/{step_id}"),
            ("POST", "/sequences"),
            ("PUT", f"{STEPS}/{step_id}"),
        ):
            reply = await run.send(method, path, document)
            _assert_errors(reply, 405, None)
        assert (
            "no DELETE"
            in (await run.send("DELETE", f"{STEPS}/{step_id}")).json["errors"][0]["detail"]
        )
        assert sim.truth.get("sequenceStep", step_id) is not None
        # Server faults replace a write before it runs: nothing is applied.
        sim.faults.error_rate = 1.0
        assert (await run.send("POST", STEPS, document)).status in (500, 503)
        sim.faults.error_rate = 0.0
        assert sim.counters.writes_applied == 0
        # The rate limit counts writes like reads.
        assert (await run.send("POST", STEPS, document)).status == 201
        limited = await run.send("POST", STEPS, document)
        _assert_errors(limited, 429, None)
        assert limited.headers["X-RateLimit-Remaining"] == "0"
        assert sim.counters.writes_applied == 1
        assert sim.counters.by_route["POST /api/v2/sequenceSteps"] == 5


# ----------------------------------------------------------------------------- faults


async def test_a_lost_write_is_applied_but_never_answered() -> None:
    async with running(_config(faults=Faults(lost_write_rate=1.0))) as run:
        sim = run.sim
        before = _step_ids(sim)
        with pytest.raises(aiohttp.ServerDisconnectedError, match="Server disconnected"):
            await run.send("POST", STEPS, _new_step(sim, taskNote="journal me"))
        created = [i for i in _step_ids(sim) if i not in before]
        assert len(created) == 1 and created[0] > max(before)
        record = sim.truth.get("sequenceStep", created[0])
        assert record is not None and record["attributes"]["taskNote"] == "journal me"
        patch = {"data": {"type": "sequenceStep", "id": before[0], "attributes": {"order": 99}}}
        with pytest.raises(aiohttp.ServerDisconnectedError, match="Server disconnected"):
            await run.send("PATCH", f"{STEPS}/{before[0]}", patch)
        patched = sim.truth.get("sequenceStep", before[0])
        assert patched is not None and patched["attributes"]["order"] == 99
        assert (sim.counters.writes_applied, sim.counters.writes_lost) == (2, 2)
        # A refused write is answered: nothing was applied, so nothing is lost.
        refused = await run.send("POST", STEPS, _new_step(sim, stepType="fax"))
        assert refused.status == 422
        assert sim.counters.writes_lost == 2
        # Reads never draw the lost-write die.
        assert (await run.get(STEPS)).status == 200
        sim.faults.lost_write_rate = 0.0
        assert (await run.send("POST", STEPS, _new_step(sim))).status == 201


async def test_lost_writes_follow_the_fault_seed_and_other_body_faults_apply() -> None:
    outcomes = []
    for _ in range(2):
        faults = Faults(lost_write_rate=0.5, seed=3)
        async with running(_config(faults=faults)) as run:
            seen = []
            for _ in range(16):
                try:
                    seen.append((await run.send("POST", STEPS, _new_step(run.sim))).status)
                except aiohttp.ServerDisconnectedError:
                    seen.append(0)
            outcomes.append((seen, run.sim.truth.ids("sequenceStep")))
            assert run.sim.counters.writes_applied == 16
    assert outcomes[0] == outcomes[1]
    assert set(outcomes[0][0]) == {0, 201}
    async with running(_config(faults=Faults(reset_rate=1.0))) as run:
        before = len(_step_ids(run.sim))
        with pytest.raises(aiohttp.ClientPayloadError, match="payload is not completed"):
            await run.send("POST", STEPS, _new_step(run.sim))
        assert len(_step_ids(run.sim)) == before + 1  # applied; the answer was cut mid-body


async def test_created_records_survive_mutations_and_validate() -> None:
    async with running(_config()) as run:
        sim = run.sim
        ids = []
        for n in range(5):
            reply = await run.send(
                "POST", STEPS, _new_step(sim, order=n + 1, stepType="auto_email")
            )
            ids.append(reply.json["data"]["id"])
        sim.mutate(200)
        walked = await run.walk(STEPS, {"page[size]": "1000"})
        for record in walked:
            validate_resource(record)
        assert walked == list(sim.truth.records("sequenceStep"))
        assert ids == sorted(ids)
        # Every later insert still gets an id above the written ones.
        assert max(_step_ids(sim)) >= ids[-1]


# ----------------------------------------------------------------------------- write policy


async def test_a_slow_write_lands_after_its_client_gave_up() -> None:
    """`apply_delay_s`: the write is held, the client times out and goes away, and the write
    is applied all the same (as a real API's backend finishes what it accepted)."""
    async with running(_config()) as run:
        sim = run.sim
        sim.write_policy.apply_delay_s = 0.5
        before = _step_ids(sim)
        with pytest.raises(TimeoutError):
            await run.send(
                "POST",
                STEPS,
                _new_step(sim, taskNote="slow"),
                timeout=aiohttp.ClientTimeout(total=0.1),
            )
        assert _step_ids(sim) == before  # not yet
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 10
        while _step_ids(sim) == before:
            assert loop.time() < deadline, "the slow write never landed"
            await asyncio.sleep(0.02)
        [created] = [i for i in _step_ids(sim) if i not in before]
        record = sim.truth.get("sequenceStep", created)
        assert record is not None and record["attributes"]["taskNote"] == "slow"
        assert sim.counters.writes_applied == 1
        # A refused write is refused at once, not held.
        started = loop.time()
        refused = await run.send("POST", STEPS, _new_step(sim, stepType="fax"))
        assert refused.status == 422 and loop.time() - started < 0.4


async def test_a_step_without_sequence_is_refused_unless_the_policy_allows_it() -> None:
    async with running(_config()) as run:
        sim = run.sim
        bare = {"data": {"type": "sequenceStep", "attributes": {"stepType": "task"}}}
        _assert_errors(await run.send("POST", STEPS, bare), 422, "/data/relationships/sequence")
        sim.write_policy.require_sequence = False
        reply = await run.send("POST", STEPS, bare)
        assert reply.status == 201, reply.raw
        assert reply.json["data"]["relationships"]["sequence"] == {"data": None}
        assert Simulator(_config()).write_policy.require_sequence  # per simulator
