"""The target account's identity: canonical base URLs, and the org the API root states."""

from __future__ import annotations

import pytest

from exporter.api.account import Account, canonical_base_url, identify, org_of
from exporter.api.auth import StaticToken
from exporter.api.client import ApiClient, ClientSettings
from exporter.core.errors import AuthError
from exporter.core.secrets import Secret
from tests.helpers.sim import TOKEN, StartSimulator


@pytest.mark.parametrize(
    ("spelling", "canonical"),
    [
        ("http://LOCALHOST:80/api/v2/", "http://localhost/api/v2"),
        ("http://localhost/api/v2", "http://localhost/api/v2"),
        ("https://api.example:443/./api//v2/x/..", "https://api.example/api/v2"),
        ("http://127.0.0.1:8080/api/v2?x=1#f", "http://127.0.0.1:8080/api/v2"),
        ("http://user:pw@[::1]:80/", "http://[::1]"),
    ],
)
def test_one_spelling_per_target(spelling: str, canonical: str) -> None:
    assert canonical_base_url(spelling) == canonical


@pytest.mark.parametrize("bad", ["ftp://h/api", "/api/v2", "http:///api", "http://h:port/"])
def test_what_is_not_an_http_url_is_refused(bad: str) -> None:
    with pytest.raises(ValueError, match=r"URL|port"):
        canonical_base_url(bad)


def test_same_account_by_org_when_both_know_it_else_by_origin() -> None:
    a = Account("http://h/api/v2", "org-1")
    assert a.same_as(Account("http://other/api/v2", "org-1"))
    assert not a.same_as(Account("http://h/api/v2", "org-2"))
    assert a.same_as(Account("http://h/api/v2", None))
    assert not a.same_as(Account("http://h2/api/v2", None))
    assert Account.from_json(a.to_json()) == a
    assert Account.from_json({"origin": 5}) is None


@pytest.mark.parametrize(
    ("document", "org"),
    [
        ({"meta": {"org": {"guid": "g-1", "name": "Acme"}}}, "g-1"),
        ({"meta": {"org": {"id": 42}}}, "42"),
        ({"meta": {"org": {"guid": True}}}, None),
        ({"meta": {"org": {"guid": "a\nb"}}}, None),
        ({"meta": {"org": "g"}}, None),
        ({"data": []}, None),
        ([], None),
    ],
)
def test_org_is_read_only_from_a_well_formed_answer(document: object, org: str | None) -> None:
    assert org_of(document) == org


async def test_the_simulator_states_its_org(start_simulator: StartSimulator) -> None:
    first = await start_simulator(steps=5, seed=3)
    named = await start_simulator(steps=5, org_guid="acme")
    for running, expected in ((first, "sim-org-3"), (named, "acme")):
        settings = ClientSettings(base_url=running.base_url)
        async with ApiClient(settings, StaticToken(Secret(TOKEN))) as client:
            account = await identify(client, running.base_url + "/")
        assert account.org == expected
        assert account.origin == canonical_base_url(running.base_url)


async def test_a_refused_token_is_not_an_unknown_org(start_simulator: StartSimulator) -> None:
    running = await start_simulator(steps=5)
    settings = ClientSettings(base_url=running.base_url)
    async with ApiClient(settings, StaticToken(Secret("wrong"))) as client:
        with pytest.raises(AuthError, match="refused the access token"):
            await identify(client, running.base_url)
