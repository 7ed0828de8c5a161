"""The documentation stays true: the README's set-up commands, CI's test command, the data model."""

from __future__ import annotations

import re
from pathlib import Path

from scripts.data_model import render

ROOT = Path(__file__).resolve().parents[2]


def test_data_model_doc_is_current() -> None:
    assert (ROOT / "docs" / "data-model.md").read_text() == render(), (
        "docs/data-model.md is stale: run python3 scripts/data_model.py"
    )


def test_ci_runs_the_readme_test_command() -> None:
    readme = (ROOT / "README.md").read_text()
    blocks = re.findall(r"```sh\n(.*?)\n```", readme, flags=re.S)
    assert blocks[0].strip() == "pip install -e . && exporter export --demo --out ./outreach-demo"
    install, test_command = blocks[1].strip().split(" && ")
    assert install == "pip install -e '.[dev]'"
    ci = (ROOT / ".ci" / "run").read_text().splitlines()
    assert any(line.strip().endswith(test_command) for line in ci), test_command
