"""The quick start run twice: the second `export --demo` over the same --out is an incremental run over the same demo data, decided before any server starts."""

from __future__ import annotations

from pathlib import Path

import pytest

from exporter.core.errors import ExitCode
from tests.helpers.commands import status_json, verify_json
from tests.helpers.runs import run_exporter

pytestmark = pytest.mark.slow  # CLI subprocesses running the demo


def test_the_demo_run_twice_adds_an_incremental_run(tmp_path: Path) -> None:
    out = tmp_path / "outreach-demo"
    demo = ("export", "--demo", "--demo-steps", "120", "--out", str(out))
    first = run_exporter(*demo)
    assert first.returncode == 0, first.stderr
    assert "sequenceStep 120," in first.stdout
    second = run_exporter(*demo)
    assert second.returncode == 0, second.stderr
    assert "already holds this demo's export" in second.stderr
    # The same data served again: nothing changed since the first run's mark.
    assert second.stdout.startswith("exported 0 records"), second.stdout
    runs = status_json(out)["runs"]
    assert [r["parameters"]["incremental"] for r in runs] == [False, True]
    assert all(r["status"] == "complete" for r in runs)
    totals = {t["type_name"]: t["rows"] for t in status_json(out)["totals"]}
    assert totals["sequenceStep"] == 120
    code, report = verify_json(out)
    assert code == 0, report


def test_another_backup_in_the_demos_out_is_refused_before_the_simulator(tmp_path: Path) -> None:
    out = tmp_path / "outreach-demo"
    assert run_exporter("export", "--demo", "--demo-steps", "60", "--out", str(out)).returncode == 0
    before = sorted(p.relative_to(out) for p in out.rglob("*"))
    other = run_exporter("export", "--demo", "--demo-steps", "61", "--out", str(out))
    assert other.returncode == ExitCode.USAGE, other.stderr
    (line,) = other.stderr.splitlines()  # no "demo: simulator ... at" line: none was started
    assert line.startswith("error: ") and "60 steps" in line and "another --out" in line
    assert sorted(p.relative_to(out) for p in out.rglob("*")) == before
