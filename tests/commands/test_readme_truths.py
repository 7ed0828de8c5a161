"""What the README's start and tour say a user sees is what they see: the demo's lines, the folder's listing, the SQL extra, `--relationships ''` refused, DIR in every usage line."""

from __future__ import annotations

import re
import subprocess
import sys
import tomllib
from pathlib import Path

import orjson
import pytest

from exporter.model.schema import readable_types
from tests.helpers.checks import assert_refused
from tests.helpers.commands import invoke
from tests.helpers.runs import run_exporter
from tests.helpers.sim import clean_env

ROOT = Path(__file__).resolve().parents[2]
README = (ROOT / "README.md").read_text()


def tour() -> str:
    return README.split("## A tour", 1)[1].split("```console", 1)[1].split("```", 1)[0]


@pytest.mark.slow
def test_the_tours_first_lines_and_listing_are_a_real_demos(tmp_path: Path) -> None:
    out = tmp_path / "outreach-demo"
    result = run_exporter("export", "--demo", "--demo-steps", "60", "--out", str(out))
    assert result.returncode == 0, result.stderr
    shown = tour().strip().splitlines()
    first = result.stderr.splitlines()[0]
    # The tour's first line is the demo's, up to the port and the step count.
    pattern = r"demo: simulator with \d+ steps at http://127\.0\.0\.1:\d+/api/v2"
    assert re.fullmatch(pattern, first), first
    assert re.fullmatch(pattern, shown[1]), shown[1]
    listing = shown[shown.index("$ ls outreach-demo") + 1 :]
    listed = {name for line in listing if line.strip() for name in line.split()}
    assert listed == {p.name for p in out.iterdir()}


def test_duckdb_is_an_extra_the_readme_offers() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert any(d.startswith("duckdb") for d in project["optional-dependencies"]["sql"])
    assert "pip install -e '.[sql]'" in README


@pytest.mark.parametrize("value", ["", " ", ",", " , "])
def test_an_empty_relationships_list_is_refused(tmp_path: Path, value: str) -> None:
    args = ["export", "--out", str(tmp_path / "o"), "--token", "t"]
    code, _, stderr = invoke([*args, "--relationships", value])
    assert_refused(code, stderr, "--relationships: empty", "none")
    config = tmp_path / "c.toml"
    config.write_text(f'relationships = "{value}"\n')
    code, _, stderr = invoke([*args, "--config", str(config)])
    assert_refused(code, stderr, f'relationships = "{value}": empty')
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("command", ["verify", "status", "compact", "restore"])
def test_every_usage_line_says_dir(command: str) -> None:
    code, help_text, _ = invoke([command, "--help"])
    assert code == 0
    assert help_text.splitlines()[0].endswith(" DIR"), help_text.splitlines()[0]
    assert "DIRECTORY" not in help_text


@pytest.mark.slow
def test_the_demo_with_resources_all_exports_the_whole_simulated_account(tmp_path: Path) -> None:
    """README: `--demo --resources all` exports every readable collection of a simulated
    account (it stopped at the first collection beyond the step world with a 404 before)."""
    out = tmp_path / "demo-account"
    done = subprocess.run(
        [sys.executable, "-m", "exporter", "export", "--demo", "--resources", "all", "--quiet",
         "--out", str(out)],
        capture_output=True, text=True, timeout=240, env=clean_env(), check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    manifest = orjson.loads((out / "_manifest.json").read_bytes())
    rows = {name: summary["rows"] for name, summary in manifest["resources"].items()}
    assert set(rows) == set(readable_types())
    assert all(count > 0 for count in rows.values()), rows
    assert rows["prospect"] == 1000  # the demo's account: DEMO_PROSPECTS
