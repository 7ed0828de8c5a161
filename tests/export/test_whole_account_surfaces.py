"""The whole account through every way in and out: `resources` from a config file and a fleet file, and a backup on S3 that compacts and verifies to the ground truth of every type."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import orjson
import pytest

from exporter.audit.verify import verify
from exporter.backup.compact import compact, read_current
from exporter.core.errors import ExitCode
from exporter.model.schema import readable_types, resource_type
from exporter.simulator import Simulator, SimulatorConfig, serve_in_thread
from tests.helpers.runs import run_export
from tests.helpers.sim import TOKEN, StartSimulator, clean_env
from tests.helpers.truth import account_differences

pytestmark = pytest.mark.slow

SMALL = ("stages", "roles", "teams")  # three collections of a few records each


def test_resources_from_the_config_file_and_from_the_fleet_file(tmp_path: Path) -> None:
    """`resources = "..."` in the TOML config (export --config) and as a fleet file key select
    the same collections as the flag: exactly those are exported, nothing of the step world."""
    sim = Simulator(SimulatorConfig(steps=50, seed=81, prospects=100, static_token=TOKEN))
    with serve_in_thread(sim) as root:
        base = root + "/api/v2"
        config = tmp_path / "export.toml"
        config.write_text(
            f'base_url = "{base}"\nout = "{tmp_path / "by-config"}"\n'
            f'resources = "{",".join(SMALL)}"\n'
        )
        by_config = subprocess.run(
            [sys.executable, "-m", "exporter", "export", "--config", str(config), "--quiet"],
            capture_output=True, text=True, timeout=120, check=False,
            env=clean_env(OUTREACH_TOKEN=TOKEN),
        )  # fmt: skip
        fleet = tmp_path / "fleet.toml"
        fleet.write_text(
            "[defaults]\n"
            f'base_url = "{base}"\nout = "{tmp_path}/fleet/{{name}}"\ntoken_env = "ACME_TOKEN"\n'
            f'\n[[account]]\nname = "acme"\nresources = "{",".join(SMALL)}"\n'
        )
        by_fleet = subprocess.run(
            [sys.executable, "-m", "exporter", "fleet", "--config", str(fleet)],
            capture_output=True, text=True, timeout=120, check=False,
            env=clean_env(ACME_TOKEN=TOKEN),
        )  # fmt: skip
    assert by_config.returncode == 0, by_config.stderr
    assert by_fleet.returncode == 0, by_fleet.stderr
    wanted = {t for t in readable_types() if resource_type(t).collection in SMALL}
    for out in (tmp_path / "by-config", tmp_path / "fleet" / "acme"):
        manifest = orjson.loads((out / "_manifest.json").read_bytes())
        assert set(manifest["resources"]) == wanted, out
        assert manifest["parameters"]["resources"] == ",".join(SMALL)
        for type_name in wanted:
            ids = sorted(sim.truth.ids(type_name))
            assert manifest["resources"][type_name]["rows"] == len(ids) > 0, type_name


async def test_the_whole_account_on_s3_compacts_and_verifies_to_the_ground_truth(
    s3_server: str, start_simulator: StartSimulator
) -> None:
    running = await start_simulator(steps=200, seed=83, prospects=100, rate_limit=10**9)
    uri = "s3://backups/acme/account"
    _job, result = await run_export(running.base_url, uri, resources="all")
    assert set(result.rows) == set(readable_types())
    report = verify(uri)
    assert report.exit_code == ExitCode.OK, [d.line() for d in report.differences]
    compact(uri)
    _generation, tables = read_current(uri)
    held = {t: {r["id"]: r for r in table.to_pylist()} for t, table in tables.items()}
    problems = account_differences(running.sim, held, lists_ascending=True)
    assert not problems, "\n".join(problems[:20])


async def test_resources_all_against_the_step_world_exports_the_rest_empty(
    start_simulator: StartSimulator, tmp_path: Path
) -> None:
    """`exporter simulate` without --prospects: `--resources all` exports the nine types and
    finds the 38 others empty (one request each), instead of stopping on a 404."""
    running = await start_simulator(steps=300, seed=85, rate_limit=10**9)
    job, result = await run_export(running.base_url, tmp_path / "out", resources="all")
    assert set(result.rows) == set(readable_types())
    steps_world = set(running.sim.truth.types())
    for type_name, rows in result.rows.items():
        expected = len(running.sim.truth.ids(type_name)) if type_name in steps_world else 0
        assert rows == expected, type_name
    assert (
        job.stats["requests"]
        <= sum(
            max(1, -(-len(running.sim.truth.ids(t)) // 1000)) if t in steps_world else 1
            for t in readable_types()
        )
        + 1
    )  # the account check
