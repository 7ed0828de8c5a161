"""Pages per path (`stats.page_paths`): against a simulator serving every member JSON:API allows, every page is read fast (but those of a type that truly needs the slow path) into the default world's backup."""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import pytest

from exporter.model.fastpage import wire_layout
from exporter.model.schema import readable_types, resource_type
from tests.helpers.checks import assert_exact, load_manifest
from tests.helpers.requests import RequestLog, watch
from tests.helpers.runs import run_export
from tests.helpers.sim import StartSimulator
from tests.helpers.truth import read_rows

# Every relationship of a step but creator and updater: their target, user, has an `object`
# attribute (`duties`), whose JSON text only the slow path makes.
WITHOUT_USERS = "sequence,callPurpose,taskPriority,sequenceTemplates,mailings,calls,tasks"
COLLECTIONS = {resource_type(t).collection: t for t in readable_types()}


def record_pages(log: RequestLog) -> Counter[str]:
    """Pages of records the simulator served, per type: every collection GET but the one-record
    probes and id listings (an empty sparse fieldset: nothing in them is read into rows)."""
    pages: Counter[str] = Counter()
    for line in log.lines():
        parts = urlsplit(line)
        type_name = COLLECTIONS.get(parts.path.rstrip("/").rsplit("/", 1)[-1])
        query = parse_qs(parts.query, keep_blank_values=True)
        probe = any(k.startswith("fields[") and v == [""] for k, v in query.items())
        if type_name is not None and not probe:
            pages[type_name] += 1
    return pages


@pytest.mark.slow
@pytest.mark.parametrize("relationships", [WITHOUT_USERS, "all"])
async def test_every_page_of_a_world_with_every_wire_member_is_read_fast(
    start_simulator: StartSimulator, tmp_path: Path, relationships: str
) -> None:
    """Bug caught: a fast path that gives up on a to-many relationship with both `data` and
    `links` (or on any member the slow path ignores) reads every step page the slow way: the
    backup is the same, only `page_paths.slow` says so."""
    plain = await start_simulator(steps=400, seed=13)
    extras = await start_simulator(steps=400, seed=13, wire_extras=True)
    logs = {"extras": watch(extras), "plain": watch(plain)}
    settings = {"relationships": relationships, "page_size": 50, "concurrency": 4}
    await run_export(extras.base_url, tmp_path / "extras", **settings)
    await run_export(plain.base_url, tmp_path / "plain", **settings)

    # Both worlds: every page read fast but those of a type with an `object` attribute. (The
    # walk's batches, hence its pages, depend on timing: each run is held to its own log.)
    for world, log in logs.items():
        pages = record_pages(log)
        slow_types = {t for t in pages if wire_layout(t) is None}
        assert slow_types == ({"user"} if relationships == "all" else set())
        paths = load_manifest(tmp_path / world)["stats"]["page_paths"]
        slow = sum(pages[t] for t in slow_types)
        assert paths == {"fast": sum(pages.values()) - slow, "slow": slow}, (world, pages)
        assert pages["sequenceStep"] >= 8 and pages["sequenceTemplate"] >= 1
    if relationships == "all":
        assert_exact(extras, tmp_path / "extras")  # the oracle: the simulator's ground truth
    # The same backup as the default world's, type by type.
    directories = sorted(p.name for p in (tmp_path / "plain").iterdir() if p.is_dir())
    assert "sequenceSteps" in directories and "sequenceTemplates" in directories
    for directory in directories:
        assert read_rows(tmp_path / "extras" / directory) == read_rows(
            tmp_path / "plain" / directory
        ), directory
