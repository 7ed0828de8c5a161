"""Every backup knows whose it is: another spelling of one API is the same backup, another account behind any URL is refused."""

from __future__ import annotations

from pathlib import Path

import orjson
import pytest

from exporter.core.errors import UsageError
from tests.helpers.runs import run_export
from tests.helpers.sim import StartSimulator


def snapshot(out: Path) -> dict[Path, bytes]:
    """Every file of the backup (the lock's lease aside) with its content."""
    return {p: p.read_bytes() for p in out.rglob("*") if p.is_file() and "_lock" not in p.name}


def localhost(base_url: str) -> str:
    return base_url.replace("://127.0.0.1:", "://LOCALHOST:").replace("/api/v2", "/api/./v2/")


async def test_another_spelling_of_the_same_api_is_the_same_backup(
    start_simulator: StartSimulator, tmp_path: Path
) -> None:
    running = await start_simulator(steps=80, seed=71)
    _job, first = await run_export(running.base_url, tmp_path)
    assert first.state.account == {"origin": running.base_url, "org": "sim-org-71"}
    manifest = orjson.loads((tmp_path / "_manifest.json").read_bytes())
    assert manifest["account"] == first.state.account
    _job, again = await run_export(localhost(running.base_url), tmp_path, incremental=True)
    assert again.state.kind == "incremental"


async def test_another_org_behind_the_same_url_is_refused(
    start_simulator: StartSimulator, tmp_path: Path
) -> None:
    running = await start_simulator(steps=80, seed=72)
    await run_export(running.base_url, tmp_path)
    before = snapshot(tmp_path)
    running.sim.cfg.org_guid = "another-org"
    with pytest.raises(UsageError) as caught:
        await run_export(running.base_url, tmp_path, incremental=True)
    message = str(caught.value)
    assert "sim-org-72" in message and "another-org" in message and "--out" in message
    assert "\n" not in message
    assert snapshot(tmp_path) == before  # nothing changed


async def test_an_unfinished_run_is_resumed_only_for_its_own_account(
    start_simulator: StartSimulator, tmp_path: Path
) -> None:
    running = await start_simulator(steps=80, seed=73)
    await run_export(running.base_url, tmp_path)
    path = tmp_path / "_checkpoint.json"
    state = orjson.loads(path.read_bytes())
    state["status"] = "running"  # as a killed run leaves it
    path.write_bytes(orjson.dumps(state))
    running.sim.cfg.org_guid = "someone-else"
    with pytest.raises(UsageError, match="holds a backup of"):
        await run_export(running.base_url, tmp_path)
    running.sim.cfg.org_guid = None
    _job, resumed = await run_export(localhost(running.base_url), tmp_path)
    assert resumed.resumed and resumed.rows == {"sequenceStep": 80}


async def test_an_older_checkpoint_without_an_account_falls_back_to_the_canonical_url(
    start_simulator: StartSimulator, tmp_path: Path
) -> None:
    running = await start_simulator(steps=60, seed=74)
    other = await start_simulator(steps=60, seed=74)  # the same data, another URL
    await run_export(running.base_url, tmp_path)
    path = tmp_path / "_checkpoint.json"
    state = orjson.loads(path.read_bytes())
    del state["account"]
    path.write_bytes(orjson.dumps(state))
    with pytest.raises(UsageError, match="holds a backup of"):
        await run_export(other.base_url, tmp_path, incremental=True)
    # The recorded source, spelled another way (what the canonical form makes one).
    respelled = running.base_url.replace("http://", "HTTP://") + "/"
    _job, again = await run_export(respelled, tmp_path, incremental=True)
    assert again.state.account is not None and again.state.account["org"] == "sim-org-74"
