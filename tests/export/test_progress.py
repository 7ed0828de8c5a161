"""What a run shows its operator: a live terminal display, periodic lines, JSON events, or nothing."""

from __future__ import annotations

import os
import pty
import subprocess
import sys
from collections import Counter
from pathlib import Path

import orjson
import pytest

from exporter.commands.display import render_lines, summary_line
from exporter.core.progress import ResourceProgress, Snapshot
from exporter.simulator import Faults
from tests.helpers.runs import run_cli
from tests.helpers.sim import TOKEN, StartSimulator, clean_env


def command(base_url: str, out: Path, *extra: str) -> list[str]:
    return [
        sys.executable,
        "-m",
        "exporter",
        "export",
        "--out",
        str(out),
        "--base-url",
        base_url,
        "--token",
        TOKEN,
        "--page-size",
        "100",
        "--concurrency",
        "2",
        "--rate-limit",
        "100000/1",
        "--relationships",
        "sequence",
        *extra,
    ]


def test_render_lines_and_summary() -> None:
    snapshot = Snapshot(
        elapsed=10.0,
        phase="crawl",
        resources={"sequenceStep": ResourceProgress(records=2500, pages=25, total=10000)},
        requests=30,
        retries=2,
        rate_remaining=9970,
        waited=1.5,
    )
    lines = render_lines(snapshot, {"sequenceStep": "sequenceSteps"})
    assert lines[0].split()[:4] == ["sequenceSteps", "2,500/10,000", "records", "25"]
    assert "250/s" in lines[0] and "eta 30s" in lines[0]  # 7,500 left at 250/s
    assert "9,970 left in the API's window" in lines[1] and "1.5s waiting" in lines[1]
    assert "2 retried" in lines[1]
    assert summary_line(snapshot).startswith("progress: 2,500 records (sequenceStep 2,500), 250/s")


@pytest.mark.slow
async def test_json_log_format(start_simulator: StartSimulator, tmp_path: Path) -> None:
    running = await start_simulator(steps=1200, seed=61, faults=Faults(latency_s=0.02))
    code, out, err = await run_cli(
        command(running.base_url, tmp_path, "--log-format", "json", "--progress-interval", "0.1")
    )
    assert code == 0, err
    events = [orjson.loads(line) for line in err.splitlines()]  # every line is a JSON object
    names = [e["event"] for e in events]
    assert names[0] == "run.start" and names[-1] == "run.finish"
    progress = [e for e in events if e["event"] == "progress"]
    assert len(progress) >= 2
    counts = [e["records"] for e in progress]
    assert counts == sorted(counts) and counts[-1] > 0
    assert progress[-1]["resources"]["sequenceStep"]["total"] == 1200  # from count=true
    result = orjson.loads(out)
    assert result["rows"]["sequenceStep"] == 1200
    assert TOKEN not in out + err


@pytest.mark.slow
async def test_verbose_logs_every_request(start_simulator: StartSimulator, tmp_path: Path) -> None:
    # Some answers fail: their retries are logged as well.
    running = await start_simulator(steps=700, seed=62, faults=Faults(error_rate=0.1))
    code, _out, err = await run_cli(
        command(
            running.base_url, tmp_path, "--verbose", "--log-format", "json", "--page-size", "50"
        )
    )
    assert code == 0, err
    requests = [e for e in map(orjson.loads, err.splitlines()) if e["event"] == "request"]
    assert len(requests) == running.sim.counters.requests  # one line per request sent, no more
    statuses = Counter(e["status"] for e in requests)
    assert statuses[200] > 0 and sum(n for s, n in statuses.items() if s != 200) > 0
    for e in requests:
        assert e["level"] == "debug" and e["method"] == "GET" and e["ms"] >= 0
        assert e["url"].startswith(running.base_url) and e["attempt"] >= 1
    assert any(e["attempt"] > 1 for e in requests)  # a retried request says which attempt
    assert TOKEN not in err


@pytest.mark.slow
async def test_json_errors(tmp_path: Path) -> None:
    code, _out, err = await run_cli(
        command("http://127.0.0.1:9/api/v2", tmp_path, "--log-format", "json")
    )
    assert code == 5
    last = orjson.loads(err.splitlines()[-1])
    assert last["level"] == "error" and last["exit_code"] == 5 and "--base-url" in last["message"]


@pytest.mark.slow
async def test_lines_off_a_terminal_and_quiet(
    start_simulator: StartSimulator, tmp_path: Path
) -> None:
    running = await start_simulator(steps=1200, seed=62, faults=Faults(latency_s=0.02))
    code, _out, err = await run_cli(
        command(running.base_url, tmp_path / "a", "--progress-interval", "0.1")
    )
    assert code == 0, err
    assert any(line.startswith("progress: ") for line in err.splitlines())
    assert "\x1b[" not in err  # no terminal codes in a log file
    code, out, err = await run_cli(command(running.base_url, tmp_path / "b", "--quiet"))
    assert code == 0 and err == ""
    assert "sequenceStep 1,200" in out


@pytest.mark.slow
def test_live_display_on_a_terminal(tmp_path: Path) -> None:
    master, slave = pty.openpty()
    env = clean_env()
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "exporter",
            "export",
            "--demo",
            "--demo-steps",
            "20000",
            "--out",
            str(tmp_path),
            "--concurrency",
            "2",
            "--page-size",
            "200",
        ],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=slave,
        env=env,
    )
    os.close(slave)
    chunks = []
    while True:
        try:
            data = os.read(master, 65536)
        except OSError:
            break
        if not data:
            break
        chunks.append(data)
    process.wait(timeout=120)
    os.close(master)
    screen = b"".join(chunks).decode(errors="replace")
    assert process.returncode == 0, screen
    assert "\x1b[2K" in screen  # lines redrawn in place
    words = " ".join(screen.split())  # a line longer than the terminal wraps where it must
    assert "sequenceSteps" in words and "records" in words and "left in the API's window" in words
