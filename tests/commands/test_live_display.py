"""The live display as a user sees it: a real pseudo-terminal at two widths, its final screen read by a terminal emulator (pyte); periodic lines when stderr is not a terminal; --quiet and --log-format json unchanged."""

from __future__ import annotations

import re
from pathlib import Path

import orjson
import pytest

from exporter.model.schema import resource_type
from tests.helpers.commands import status_json
from tests.helpers.runs import run_exporter
from tests.helpers.terminal import run_on_terminal

pytestmark = pytest.mark.slow  # demo exports on a pty: seconds each

# Enough steps that the run outlasts a few refreshes (the block is redrawn twice a second).
DEMO = ("export", "--demo", "--demo-steps", "6000")


def final_block_is_the_backups(rows: list[str], totals: dict[str, int], columns: int) -> None:
    """The screen after the run: one block row per type with the backup's count (no stale
    row of an earlier frame), one budget row saying done, the log lines above it in order."""
    block: dict[str, list[int]] = {}
    for row in rows:
        match = re.match(r"(\w+) +([\d,]+)(?:/[\d,]+)? records +[\d,]+ pages", row)
        if match:
            block.setdefault(match[1], []).append(int(match[2].replace(",", "")))
    expected = {resource_type(t).collection: n for t, n in totals.items()}
    assert block == {name: [count] for name, count in expected.items()}, rows
    budget = [r for r in rows if re.match(r"\w+: [\d,]+ requests \(", r)]
    assert len(budget) == 1 and budget[0].startswith("done: "), rows
    done = rows.index("phase done")
    finished = next(i for i, r in enumerate(rows) if re.fullmatch(r"run \S+ finished in .*", r))
    first_block_row = min(i for i, r in enumerate(rows) if " records " in r and "pages" in r)
    assert rows.index("phase crawl") < done < finished < first_block_row, rows
    assert any(r.startswith("exported ") for r in rows[first_block_row:])
    assert all(len(r) <= columns for r in rows)


@pytest.mark.parametrize("columns", [80, 132])
def test_the_final_screen_holds_the_final_counts_and_the_log(tmp_path: Path, columns: int) -> None:
    out = tmp_path / "o"
    screen = run_on_terminal(*DEMO, "--out", str(out), columns=columns)
    assert screen.returncode == 0, "\n".join(screen.rows)
    # The oracle: what the backup holds, read from its manifest.
    totals = {t["type_name"]: t["rows"] for t in status_json(out)["totals"]}
    assert totals["sequenceStep"] == 6000
    final_block_is_the_backups(screen.rows, totals, columns)


@pytest.mark.parametrize(("columns", "resize_to"), [(132, 80), (80, 132)])
def test_a_resize_during_the_run_leaves_no_stale_rows(
    tmp_path: Path, columns: int, resize_to: int
) -> None:
    out = tmp_path / "o"
    screen = run_on_terminal(
        *DEMO,
        "--demo-steps",
        "30000",
        "--out",
        str(out),
        columns=columns,
        resize_to=resize_to,
        resize_after=b" pages ",  # once the block is on screen
    )
    assert screen.returncode == 0, "\n".join(screen.rows)
    assert b" pages " in screen.raw
    totals = {t["type_name"]: t["rows"] for t in status_json(out)["totals"]}
    final_block_is_the_backups(screen.rows, totals, resize_to)


def test_not_a_terminal_prints_periodic_lines(tmp_path: Path) -> None:
    result = run_exporter(*DEMO, "--out", str(tmp_path / "o"), "--progress-interval", "0.1")
    assert result.returncode == 0, result.stderr
    progress = [line for line in result.stderr.splitlines() if line.startswith("progress: ")]
    assert progress, result.stderr
    assert "\x1b" not in result.stderr
    assert "phase done" in result.stderr.splitlines()


def test_quiet_on_a_terminal_shows_only_the_result(tmp_path: Path) -> None:
    screen = run_on_terminal(*DEMO, "--out", str(tmp_path / "o"), "--quiet", columns=132)
    assert screen.returncode == 0
    assert next(r for r in screen.rows if r).startswith("exported "), screen.rows
    assert not any(" pages " in r or r.startswith("phase") for r in screen.rows)


def test_json_on_a_terminal_is_json_lines_only(tmp_path: Path) -> None:
    screen = run_on_terminal(
        *DEMO,
        "--out",
        str(tmp_path / "o"),
        "--log-format",
        "json",
        "--progress-interval",
        "0.1",
        columns=80,
    )
    assert screen.returncode == 0
    lines = [line for line in screen.raw.decode().split("\r\n") if line]
    documents = [orjson.loads(line) for line in lines]  # no escape sequence, no block
    assert any(d.get("event") == "progress" for d in documents)
    assert documents[-1]["rows"]["sequenceStep"] == 6000
