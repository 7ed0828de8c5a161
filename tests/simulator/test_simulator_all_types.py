"""The whole account: every readable collection served, paged, filtered and sorted as the schema allows, equal to truth, referentially whole, scoped; the step world unchanged."""

from __future__ import annotations

import copy
import hashlib
import uuid
from collections import Counter
from typing import Any

import pytest
from openapi_schema_validator import OAS30Validator, oas30_format_checker

from exporter.model import schema
from exporter.model.normalize import Normalizer
from exporter.model.schema import Kind, Shape
from exporter.simulator import Simulator, SimulatorConfig
from exporter.simulator.account import SIZES, account_types
from exporter.simulator.store import Store
from tests.helpers.simulator_http import running, wire_schema

CLOCK = 1_800_000_000.0
# sha256 prefixes of every record of the nine step-world types (served bytes and the dict
# reference rendering) and the deleted ids, for steps=300 seed=5, before and after 400
# mutations, as the simulator made them before the account world existed (commit 85d3780).
STEP_WORLD_BEFORE = {
    "sequenceStep": "9878b54bd311d926",
    "sequence": "ec737ce2317a1d13",
    # users: re-pinned when the step world took the live API's `duties` (a list of objects,
    # schema.WIRE_SHAPES); the eight other pins are those of 85d3780, unchanged.
    "user": "de337392b2726232",
    "callPurpose": "becc5fa747b96a94",
    "taskPriority": "5b06d5ffb5fae0ec",
    "sequenceTemplate": "eb6a5b54de7f614d",
    "mailing": "a6105b3a72e93e99",
    "call": "64cfa641cc950d46",
    "task": "424ea3bb3be44630",
}
STEP_WORLD_AFTER_MUTATIONS = {
    "sequenceStep": "89dc52d95d20256c",
    "sequence": "4cae1e089f6f92d6",
    "user": "94910d7dd952c7eb",  # re-pinned with the `duties` shape, as above
    "callPurpose": "36887d3a00dda5c9",
    "taskPriority": "4dea3373a95eb7ea",
    "sequenceTemplate": "ef30e1930d925d7e",
    "mailing": "389aab9e61f009cd",
    "call": "f8a8d954943bb49b",
    "task": "c29757015ac0b6de",
}
STEP_WORLD_SCOPE = (
    "sequenceSteps.read sequences.read users.read callPurposes.read taskPriorities.read "
    "sequenceTemplates.read mailings.read calls.read tasks.read"
)


@pytest.fixture(scope="module")
def sim() -> Simulator:
    """One read-only account shared by the tests that do not mutate."""
    return Simulator(SimulatorConfig(steps=120, seed=3, prospects=150))


def _fingerprint(store: Store, type_name: str) -> str:
    table = store.tables[type_name]
    digest = hashlib.sha256()
    for row in range(len(table)):
        if table.alive[row]:
            digest.update(store.record_bytes(type_name, row) + b"\n")
            digest.update(store.reference_bytes(type_name, row) + b"\n")
    digest.update(repr(sorted(store.deleted_ids(type_name))).encode())
    return digest.hexdigest()[:16]


def _collection(type_name: str) -> str:
    return "/" + schema.resource_type(type_name).collection


# -- the step world ---------------------------------------------------------------------------


def test_the_step_world_is_byte_for_byte_what_it_was() -> None:
    sim = Simulator(SimulatorConfig(steps=300, seed=5, clock=lambda: CLOCK))
    assert sim.truth.types() == list(schema.RESOURCE_TYPES)
    assert {t: _fingerprint(sim.store, t) for t in schema.RESOURCE_TYPES} == STEP_WORLD_BEFORE
    sim.mutate(400)
    assert {
        t: _fingerprint(sim.store, t) for t in schema.RESOURCE_TYPES
    } == STEP_WORLD_AFTER_MUTATIONS
    assert sim.auth.scope == STEP_WORLD_SCOPE


async def test_the_step_world_serves_the_rest_of_the_account_empty() -> None:
    """Without --prospects or sizes the other readable collections exist and hold nothing (as
    in an account without any: a 404 made `export --resources all` fail); unknown ones are 404."""
    async with running(SimulatorConfig(steps=20, seed=1)) as run:
        answer = await run.get("/prospects?count=true")
        assert answer.status == 200
        assert answer.json["data"] == [] and answer.json["meta"]["count"] == 0
        assert (await run.get("/prospects/1")).status == 404
        assert (await run.get("/notACollection")).status == 404
        assert (await run.get("/sequenceSteps")).status == 200


def test_the_account_world_keeps_the_step_worlds_records() -> None:
    """Same ids, attributes and the relationships the step world fills; what differs is the
    relationships it left null or empty (they now point into the account) and the live API's
    shape of a user's `duties`."""
    alone = Simulator(SimulatorConfig(steps=150, seed=9))
    account = Simulator(SimulatorConfig(steps=150, seed=9, prospects=100))
    into_account = set(account_types())
    for type_name in schema.RESOURCE_TYPES:
        assert alone.truth.ids(type_name) == account.truth.ids(type_name), type_name
        rtype = schema.resource_type(type_name)
        filled = set(alone.store.tables[type_name].fks)
        filled |= {name for parent, name in alone.store.reverse if parent == type_name}
        for before, after in zip(
            alone.truth.records(type_name), account.truth.records(type_name), strict=True
        ):
            for attribute in rtype.attributes:
                if (type_name, attribute.name) != ("user", "duties"):
                    name = attribute.name
                    assert before["attributes"][name] == after["attributes"][name], name
            for rel in rtype.relationships:
                if rel.name in filled or (
                    rel.shape is Shape.LINKS and rel.target not in into_account
                ):
                    name = rel.name
                    assert before["relationships"][name] == after["relationships"][name], name


# -- every collection -------------------------------------------------------------------------


def test_every_readable_type_is_simulated_in_its_proportion(sim: Simulator) -> None:
    assert sim.truth.types() == list(schema.readable_types())
    assert len(sim.truth.types()) == 47
    counts = {t: sim.truth.count(t) for t in sim.truth.types()}
    assert counts["prospect"] == 150
    for many in ("emailAddress", "sequenceState", "event", "phoneNumber"):
        assert counts[many] > counts["prospect"] / 2, many
    for few in ("stage", "role", "persona", "team", "taskPriority", "opportunityStage"):
        assert counts[few] <= 12, few
        assert SIZES.get(few) is None or SIZES[few].scarce
    assert all(count > 0 for count in counts.values()), counts


async def test_every_collection_pages_completely_and_equals_truth(sim: Simulator) -> None:
    async with running(sim=sim) as run:
        for type_name in sim.truth.types():
            expected = list(sim.truth.records(type_name))
            for size in ("1000", "7"):
                served = await run.walk(_collection(type_name), {"page[size]": size})
                assert served == expected, (type_name, size)
            assert [r["id"] for r in expected] == sim.truth.ids(type_name)


def _validators(type_name: str) -> tuple[OAS30Validator, OAS30Validator, dict[str, Any]]:
    schemas = schema.openapi_document()["components"]["schemas"]
    attributes = copy.deepcopy(schemas[type_name])
    for attribute in schema.resource_type(type_name).attributes:
        if attribute.wire is not None:
            attributes["properties"][attribute.name] = wire_schema(attribute)
    relationships = schemas.get(type_name + "Relationships", {"type": "object"})
    identifier = schemas[type_name + "Response"]["properties"]["id"]
    return (
        OAS30Validator(attributes, format_checker=oas30_format_checker),
        OAS30Validator(relationships, format_checker=oas30_format_checker),
        identifier,
    )


def test_every_record_matches_the_openapi_schemas_and_the_wire_shapes(sim: Simulator) -> None:
    for type_name in sim.truth.types():
        rtype = schema.resource_type(type_name)
        attributes, relationships, identifier = _validators(type_name)
        for record in sim.truth.records(type_name):
            assert record["type"] == type_name
            assert isinstance(record["id"], str if identifier["type"] == "string" else int)
            attributes.validate(record["attributes"])
            relationships.validate(record["relationships"])
            assert set(record["attributes"]) == {a.name for a in rtype.attributes}
            assert set(record["relationships"]) == {r.name for r in rtype.relationships}


def test_the_exporter_reads_every_collection_without_leftovers(sim: Simulator) -> None:
    """A real client: the exporter's normalizer types every value, nothing lands in `_extra`."""
    for type_name in sim.truth.types():
        batch = Normalizer(type_name).to_batch(list(sim.truth.records(type_name)))
        assert batch.extra_values == 0, type_name
        assert batch.table.num_rows == sim.truth.count(type_name)


def test_vague_attributes_have_the_live_apis_shape(sim: Simulator) -> None:
    duties = [d for r in sim.truth.records("user") for d in r["attributes"]["duties"] or []]
    assert duties and all(set(d) == {"id", "name", "duty_type"} for d in duties)
    by_id = {r["id"]: r["attributes"]["symbolicName"] for r in sim.truth.records("duty")}
    assert all(by_id[d["id"]] == d["name"] for d in duties)  # a user's duties are duties
    histograms = [r["attributes"]["contactHistogram"] for r in sim.truth.records("prospect")]
    shaped = [h for h in histograms if h is not None]
    assert shaped and all(len(h) == 12 for h in shaped)
    assert all(
        len(month) == 2 and all(type(n) is int for n in month) for h in shaped for month in h
    )
    emails = [e for r in sim.truth.records("prospect") for e in r["attributes"]["emails"] or []]
    assert emails and all("@" in e for e in emails)


# -- referential integrity --------------------------------------------------------------------


def _check_integrity(sim: Simulator, records: dict[str, list[dict[str, Any]]]) -> int:
    """Every to-one names a record that exists; every derived to-many lists exactly the records
    whose to-one names its owner. Returns how many references were checked."""
    ids = {t: {r["id"] for r in rs} for t, rs in records.items()}
    checked = 0
    for type_name, rs in records.items():
        rtype = schema.resource_type(type_name)
        for record in rs:
            for rel in rtype.relationships:
                data = record["relationships"][rel.name].get("data")
                targets = [data] if rel.shape is Shape.TO_ONE and data else data or []
                for identifier in targets if rel.shape is not Shape.LINKS else []:
                    assert identifier["type"] in rel.targets, (type_name, rel.name)
                    assert identifier["id"] in ids.get(identifier["type"], set()), (
                        type_name,
                        record["id"],
                        rel.name,
                        identifier,
                    )
                    checked += 1
    for (parent, relationship), (child, fk) in sim.store.reverse.items():
        pointing: dict[int, set[int]] = {}
        for record in records[child]:
            data = record["relationships"][fk]["data"]
            if data is not None:
                pointing.setdefault(data["id"], set()).add(record["id"])
        for record in records[parent]:
            listed = {d["id"] for d in record["relationships"][relationship]["data"]}
            assert listed == pointing.get(record["id"], set()), (parent, relationship)
    return checked


async def test_every_to_one_on_the_wire_names_a_record_that_exists(sim: Simulator) -> None:
    async with running(sim=sim) as run:
        served = {
            t: await run.walk(_collection(t), {"page[size]": "1000"}) for t in sim.truth.types()
        }
    assert _check_integrity(sim, served) > 5000
    reverse = sim.store.reverse
    for pair in (
        ("prospect", "emailAddresses"),
        ("prospect", "activeSequenceStates"),
        ("user", "mailboxes"),
        ("role", "childRoles"),
        ("sequence", "sequenceSteps"),
        ("sequenceStep", "sequenceTemplates"),
    ):
        assert pair in reverse, pair


def test_related_records_are_coherent(sim: Simulator) -> None:
    def by_id(type_name: str) -> dict[Any, dict[str, Any]]:
        return {r["id"]: r for r in sim.truth.records(type_name)}

    def target(record: dict[str, Any], name: str) -> Any:
        data = record["relationships"][name]["data"]
        return None if data is None else data["id"]

    states = by_id("sequenceState")
    steps = by_id("sequenceStep")
    prospects = by_id("prospect")
    mailboxes = by_id("mailbox")
    for state in states.values():
        step = target(state, "sequenceStep")
        if step is not None:
            assert target(steps[step], "sequence") == target(state, "sequence")
        prospect = target(state, "prospect")
        assert prospect is not None
        assert target(state, "account") == target(prospects[prospect], "account")
    with_state = 0
    for mailing in sim.truth.records("mailing"):
        state = target(mailing, "sequenceState")
        if state is not None:
            with_state += 1
            assert target(mailing, "prospect") == target(states[state], "prospect")
            assert target(mailing, "sequence") == target(states[state], "sequence")
    assert with_state
    for user in sim.truth.records("user"):
        mailbox = target(user, "mailbox")
        assert mailbox is not None and target(mailboxes[mailbox], "user") == user["id"]
    for opportunity in sim.truth.records("opportunity"):
        assert target(opportunity, "stage") == target(opportunity, "opportunityStage")


# -- filters and sorts ------------------------------------------------------------------------


async def test_every_filterable_attribute_filters_as_truth_says(sim: Simulator) -> None:
    checked = Counter[str]()
    async with running(sim=sim) as run:
        for type_name in sim.truth.types():
            rtype = schema.resource_type(type_name)
            records = list(sim.truth.records(type_name))
            for name in sorted(rtype.filterable - {"id"}):
                attribute = rtype.attribute(name)
                assert attribute is not None
                values = [r["attributes"][name] for r in records]
                present = [v for v in values if v is not None]
                if not present:
                    continue
                pick = present[len(present) // 2]
                if attribute.kind is Kind.STRING_LIST:
                    if not pick:
                        continue
                    param, want = (
                        pick[0],
                        [r for r in records if pick[0] in (r["attributes"][name] or [])],
                    )
                elif attribute.kind is Kind.DATETIME:
                    param = f"{pick}..inf"
                    want = [r for r in records if (v := r["attributes"][name]) and v >= pick]
                else:
                    if attribute.kind is Kind.BOOLEAN:
                        param = "true" if pick else "false"
                    else:
                        param = str(pick)
                    if "," in param or ".." in param or not param.strip() or param != param.strip():
                        continue  # not expressible as one filter value
                    want = [r for r in records if r["attributes"][name] == pick]
                served = await run.walk(
                    _collection(type_name), {f"filter[{name}]": param, "page[size]": "1000"}
                )
                assert [r["id"] for r in served] == [r["id"] for r in want], (type_name, name)
                checked[type_name] += 1
    assert sum(checked.values()) > 150 and len(checked) > 40


def _sort_key(record: dict[str, Any], name: str) -> tuple[bool, Any]:
    value = record["id"] if name == "id" else record["attributes"][name]
    return (value is not None, value)


async def test_every_sortable_attribute_sorts_a_complete_walk(sim: Simulator) -> None:
    async with running(sim=sim) as run:
        for type_name in sim.truth.types():
            rtype = schema.resource_type(type_name)
            expected_ids = sorted(map(str, sim.truth.ids(type_name)))
            for name in sorted(rtype.sortable):
                for spec in (name, "-" + name):
                    served = await run.walk(
                        _collection(type_name), {"sort": spec, "page[size]": "50"}
                    )
                    assert sorted(str(r["id"]) for r in served) == expected_ids, (type_name, spec)
                    keys = [(_sort_key(r, name), _sort_key(r, "id")) for r in served]
                    ordered = sorted(keys, reverse=spec.startswith("-"))
                    assert keys == ordered, (type_name, spec)


async def test_what_the_schema_does_not_allow_is_refused_per_type(sim: Simulator) -> None:
    async with running(sim=sim) as run:
        for type_name in sim.truth.types():
            rtype = schema.resource_type(type_name)
            names = {a.name for a in rtype.attributes}
            unfilterable = sorted(names - rtype.filterable)
            unsortable = sorted(names - rtype.sortable)
            if unfilterable:
                reply = await run.get(_collection(type_name), {f"filter[{unfilterable[0]}]": "1"})
                assert reply.status == 400, (type_name, unfilterable[0])
                assert unfilterable[0] in reply.json["errors"][0]["detail"]
            if unsortable:
                reply = await run.get(_collection(type_name), {"sort": unsortable[0]})
                assert reply.status == 400, (type_name, unsortable[0])
            reply = await run.get(_collection(type_name), {"filter[noSuchThing]": "1"})
            assert reply.status == 400
    events = schema.resource_type("event")
    assert "updatedAt" not in events.filterable and "updatedAt" not in events.sortable
    assert {"createdAt", "eventAt"} <= events.sortable


async def test_relationship_filters_and_includes_in_the_account(sim: Simulator) -> None:
    async with running(sim=sim) as run:  # (truth names the served base URL in its links)
        prospect = next(
            r for r in sim.truth.records("prospect") if r["relationships"]["account"]["data"]
        )
        account_id = prospect["relationships"]["account"]["data"]["id"]
        want = [
            r["id"]
            for r in sim.truth.records("prospect")
            if (r["relationships"]["account"]["data"] or {}).get("id") == account_id
        ]
        served = await run.walk("/prospects", {"filter[account][id]": str(account_id)})
        assert [r["id"] for r in served] == want
        reply = await run.get("/prospects", {"include": "account,stage", "page[size]": "20"})
        assert reply.status == 200
        included = {(r["type"], r["id"]) for r in reply.json["included"]}
        for record in reply.json["data"]:
            for name in ("account", "stage"):
                data = record["relationships"][name]["data"]
                if data is not None:
                    assert (data["type"], data["id"]) in included
        one = await run.get(f"/prospects/{prospect['id']}")
        assert one.status == 200 and one.json["data"] == prospect


async def test_audit_logs_have_uuid_ids_that_page_sort_and_filter(sim: Simulator) -> None:
    logs = list(sim.truth.records("auditLog"))
    ids = [r["id"] for r in logs]
    assert all(uuid.UUID(i).version == 7 for i in ids)
    assert ids == sorted(ids)  # in id order: UUIDs sort as the logs were written
    stamps = [r["attributes"]["timestamp"] for r in logs]
    assert stamps == sorted(stamps)
    assert stamps[0] >= "2024-10-03"  # kept 90 days
    async with running(sim=sim) as run:
        served = await run.walk("/auditLogs", {"sort": "-id", "page[size]": "9"})
        assert [r["id"] for r in served] == ids[::-1]
        reply = await run.get("/auditLogs", {"filter[id]": f"{ids[3]},{ids[5]}"})
        assert [r["id"] for r in reply.json["data"]] == [ids[3], ids[5]]
        reply = await run.get("/auditLogs", {"filter[id]": f"{ids[3]}..{ids[6]}"})
        assert [r["id"] for r in reply.json["data"]] == ids[3:7]
        served = await run.walk("/auditLogs", {"filter[timestamp]": f"{stamps[10]}..inf"})
        assert [r["id"] for r in served] == [
            i for i, s in zip(ids, stamps, strict=True) if s >= stamps[10]
        ]
        assert (await run.get("/auditLogs", {"filter[id]": "not-a-uuid"})).status == 400
        assert (await run.get(f"/auditLogs/{ids[0]}")).status == 404  # no such route
        assert (await run.get("/duties/1")).status == 404
        assert (await run.get("/auditLogs", {"filter[createdAt]": "2024-01-01..inf"})).status == 400


# -- scopes -----------------------------------------------------------------------------------


async def test_a_collection_without_its_read_scope_answers_403() -> None:
    cfg = SimulatorConfig(
        steps=30, seed=2, prospects=40, denied_scopes=frozenset({"prospects.read", "events"})
    )
    async with running(cfg) as run:
        for collection in ("prospects", "events"):
            reply = await run.get(f"/{collection}")
            assert reply.status == 403
            error = reply.json["errors"][0]
            assert error["id"] == "unauthorizedOauthScope"
            assert f"{collection}.read" in error["detail"]
            assert "X-RateLimit-Remaining" in reply.headers
        assert (await run.get("/accounts")).status == 200
        assert (await run.get("/sequenceSteps")).status == 200
        scope = run.sim.auth.scope.split()
        assert "prospects.read" not in scope and "events.read" not in scope
        assert {"accounts.read", "sequenceSteps.read", "auditLogs.read"} <= set(scope)
        assert len(scope) == 45
    step_world = SimulatorConfig(steps=10, seed=2, denied_scopes=frozenset({"mailings.read"}))
    async with running(step_world) as run:
        assert (await run.get("/mailings")).status == 403
        assert (await run.get("/sequenceSteps")).status == 200
        assert run.sim.auth.scope == STEP_WORLD_SCOPE.replace(" mailings.read", "")


async def test_a_minted_token_carries_the_granted_scope() -> None:
    cfg = SimulatorConfig(
        steps=10, seed=2, prospects=10, denied_scopes=frozenset({"webhooks.read"})
    )
    async with running(cfg) as run:
        form = {
            "grant_type": "refresh_token",
            "client_id": cfg.client_id,
            "client_secret": cfg.client_secret,
            "redirect_uri": cfg.redirect_uri,
            "refresh_token": cfg.refresh_token,
        }
        async with run.session.post(run.root + "/oauth/token", data=form) as response:
            grant = await response.json()
        scope = grant["scope"].split()
        assert "webhooks.read" not in scope and "prospects.read" in scope
        headers = {"Authorization": f"Bearer {grant['access_token']}"}
        assert (await run.get("/webhooks", headers=headers)).status == 403
        assert (await run.get("/prospects", headers=headers)).status == 200


# -- sizes ------------------------------------------------------------------------------------


def test_sizes_override_the_table_and_bring_the_account_in() -> None:
    sim = Simulator(SimulatorConfig(steps=20, seed=4, sizes={"stage": 4, "event": 7}))
    assert sim.truth.count("stage") == 4
    assert sim.truth.count("event") == 7
    assert sim.truth.count("prospect") == 1000  # the default scale
    with pytest.raises(ValueError, match="sequenceStep"):
        Simulator(SimulatorConfig(steps=20, sizes={"sequenceStep": 4}))
    none = Simulator(SimulatorConfig(steps=20, seed=4, prospects=5, sizes={"opportunity": 0}))
    assert none.truth.count("opportunity") == 0
    assert all(
        r["relationships"]["opportunity"]["data"] is None for r in none.truth.records("mailing")
    )


def test_the_same_seed_gives_the_same_account_and_adding_a_type_shifts_no_other() -> None:
    a = Simulator(SimulatorConfig(steps=40, seed=8, prospects=60))
    b = Simulator(SimulatorConfig(steps=40, seed=8, prospects=60))
    c = Simulator(SimulatorConfig(steps=40, seed=8, prospects=60, sizes={"webhook": 9}))
    for type_name in a.truth.types():
        assert list(a.truth.records(type_name)) == list(b.truth.records(type_name))
        if type_name != "webhook":
            assert list(a.truth.records(type_name)) == list(c.truth.records(type_name)), type_name


# -- mutations --------------------------------------------------------------------------------


async def test_mutations_in_every_type_keep_truth_and_integrity() -> None:
    sim = Simulator(SimulatorConfig(steps=60, seed=6, prospects=80, clock=lambda: CLOCK))
    logs = {t for t in sim.truth.types() if schema.resource_type(t).append_only}
    assert logs == {"auditLog", "batchItem", "duty", "event"}
    before = {t: {r["id"]: r for r in sim.truth.records(t)} for t in logs}
    store = sim.store
    for type_name in sim.truth.types():
        store.insert(type_name)
        table = store.tables[type_name]
        record_id = table.ids[next(r for r in range(len(table)) if table.alive[r])]
        if type_name in logs:
            with pytest.raises(ValueError, match=f"^{type_name} records never change"):
                store.update(type_name, record_id)
            assert store.move(type_name, record_id) is None
        else:
            store.update(type_name, record_id)
            store.move(type_name, record_id)
        alive = [table.ids[r] for r in range(len(table)) if table.alive[r]]
        if len(alive) > 3:
            store.delete(type_name, alive[-2])
    sim.mutate(1500)
    kinds = Counter(t for t in sim.truth.types() for _ in sim.truth.deleted_ids(t))
    assert len(kinds) > 20  # deletions spread over the types
    for type_name in logs:  # a log's surviving records never changed
        for record in sim.truth.records(type_name):
            if record["id"] in before[type_name]:
                assert record == before[type_name][record["id"]]
    for type_name in sim.truth.types():
        served = set(sim.truth.ids(type_name))
        assert not served & sim.truth.deleted_ids(type_name)
        for record_id in list(served)[:3]:
            assert sim.truth.get(type_name, record_id) is not None
    async with running(sim=sim) as run:
        walked = {
            t: await run.walk(_collection(t), {"page[size]": "1000"}) for t in sim.truth.types()
        }
        for type_name, records in walked.items():
            assert records == list(sim.truth.records(type_name)), type_name
    _check_integrity(sim, walked)


async def test_a_log_read_by_its_creation_time_window_sees_every_new_entry() -> None:
    """How an incremental run reads a log (`schema.Incremental.APPEND_ONLY`): a window on the
    creation time, sorted by it (walked along the id order, as the log is written)."""
    sim = Simulator(SimulatorConfig(steps=30, seed=12, prospects=60, clock=lambda: CLOCK))
    assert sim.store.creation_order("event") == "createdAt"
    assert sim.store.creation_order("auditLog") == "timestamp"
    assert sim.store.creation_order("prospect") is None
    events = list(sim.truth.records("event"))
    start = events[len(events) // 2]["attributes"]["createdAt"]
    new = [sim.store.insert("event") for _ in range(5)]
    async with running(sim=sim) as run:
        for spec in ("createdAt", "-createdAt"):
            params = {"filter[createdAt]": f"{start}..inf", "sort": spec, "page[size]": "17"}
            served = [r["id"] for r in await run.walk("/events", params)]
            want = [
                r["id"] for r in sim.truth.records("event") if r["attributes"]["createdAt"] >= start
            ]
            assert served == (want if spec == "createdAt" else want[::-1])
            assert set(new) <= set(served)


async def test_links_related_answer_where_the_target_names_the_source(sim: Simulator) -> None:
    """A links-only relationship's URL filters the target by the source's type
    (`<target collection>?filter[<type>][id]=<id>`): it answers, with exactly the records whose
    to-one names the source, wherever the target has such a to-one; elsewhere (a batch names no
    prospect, a kaiaRecording's account is a link the simulator cannot follow) it is a 400 or a
    404, as docs/simulator.md lists."""
    answered = refused = 0
    async with running(sim=sim) as run:
        for type_name in sim.truth.types():
            record = next(sim.truth.records(type_name))
            for rel in schema.resource_type(type_name).relationships:
                if rel.shape is not Shape.LINKS:
                    continue
                url = record["relationships"][rel.name]["links"]["related"]
                reply = await run.get(url)
                target = sim.store.tables.get(rel.target)
                if target is not None and type_name in target.fks:
                    assert reply.status == 200, (type_name, rel.name)
                    want = [
                        r["id"]
                        for r in sim.truth.records(rel.target)
                        if (r["relationships"][type_name]["data"] or {}).get("id") == record["id"]
                    ]
                    served = await run.walk(url)
                    assert [r["id"] for r in served] == want, (type_name, rel.name)
                    answered += 1
                else:
                    assert reply.status in (400, 404), (type_name, rel.name)
                    refused += 1
    assert answered >= 30 and refused <= 13


def test_readable_text_is_plain_and_the_default_stays_hostile() -> None:
    """The demo's data (`readable_text`) reads plainly in a terminal; every other simulator,
    the tests' included, keeps the hostile text (scripts, emoji, tabs, line breaks)."""

    def strings(sim: Simulator) -> list[str]:
        found: list[str] = []
        for type_name in ("sequence", "sequenceStep", "user", "mailing", "prospect"):
            for record in sim.truth.records(type_name):
                found += [v for v in record["attributes"].values() if isinstance(v, str)]
        return found

    plain = strings(Simulator(SimulatorConfig(steps=200, seed=3, prospects=50, readable_text=True)))
    hostile = strings(Simulator(SimulatorConfig(steps=200, seed=3, prospects=50)))
    assert plain and all(s.isascii() and s.isprintable() for s in plain)
    assert any(not s.isascii() for s in hostile) and any("\t" in s or "\n" in s for s in hostile)
