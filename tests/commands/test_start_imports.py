"""What a command imports before it does anything: help and refused flags never load pyarrow, aiohttp, rich or another command's implementation (issue 16, item 5)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

# What a process start should not wait for unless the command needs it: the third-party
# libraries that cost most of the start, and each command's own implementation.
HEAVY = (
    "pyarrow",
    "aiohttp",
    "rich",
    "numpy",
    "aiolimiter",
    "exporter.export.run",
    "exporter.restore.restore",
    "exporter.fleet.fleet",
    "exporter.simulator.server",
    "exporter.audit.status",
    "exporter.audit.verify",
)

# One fresh interpreter runs the given command lines one after another (as `exporter ...`
# would, through the same click group) and reports, after each, which of HEAVY are loaded.
PROBE = """
import json, sys
from exporter.commands.main import main
heavy, runs = json.loads(sys.argv[1]), json.loads(sys.argv[2])
loaded = {}
for args in runs:
    try:
        main(args)
    except SystemExit:
        pass
    loaded[" ".join(args)] = sorted(m for m in heavy if m in sys.modules)
print("LOADED " + json.dumps(loaded))
"""


def loaded_after(runs: list[list[str]]) -> dict[str, list[str]]:
    """Which of HEAVY are in `sys.modules` after each command line, in a new interpreter."""
    result = subprocess.run(
        [sys.executable, "-c", PROBE, json.dumps(HEAVY), json.dumps(runs)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    lines = [line for line in result.stdout.splitlines() if line.startswith("LOADED ")]
    assert len(lines) == 1, (result.returncode, result.stdout[-2000:], result.stderr[-2000:])
    loaded: dict[str, list[str]] = json.loads(lines[0].removeprefix("LOADED "))
    return loaded


def test_help_and_refused_flags_load_no_implementation(tmp_path: Path) -> None:
    commands = ["export", "status", "verify", "compact", "fleet", "restore", "simulate"]
    runs = [
        ["--help"],
        ["--version"],
        *([name, "--help"] for name in commands),
        # Refused while the options are read: the error needs none of the run's modules.
        ["export", "--out", str(tmp_path / "out"), "--page-size", "0"],
        ["restore", str(tmp_path), "--mode", "sideways"],
    ]
    loaded = loaded_after(runs)
    assert list(loaded) == [" ".join(args) for args in runs]
    # Cumulative: the last entry holds everything any of these command lines imported.
    assert loaded[" ".join(runs[-1])] == [], loaded


def test_status_and_verify_read_a_directory_without_the_transport(tmp_path: Path) -> None:
    """They read Parquet (pyarrow is loaded: the command did run) but send no request and
    draw no live block, so aiohttp and rich stay unloaded."""
    loaded = loaded_after([["status", str(tmp_path)], ["verify", str(tmp_path)]])
    status, both = loaded[f"status {tmp_path}"], loaded[f"verify {tmp_path}"]
    assert "exporter.audit.status" in status and "pyarrow" in status, loaded
    assert "exporter.audit.verify" in both, loaded
    for module in ("aiohttp", "aiolimiter", "rich", "exporter.export.run"):
        assert module not in both, loaded
