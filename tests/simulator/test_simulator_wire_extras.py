"""`SimulatorConfig.wire_extras` (`simulate --wire-extras`): every member JSON:API allows beside the data, served valid, with the same data as the default world."""

from __future__ import annotations

import copy
from typing import Any

import pytest
from click.testing import CliRunner

from exporter.commands.main import main
from exporter.model.schema import RESOURCE_TYPES, Shape, resource_type
from exporter.simulator import Simulator, SimulatorConfig
from tests.helpers.simulator_http import running, validate_resource


def _without_extras(record: dict[str, Any]) -> dict[str, Any]:
    """A record as the default world serves it: no record links or meta, no `links` beside a
    to-many relationship's `data`."""
    plain = copy.deepcopy(record)
    plain.pop("links")
    plain.pop("meta")
    for rel in resource_type(plain["type"]).relationships:
        if rel.shape is Shape.TO_MANY:
            plain["relationships"][rel.name].pop("links")
    return plain


async def test_every_member_is_served_valid_around_the_same_data() -> None:
    plain_sim = Simulator(SimulatorConfig(steps=120, seed=11))
    async with (
        running(SimulatorConfig(steps=120, seed=11, wire_extras=True)) as extras,
        running(sim=plain_sim) as plain,
    ):
        for type_name in RESOURCE_TYPES:  # the step world
            collection = resource_type(type_name).collection
            params = {"page[size]": "1000", "count": "true"}
            page = (await extras.get(f"/{collection}", params)).json
            default = (await plain.get(f"/{collection}", params)).json
            assert page["included"] == [] and "included" not in default
            assert page["meta"] == {**default["meta"], "api": {"version": "2"}}
            assert page["data"], type_name
            served = []
            for record in page["data"]:
                validate_resource(record)
                assert record["links"] == {"self": f"{extras.api}/{collection}/{record['id']}"}
                assert set(record["meta"]) == {"canWrite", "canDelete"}
                for rel in resource_type(type_name).relationships:
                    member = record["relationships"][rel.name]
                    if rel.shape is Shape.TO_MANY:
                        assert set(member) == {"data", "links"}, (type_name, rel.name)
                        assert member["links"]["related"].startswith(extras.api + "/")
                served.append(_without_extras(record))
            # The same data as the default world (its links carry its own base URL).
            expected = [
                {
                    **r,
                    "relationships": {
                        name: _rebased(value, plain.api, extras.api)
                        for name, value in r["relationships"].items()
                    },
                }
                for r in default["data"]
            ]
            assert served == expected, type_name
        # Without count, a page still carries meta; a single record an empty `included`.
        page = (await extras.get("/sequenceSteps", {"page[size]": "5"})).json
        assert page["meta"] == {"api": {"version": "2"}}
        record = page["data"][0]
        single = (await extras.get(record["links"]["self"])).json
        assert single == {"data": record, "included": []}


def _rebased(value: dict[str, Any], old: str, new: str) -> dict[str, Any]:
    links = value.get("links")
    if links is None:
        return value
    return {**value, "links": {"related": links["related"].replace(old, new, 1)}}


async def test_a_to_many_relationship_links_to_the_records_of_its_data() -> None:
    async with running(SimulatorConfig(steps=200, seed=11, wire_extras=True)) as extras:
        page = (await extras.get("/sequenceSteps", {"page[size]": "200"})).json
        checked = 0
        for record in page["data"]:
            member = record["relationships"]["sequenceTemplates"]
            if not member["data"]:
                continue
            related = (await extras.get(member["links"]["related"])).json
            assert [(r["type"], r["id"]) for r in related["data"]] == [
                (d["type"], d["id"]) for d in member["data"]
            ]
            checked += 1
            if checked == 3:
                break
        assert checked == 3


@pytest.mark.parametrize("specialized", [True, False])
def test_spliced_bytes_with_extras_equal_the_reference_rendering(specialized: bool) -> None:
    sim = Simulator(SimulatorConfig(steps=300, seed=4, wire_extras=True))
    store = sim.store
    for renderer in store._renderers.values():
        renderer.specialized = specialized
    store.set_base_url("http://127.0.0.1:1/api/v2/50%25")
    for name, table in store.tables.items():
        for row in range(len(table)):
            assert store.record_bytes(name, row) == store.reference_bytes(name, row), (name, row)
    step = store._renderers["sequenceStep"]
    assert (step._values == step._generic_values) is not specialized


def test_the_flag_and_its_variable_reach_the_simulator(monkeypatch: pytest.MonkeyPatch) -> None:
    from exporter.simulator import cli as simulator_cli

    served: list[Simulator] = []

    async def capture(sim: Simulator, host: str, port: int) -> None:
        served.append(sim)

    monkeypatch.setattr(simulator_cli, "_serve_until_signalled", capture)
    for args, env in (
        ([], {}),
        (["--wire-extras"], {}),
        ([], {"OUTREACH_SIMULATE_WIRE_EXTRAS": "1"}),
        (["--no-wire-extras"], {"OUTREACH_SIMULATE_WIRE_EXTRAS": "1"}),
    ):
        result = CliRunner().invoke(main, ["simulate", "--steps", "5", *args], env=env)
        assert result.exit_code == 0, result.output
    assert [sim.cfg.wire_extras for sim in served] == [False, True, True, False]
