"""`--concurrency auto|auto:N|N` from every source (flag, OUTREACH_CONCURRENCY, TOML, fleet file), its refusals, and what a run records and shows of the in-flight bound."""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any

import click
import orjson
import pytest

from exporter.commands.display import render_lines, summary_line
from exporter.commands.fleet_file import parse_fleet
from exporter.commands.main import main
from exporter.commands.options import OPTIONS
from exporter.commands.values import toml_defaults
from exporter.core.config import Concurrency, ExportSettings
from exporter.core.errors import UsageError
from exporter.core.progress import ResourceProgress, Snapshot
from exporter.simulator import Simulator, SimulatorConfig, serve_in_thread
from tests.helpers.checks import assert_refused
from tests.helpers.commands import invoke
from tests.helpers.sim import TOKEN

BASE = ["--base-url", "http://127.0.0.1:9/api/v2", "--token", "t"]


def export_params(args: list[str]) -> dict[str, Any]:
    context = main.commands["export"].make_context("export", [*args, "--out", "o", *BASE])
    return context.params


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("auto", Concurrency()),
        ("AUTO", Concurrency()),
        ("auto:16", Concurrency(ceiling=16)),
        ("3", Concurrency(pinned=3)),
        ("64", Concurrency(pinned=64)),
    ],
)
def test_the_flag_reads_auto_auto_n_and_n(value: str, expected: Concurrency) -> None:
    assert export_params(["--concurrency", value])["concurrency"] == expected


def test_adaptive_is_the_default() -> None:
    settled = export_params([])["concurrency"]
    assert settled == Concurrency() and settled.adaptive
    assert (settled.start, settled.most) == (8, 64)
    assert ExportSettings(out="o").in_flight == Concurrency()
    assert ExportSettings(out="o", concurrency=5).in_flight == Concurrency(pinned=5)


def test_the_variable_and_a_config_file_read_it_too(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    command = main.commands["export"]
    monkeypatch.setenv("OUTREACH_CONCURRENCY", "auto:5")
    assert export_params([])["concurrency"] == Concurrency(ceiling=5)
    assert export_params(["--concurrency", "2"])["concurrency"] == Concurrency(pinned=2)
    monkeypatch.delenv("OUTREACH_CONCURRENCY")
    for toml, expected in (
        ('concurrency = "auto:12"', Concurrency(ceiling=12)),
        ("concurrency = 6", Concurrency(pinned=6)),
        ('concurrency = "auto"', Concurrency()),
    ):
        defaults = toml_defaults(tomllib.loads(toml), command.params, "c.toml")
        assert defaults["concurrency"] == expected
    code, _, stderr = invoke(
        ["export", "--out", str(tmp_path / "o"), *BASE], env={"OUTREACH_CONCURRENCY": "auto:0"}
    )
    assert_refused(code, stderr, "OUTREACH_CONCURRENCY=auto:0 (--concurrency)", "auto:N")


@pytest.mark.parametrize(
    "value", ["0", "65", "auto:0", "auto:65", "auto:", "fast", "8.5", "nan", "inf", "1_0", " "]
)
def test_bad_values_exit_2_in_one_line_naming_the_flag(tmp_path: Path, value: str) -> None:
    code, _, stderr = invoke(
        ["export", "--out", str(tmp_path / "o"), *BASE, "--concurrency", value]
    )
    assert_refused(code, stderr, "--concurrency", "auto, auto:N or N")
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize(
    ("toml", "words"),
    [
        ("concurrency = 0", ["concurrency = 0", "auto, auto:N or N"]),
        ('concurrency = "auto:99"', ["auto:99", "1 <= N <= 64"]),
        ("concurrency = 8.5", ['whole number or "auto"', "float"]),
        ("concurrency = true", ["whole number", "boolean"]),
    ],
)
def test_a_fleet_file_and_a_config_file_refuse_a_value_alike(toml: str, words: list[str]) -> None:
    fleet = f'[[account]]\nname = "a"\nout = "o"\ntoken_env = "T"\n{toml}\n'
    with pytest.raises(UsageError) as from_fleet:
        parse_fleet(tomllib.loads(fleet), "fleet.toml")
    with pytest.raises(UsageError) as from_config:
        toml_defaults(tomllib.loads(toml), main.commands["export"].params, "c.toml")
    for word in words:
        assert word in str(from_config.value), (word, str(from_config.value))
    fleet_says = str(from_fleet.value).removeprefix("fleet.toml: account 'a': concurrency")
    assert fleet_says == str(from_config.value).removeprefix("c.toml: concurrency")


def test_a_fleet_account_takes_auto_n_and_a_number() -> None:
    fleet = (
        '[defaults]\nconcurrency = "auto:20"\n'
        '[[account]]\nname = "a"\nout = "o"\ntoken_env = "T"\n'
        '[[account]]\nname = "b"\nout = "p"\ntoken_env = "T"\nconcurrency = 2\n'
    )
    a, b = parse_fleet(tomllib.loads(fleet), "fleet.toml")
    assert a.options["concurrency"] == Concurrency(ceiling=20)
    assert b.options["concurrency"] == Concurrency(pinned=2)


def test_restore_keeps_its_own_pinned_concurrency() -> None:
    restore = {p.name: p for p in main.commands["restore"].params}
    assert isinstance(restore["concurrency"].type, click.IntRange)
    assert restore["concurrency"].default == 4
    assert OPTIONS["concurrency"].default == "auto"


def test_the_display_and_the_json_progress_show_the_bound() -> None:
    snapshot = Snapshot(
        elapsed=2.0,
        phase="crawl",
        resources={"sequenceStep": ResourceProgress(records=100, pages=1)},
        requests=5,
        in_flight_bound=23,
    )
    assert "at most 23 in flight" in render_lines(snapshot, {})[-1]
    assert "at most 23 in flight" in summary_line(snapshot)
    assert snapshot.to_json()["in_flight_bound"] == 23
    quiet = Snapshot(elapsed=2.0, phase="crawl")
    assert "in flight" not in render_lines(quiet, {})[-1]


def test_a_run_records_its_setting_and_its_bound(tmp_path: Path) -> None:
    """The manifest says what was asked (auto, or the pinned number as before) and what the
    bound did; JSON progress lines carry it; --verbose request lines show it."""
    sim = Simulator(SimulatorConfig(steps=300, seed=3, static_token=TOKEN))
    with serve_in_thread(sim) as root:
        run_both(root + "/api/v2", tmp_path)


def run_both(base_url: str, tmp_path: Path) -> None:
    args = ["--base-url", base_url, "--token", TOKEN, "--relationships", "none"]
    args += ["--page-size", "20", "--rate-limit", "100000/1"]
    code, _, stderr = invoke(
        ["export", "--out", str(tmp_path / "auto"), *args, "--log-format", "json",
         "--progress-interval", "0.05", "--verbose"]
    )  # fmt: skip
    assert code == 0, stderr
    auto = orjson.loads((tmp_path / "auto" / "_manifest.json").read_bytes())
    assert auto["parameters"]["concurrency"] == "auto"
    bound = auto["stats"]["in_flight_bound"]
    assert bound["setting"] == "auto" and 8 <= bound["peak"] <= 64 and 1 <= bound["last"] <= 64
    events = [orjson.loads(line) for line in stderr.splitlines() if line.startswith("{")]
    requests = [e for e in events if e.get("event") == "request"]
    assert requests and all(1 <= e["in_flight_bound"] <= 64 for e in requests)
    progress = [e for e in events if e.get("event") == "progress"]
    assert all("in_flight_bound" in e for e in progress)

    code, _, stderr = invoke(
        ["export", "--out", str(tmp_path / "pinned"), *args, "--concurrency", "3"]
    )
    assert code == 0, stderr
    pinned = orjson.loads((tmp_path / "pinned" / "_manifest.json").read_bytes())
    assert pinned["parameters"]["concurrency"] == 3
    assert pinned["stats"]["in_flight_bound"] == {"setting": "3", "peak": 3, "last": 3, "cuts": 0}
