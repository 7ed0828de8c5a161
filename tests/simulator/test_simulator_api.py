"""The simulator over HTTP: records against the OpenAPI schemas, walks, paging, filters, sort, fields, include."""

from __future__ import annotations

import re
from collections import Counter
from datetime import datetime
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import jsonschema
import pytest

from exporter.model import schema
from exporter.simulator import Simulator, SimulatorConfig
from exporter.simulator.data import BASE_TIME
from tests.helpers.simulator_http import Running, running, validate_resource

TIMESTAMP = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{3}Z$")
DATE = re.compile(r"^\d{4}-\d{2}-\d{2}$")


@pytest.fixture(scope="module")
def sim() -> Simulator:
    """One read-only simulator shared by the tests that do not mutate."""
    return Simulator(SimulatorConfig(steps=400, seed=11))


def _sort_value(record: dict[str, Any], name: str) -> tuple[bool, Any]:
    value = record["id"] if name == "id" else record["attributes"][name]
    return (value is not None, value)


def seconds(stamp: str) -> float:
    return datetime.fromisoformat(stamp).timestamp()


@pytest.mark.slow
async def test_every_type_matches_the_openapi_schemas(sim: Simulator) -> None:
    async with running(sim=sim) as run:
        for type_name in schema.RESOURCE_TYPES:
            collection = schema.resource_type(type_name).collection
            records = await run.walk(f"/{collection}", {"page[size]": "1000"})
            assert records, type_name
            for record in records:
                assert record["type"] == type_name
                validate_resource(record)


def test_the_schema_check_rejects_a_wrong_record(sim: Simulator) -> None:
    record = sim.truth.get("sequenceStep", sim.truth.ids("sequenceStep")[0])
    assert record is not None
    record["relationships"]["sequence"] = {"data": {"type": "user", "id": 1}}
    with pytest.raises(jsonschema.ValidationError, match="'user'"):
        validate_resource(record)


async def test_full_walks_return_every_record_once_in_order(sim: Simulator) -> None:
    truth = sim.truth.ids("sequenceStep")
    async with running(sim=sim) as run:
        by_id = await run.walk("/sequenceSteps", {"page[size]": "37"})
        assert [r["id"] for r in by_id] == truth
        for sort in ("updatedAt", "-updatedAt", "-id", "stepType,-order", "-createdAt"):
            records = await run.walk("/sequenceSteps", {"page[size]": "41", "sort": sort})
            ids = [r["id"] for r in records]
            assert sorted(ids) == truth, sort
            keys = []
            for part in sort.split(","):
                name = part.lstrip("-")
                keys.append((name, part.startswith("-")))
            expected = sorted(records, key=lambda r: r["id"], reverse=keys[-1][1])
            for name, descending in reversed(keys):
                expected.sort(
                    key=lambda r, n=name: _sort_value(r, n),
                    reverse=descending,
                )
            assert ids == [r["id"] for r in expected], sort


async def test_records_served_equal_truth(sim: Simulator) -> None:
    async with running(sim=sim) as run:
        for type_name in ("sequenceStep", "mailing", "user"):
            collection = schema.resource_type(type_name).collection
            served = await run.walk(f"/{collection}", {"page[size]": "500"})
            assert served == list(sim.truth.records(type_name))
            one = served[len(served) // 2]
            reply = await run.get(f"/{collection}/{one['id']}")
            assert reply.status == 200
            assert reply.json["data"] == sim.truth.get(type_name, one["id"])
        missing = max(sim.truth.ids("sequenceStep")) + 1000
        reply = await run.get(f"/sequenceSteps/{missing}")
        assert reply.status == 404
        assert reply.json["errors"][0]["id"] == "resourceNotFound"
        assert (await run.get("/sequenceSteps/abc")).status == 404
        assert (await run.get("/nothingHere")).status == 404


def test_generated_data_is_realistic(sim: Simulator) -> None:
    steps = list(sim.truth.records("sequenceStep"))
    sequences = {r["id"]: r for r in sim.truth.records("sequence")}
    assert {s["attributes"]["stepType"] for s in steps} == {
        "auto_email",
        "manual_email",
        "call",
        "task",
    }
    notes = [s["attributes"]["taskNote"] for s in steps]
    assert any(n is None for n in notes)
    assert sum(1 for n in notes if n is not None and len(n) == 65535) >= 1
    assert all(n is None or len(n) <= 65535 for n in notes)
    text = "".join(n for n in notes if n)
    for sample in ("😀", "日本語", "مرحبا", "\u0301"):
        assert sample in text
    for step in steps:
        attributes = step["attributes"]
        sequence = step["relationships"]["sequence"]["data"]
        kind = sequences[sequence["id"]]["attributes"]["sequenceType"] if sequence else None
        assert (attributes["date"] is not None) == (kind == "date")
        assert (attributes["interval"] is not None) == (kind == "interval")
        if attributes["date"] is not None:
            assert DATE.match(attributes["date"])
        for stamp in (attributes["createdAt"], attributes["updatedAt"]):
            assert TIMESTAMP.match(stamp)
            assert seconds(stamp) < BASE_TIME
    ids = [s["id"] for s in steps]
    assert ids != list(range(ids[0], ids[0] + len(ids)))  # sparse
    by_updated = sorted(steps, key=lambda s: (s["attributes"]["updatedAt"], s["id"]))
    assert [s["id"] for s in by_updated] != ids
    # Sizes follow the ratios.
    email_steps = sum(1 for s in steps if s["attributes"]["stepType"].endswith("email"))
    assert 0.3 * email_steps < len(sim.truth.ids("sequenceTemplate")) < 0.9 * email_steps
    assert 1.5 * email_steps < len(sim.truth.ids("mailing")) < 2.5 * email_steps
    assert len(sim.truth.ids("taskPriority")) == 3
    assert len(sim.truth.ids("callPurpose")) == 8


def test_same_seed_same_data_other_seed_other_data() -> None:
    a = list(Simulator(SimulatorConfig(steps=60, seed=3)).truth.records("sequenceStep"))
    b = list(Simulator(SimulatorConfig(steps=60, seed=3)).truth.records("sequenceStep"))
    c = list(Simulator(SimulatorConfig(steps=60, seed=4)).truth.records("sequenceStep"))
    assert a == b
    assert a != c


def test_relationships_agree_in_both_directions(sim: Simulator) -> None:
    truth = sim.truth
    templates_of: dict[int, list[int]] = {}
    for template in truth.records("sequenceTemplate"):
        step = template["relationships"]["sequenceStep"]["data"]
        assert step is not None and truth.get("sequenceStep", step["id"]) is not None
        templates_of.setdefault(step["id"], []).append(template["id"])
    steps_of: dict[int, list[int]] = {}
    for step in truth.records("sequenceStep"):
        relationships = step["relationships"]
        listed = [d["id"] for d in relationships["sequenceTemplates"]["data"]]
        assert listed == templates_of.get(step["id"], [])
        for name, target in (
            ("sequence", "sequence"),
            ("creator", "user"),
            ("updater", "user"),
            ("callPurpose", "callPurpose"),
            ("taskPriority", "taskPriority"),
        ):
            data = relationships[name]["data"]
            if data is not None:
                assert data["type"] == target
                assert truth.get(target, data["id"]) is not None
        if relationships["sequence"]["data"]:
            steps_of.setdefault(relationships["sequence"]["data"]["id"], []).append(step["id"])
        for name, collection in (("calls", "calls"), ("mailings", "mailings"), ("tasks", "tasks")):
            related = relationships[name]["links"]["related"]
            assert related == f"{sim.base_url}/{collection}?filter[sequenceStep][id]={step['id']}"
    for sequence in truth.records("sequence"):
        listed = [d["id"] for d in sequence["relationships"]["sequenceSteps"]["data"]]
        assert listed == steps_of.get(sequence["id"], [])
    for type_name in ("mailing", "call", "task"):
        for record in truth.records(type_name):
            step = record["relationships"]["sequenceStep"]["data"]
            assert step is not None and truth.get("sequenceStep", step["id"]) is not None
    nulls = Counter(
        s["relationships"]["creator"]["data"] is None for s in truth.records("sequenceStep")
    )
    assert nulls[True] and nulls[False]


async def test_links_related_urls_answer(sim: Simulator) -> None:
    async with running(sim=sim) as run:
        step = next(
            s
            for s in sim.truth.records("sequenceStep")
            if s["attributes"]["stepType"] == "auto_email"
        )
        url = step["relationships"]["mailings"]["links"]["related"]
        assert url.startswith(run.root)
        mailings = await run.walk(url)
        expected = [
            m["id"]
            for m in sim.truth.records("mailing")
            if m["relationships"]["sequenceStep"]["data"]["id"] == step["id"]
        ]
        assert [m["id"] for m in mailings] == expected


async def test_paging_defaults_limits_links_and_count(sim: Simulator) -> None:
    total = len(sim.truth.ids("sequenceStep"))
    async with running(sim=sim) as run:
        first = await run.get("/sequenceSteps")
        assert first.status == 200
        assert first.headers["Content-Type"].startswith("application/vnd.api+json")
        document = first.json
        assert len(document["data"]) == 50
        assert "meta" not in document or "count" not in document["meta"]
        assert document["links"]["first"] == run.api + "/sequenceSteps"
        params = {
            "page[size]": "7",
            "sort": "-updatedAt",
            "filter[stepType]": "call,task",
            "count": "true",
        }
        reply = await run.get("/sequenceSteps", params)
        document = reply.json
        matching = sum(
            1
            for s in sim.truth.records("sequenceStep")
            if s["attributes"]["stepType"] in ("call", "task")
        )
        assert document["meta"]["count"] == matching
        for link in ("first", "next"):
            parts = urlsplit(document["links"][link])
            assert f"{parts.scheme}://{parts.netloc}" == run.root
            query = dict(parse_qsl(parts.query))
            assert {k: query[k] for k in params} == params
        assert "page[after]" in dict(parse_qsl(urlsplit(document["links"]["next"]).query))
        big = await run.get("/sequenceSteps", {"page[size]": "1000"})
        assert len(big.json["data"]) == total
        assert "next" not in big.json["links"]
        for bad in ("1001", "0", "x"):
            reply = await run.get("/sequenceSteps", {"page[size]": bad})
            assert reply.status == 400
            assert "page[size]" in reply.json["errors"][0]["detail"]
        reply = await run.get("/sequenceSteps", {"page[after]": "not-a-cursor!"})
        assert reply.status == 400
        # A cursor issued for one sort order is refused for another.
        token = dict(parse_qsl(urlsplit(document["links"]["next"]).query))["page[after]"]
        reply = await run.get("/sequenceSteps", {"page[after]": token, "sort": "id"})
        assert reply.status == 400
        assert (await run.get("/sequenceSteps", {"page[offset]": "10"})).status == 400


async def test_count_is_truncated_at_two_million(
    monkeypatch: pytest.MonkeyPatch, sim: Simulator
) -> None:
    from exporter.simulator import listing

    monkeypatch.setattr(listing, "COUNT_LIMIT", 10)
    async with running(sim=sim) as run:
        document = (await run.get("/sequenceSteps", {"count": "true"})).json
        assert document["meta"] == {"count": 10, "count_truncated": True}
        document = (await run.get("/taskPriorities", {"count": "true"})).json
        assert document["meta"] == {"count": 3, "count_truncated": False}


def _steps(sim: Simulator) -> list[dict[str, Any]]:
    return list(sim.truth.records("sequenceStep"))


async def _ids(run: Running, params: dict[str, str], path: str = "/sequenceSteps") -> list[int]:
    return [r["id"] for r in await run.walk(path, {"page[size]": "53", **params})]


async def test_attribute_filters(sim: Simulator) -> None:
    steps = _steps(sim)
    ids = [s["id"] for s in steps]
    stamps = sorted(s["attributes"]["updatedAt"] for s in steps)
    low, high = stamps[len(stamps) // 4], stamps[3 * len(stamps) // 4]

    def where(predicate: Any) -> list[int]:
        return [s["id"] for s in steps if predicate(s["attributes"])]

    async with running(sim=sim) as run:
        assert await _ids(run, {"filter[stepType]": "call"}) == where(
            lambda a: a["stepType"] == "call"
        )
        assert await _ids(run, {"filter[order]": "1,3"}) == where(lambda a: a["order"] in (1, 3))
        assert await _ids(run, {"filter[id]": f"{ids[5]},{ids[9]},{ids[0]},999999999"}) == [
            ids[0],
            ids[5],
            ids[9],
        ]
        assert await _ids(run, {"filter[id]": f"{ids[10]}..{ids[20]}"}) == ids[10:21]
        assert await _ids(run, {"filter[id]": f"neginf..{ids[3]}"}) == ids[:4]
        assert await _ids(run, {"filter[id]": f"{ids[-3]}..inf"}) == ids[-3:]
        assert await _ids(run, {"filter[updatedAt]": f"{low}..{high}"}) == where(
            lambda a: low <= a["updatedAt"] <= high
        )
        walked = await _ids(run, {"filter[updatedAt]": f"{low}..inf", "sort": "updatedAt"})
        assert sorted(walked) == where(lambda a: a["updatedAt"] >= low)
        walked = await _ids(run, {"filter[updatedAt]": f"neginf..{high}", "sort": "-updatedAt"})
        assert sorted(walked) == where(lambda a: a["updatedAt"] <= high)
        new = {"newFilterSyntax": "true"}
        assert (
            await _ids(
                run, {**new, "filter[id][gt]": str(ids[10]), "filter[id][lte]": str(ids[15])}
            )
            == ids[11:16]
        )
        assert (
            await _ids(
                run, {**new, "filter[id][gte]": str(ids[10]), "filter[id][lt]": str(ids[15])}
            )
            == ids[10:15]
        )
        got = await _ids(run, {**new, "filter[updatedAt][gt]": low, "sort": "updatedAt"})
        assert sorted(got) == where(lambda a: a["updatedAt"] > low)
        dates = sorted(s["attributes"]["date"] for s in steps if s["attributes"]["date"])
        middle = dates[len(dates) // 2]
        assert await _ids(run, {"filter[date]": f"{middle}..inf"}) == where(
            lambda a: a["date"] is not None and a["date"] >= middle
        )
        assert await _ids(run, {"filter[stepType]": "call", "filter[order]": "2..4"}) == where(
            lambda a: a["stepType"] == "call" and a["order"] is not None and 2 <= a["order"] <= 4
        )


async def test_filter_errors_name_the_problem(sim: Simulator) -> None:
    async with running(sim=sim) as run:
        for params, word in (
            ({"filter[taskNote]": "x"}, "taskNote"),
            ({"filter[bounceCount]": "1"}, "bounceCount"),
            ({"filter[nonsense]": "1"}, "nonsense"),
            ({"filter[id]": "abc"}, "abc"),
            ({"filter[updatedAt]": "yesterday..inf"}, "yesterday"),
            ({"filter[id][gte]": "5"}, "newFilterSyntax"),
            ({"newFilterSyntax": "true", "filter[id][between]": "5"}, "gte"),
            ({"filter[sequence][name]": "x"}, "id"),
            ({"filter[mailings][id]": "1"}, "mailings"),
            ({"sort": "taskNote"}, "taskNote"),
            ({"sort": "interval"}, "interval"),
            ({"fields[sequenceStep]": "order,bogus"}, "bogus"),
            ({"include": "mailings"}, "mailings"),
            ({"include": "bogus"}, "bogus"),
            ({"count": "maybe"}, "count"),
        ):
            reply = await run.get("/sequenceSteps", params)
            assert reply.status == 400, params
            error = reply.json["errors"][0]
            assert set(error) == {"id", "title", "detail"}
            assert word in error["detail"], (params, error)


async def test_relationship_filters(sim: Simulator) -> None:
    steps = _steps(sim)
    async with running(sim=sim) as run:
        for name in ("sequence", "creator", "updater", "callPurpose", "taskPriority"):
            targets = [
                s["relationships"][name]["data"]["id"]
                for s in steps
                if s["relationships"][name]["data"]
            ][:3]
            expected = [
                s["id"]
                for s in steps
                if s["relationships"][name]["data"]
                and s["relationships"][name]["data"]["id"] in targets
            ]
            got = await _ids(run, {f"filter[{name}][id]": ",".join(map(str, targets))})
            assert got == expected, name
        chosen = [s["id"] for s in steps[::7]]
        for type_name in ("mailing", "call", "task", "sequenceTemplate"):
            collection = schema.resource_type(type_name).collection
            expected = [
                r["id"]
                for r in sim.truth.records(type_name)
                if r["relationships"]["sequenceStep"]["data"]["id"] in chosen
            ]
            assert expected, type_name
            got = await _ids(
                run, {"filter[sequenceStep][id]": ",".join(map(str, chosen))}, f"/{collection}"
            )
            assert got == expected, type_name
            got = await _ids(
                run,
                {
                    "filter[sequenceStep][id]": ",".join(map(str, chosen)),
                    # sequenceTemplate.updatedAt is not sortable in the hyper-schema.
                    "sort": "-id" if type_name == "sequenceTemplate" else "-updatedAt",
                },
                f"/{collection}",
            )
            assert sorted(got) == expected


async def test_sparse_fieldsets_include_and_authorization_meta(sim: Simulator) -> None:
    async with running(sim=sim) as run:
        document = (
            await run.get("/sequenceSteps", {"fields[sequenceStep]": "order,stepType,sequence"})
        ).json
        for record in document["data"]:
            assert set(record["attributes"]) == {"order", "stepType"}
            assert set(record["relationships"]) == {"sequence"}
            full = sim.truth.get("sequenceStep", record["id"])
            assert full is not None
            assert record["attributes"]["order"] == full["attributes"]["order"]
        document = (await run.get("/sequenceSteps", {"fields[sequenceStep]": ""})).json
        assert all(r["attributes"] == {} for r in document["data"])
        params = {
            "page[size]": "100",
            "include": "sequence,creator,sequenceTemplates",
            "fields[user]": "email",
            "provideAuthorizationMeta": "true",
        }
        document = (await run.get("/sequenceSteps", params)).json
        expected: set[tuple[str, int]] = set()
        for record in document["data"]:
            assert set(record["meta"]) == {"canWrite", "canDelete"}
            for name in ("sequence", "creator"):
                data = record["relationships"][name]["data"]
                if data:
                    expected.add((data["type"], data["id"]))
            for data in record["relationships"]["sequenceTemplates"]["data"]:
                expected.add((data["type"], data["id"]))
        included = [(r["type"], r["id"]) for r in document["included"]]
        assert len(included) == len(set(included))
        assert set(included) == expected
        for record in document["included"]:
            if record["type"] == "user":
                assert set(record["attributes"]) == {"email"}
            else:
                validate_resource(record)
        single = (
            await run.get(f"/sequenceSteps/{document['data'][0]['id']}", {"include": "sequence"})
        ).json
        assert single["data"]["id"] == document["data"][0]["id"]
        sequence = single["data"]["relationships"]["sequence"]["data"]
        assert [(r["type"], r["id"]) for r in single.get("included", [])] == (
            [(sequence["type"], sequence["id"])] if sequence else []
        )


async def test_wrong_content_type_is_415(sim: Simulator) -> None:
    async with running(sim=sim) as run:
        reply = await run.get("/sequenceSteps", headers={"Content-Type": "text/plain"})
        assert reply.status == 415
        reply = await run.get(
            "/sequenceSteps", headers={"Content-Type": "application/vnd.api+json"}
        )
        assert reply.status == 200
