"""Restore's follow-ups: a journal that is not a regular file, bounded numbers, scrubbed 422 details, a stop during a slow write, and a create whose connection was refused."""

from __future__ import annotations

import asyncio
import os
import random
import signal
from collections import Counter
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import orjson
import pytest

from exporter.api.client import STOP_GRACE, ApiClient
from exporter.core.errors import ExitCode, ExporterError
from exporter.restore.journal import replay
from exporter.restore.restore import default_journal
from exporter.restore.source import backup_steps
from exporter.simulator import Simulator, SimulatorConfig, serve
from tests.helpers.restore import (
    assert_restored,
    damage,
    exported,
    restore,
    restore_command,
    run_cli,
    writes,
)
from tests.helpers.runs import run_export
from tests.helpers.sim import TOKEN, Running, StartSimulator, clean_env
from tests.helpers.waiting import wait_until

# -- 1. the journal is read as a regular file, streamed ---------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("apply", [False, True], ids=["plan", "apply"])
@pytest.mark.parametrize("kind", ["directory", "fifo"])
async def test_a_journal_that_is_not_a_regular_file_is_one_line_without_a_hang(
    start_simulator: StartSimulator, tmp_path: Path, kind: str, apply: bool
) -> None:
    running, _backup = await exported(start_simulator, tmp_path / "b")
    damage(running, random.Random(3), 2, 0)
    journal = tmp_path / "journal"
    if kind == "directory":
        journal.mkdir()
    else:
        os.mkfifo(journal)
    extra = ["--apply"] if apply else []
    command = restore_command(running, tmp_path / "b", "--journal", str(journal), *extra)
    code, _out, err = await asyncio.wait_for(run_cli(command), timeout=60)
    assert code in (ExitCode.USAGE, ExitCode.OUTPUT), err
    assert len(err.splitlines()) == 1 and str(journal) in err and "Traceback" not in err
    assert writes(running) == Counter()


@pytest.mark.slow
def test_a_large_journal_is_streamed_to_its_last_line(tmp_path: Path) -> None:
    """No size cap: a journal of tens of thousands of writes (several MiB) is read whole, and
    a torn last line is still ignored."""
    journal = tmp_path / "journal.jsonl"
    body = {"data": {"type": "sequenceStep", "attributes": {"name": "x" * 40}}}
    key = {"sequence": 1, "order": 1, "stepType": "email"}
    count = 30_000
    with open(journal, "wb") as handle:
        for n in range(1, count + 1):
            write = f"{n:x}"
            handle.write(
                orjson.dumps(
                    {
                        "write": write,
                        "op": "create",
                        "old_id": n,
                        "key": key,
                        "seen": [],
                        "above": None,
                        "body": body,
                        "at": 1.0,
                        "state": "intent",
                    }
                )
                + b"\n"
            )
            handle.write(
                orjson.dumps(
                    {
                        "write": write,
                        "op": "create",
                        "old_id": n,
                        "state": "done",
                        "new_id": 10**6 + n,
                        "how": "answer",
                    }
                )
                + b"\n"
            )
        handle.write(b'{"write": "torn')
    assert journal.stat().st_size > 4 << 20
    state = replay(journal)
    assert state.lines == 2 * count and len(state.created) == count
    assert state.created[count] == 10**6 + count and not state.unresolved


# -- 2. restore's numbers are finite and bounded -------------------------------------------------


@pytest.mark.parametrize(
    "args",
    [
        ["--ids", "1,100000000000000000000"],
        ["--ids", "9223372036854775808"],
        ["--ids", "0"],
        ["--ids", "1,\u0661"],  # an Arabic-Indic digit: str.isdigit, not a decimal id
        ["--sequence", "100000000000000000000"],
        ["--sequence", "9223372036854775808"],
        ["--lookup-delay", "nan"],
        ["--lookup-delay", "inf"],
    ],
)
def test_restore_refuses_ids_beyond_int64_and_non_finite_delays(
    tmp_path: Path, args: list[str]
) -> None:
    from click.testing import CliRunner

    from exporter.commands.main import main

    result = CliRunner().invoke(
        main, ["restore", str(tmp_path), "--base-url", "http://127.0.0.1:9/api/v2", *args]
    )
    assert result.exit_code == ExitCode.USAGE, result.output
    assert args[0] in result.output and "Traceback" not in result.output


# -- 4. a 422's detail is server text: scrubbed before the journal and the report --------------


@pytest.mark.slow
async def test_a_422_detail_echoing_the_token_is_scrubbed_in_journal_and_report(
    start_simulator: StartSimulator, tmp_path: Path
) -> None:
    running, _backup = await exported(start_simulator, tmp_path)
    deleted, altered = damage(running, random.Random(8), 1, 1)
    running.sim.hostile.echo_auth_write = 2  # the patch and the create
    command = restore_command(running, tmp_path, "--apply")
    code, out, err = await run_cli(command)
    assert code == ExitCode.FAILED, err + out
    assert running.sim.hostile.served["echo_auth_write"] == 2
    journal = default_journal(tmp_path, running.base_url)
    failed = replay(journal).failed
    assert sorted(failed) == sorted([*deleted, *altered])
    for entry in failed.values():
        assert entry["status"] == 422 and "Refused" in entry["detail"]
        assert entry["detail"].isprintable()
    text = journal.read_text() + out + err
    assert TOKEN not in text and "\x1b" not in text
    rows = [line for line in out.splitlines() if line.startswith("failed")]
    assert len(rows) == 2 and all("forged log line" in row for row in rows)
    assert not any(line.startswith("ERROR forged") for line in (out + err).splitlines())


# -- 5. a stop during a slow write is bounded; the rerun settles it ----------------------------


@pytest.mark.slow
async def test_sigterm_during_a_slow_write_ends_130_within_the_grace_and_the_rerun_is_exact(
    start_simulator: StartSimulator, tmp_path: Path
) -> None:
    running, backup = await exported(start_simulator, tmp_path)
    deleted, _ = damage(running, random.Random(12), 2, 0)
    running.sim.write_policy.apply_delay_s = 30.0  # held far longer than STOP_GRACE
    command = restore_command(running, tmp_path, "--apply", "--concurrency", "1")
    process = await asyncio.create_subprocess_exec(
        *command, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, env=clean_env()
    )
    try:
        await wait_until(
            lambda: (
                "POST /api/v2/sequenceSteps" in running.sim.counters.by_route
                and running.sim.counters.in_flight >= 1
            ),
            what="a create in the API's hands",
        )
        loop = asyncio.get_running_loop()
        signalled = loop.time()
        process.send_signal(signal.SIGTERM)
        out, err = await asyncio.wait_for(process.communicate(), timeout=STOP_GRACE + 20)
        took = loop.time() - signalled
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
    stderr = err.decode()
    assert process.returncode == ExitCode.INTERRUPTED, stderr + out.decode()
    assert "Traceback" not in stderr and took < STOP_GRACE + 8, (took, stderr)
    journal = default_journal(tmp_path, running.base_url)
    assert len(replay(journal).unresolved) == 1  # the create cancelled in flight
    running.sim.write_policy.apply_delay_s = 0.0
    await wait_until(
        lambda: running.sim.counters.in_flight == 0, timeout=60, what="the write to land"
    )
    code, stdout, stderr = await run_cli(command)
    assert code == 0, stderr + stdout
    assert "found on the target" in stdout
    assert writes(running)["POST"] == len(deleted)  # the landed one was not sent again
    assert_restored(running, backup, journal)


# -- 6. a create whose connection was refused was never sent: absent, and sent again -----------


@pytest.mark.slow
async def test_a_create_whose_connection_was_refused_is_absent_and_sent_by_the_next_run(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    sim = Simulator(SimulatorConfig(steps=240, seed=7, static_token=TOKEN))
    async with AsyncExitStack() as outer:
        first = AsyncExitStack()
        root = await first.enter_async_context(serve(sim))
        running = Running(sim, root)
        port = urlsplit(root).port
        assert port is not None
        await run_export(running.base_url, tmp_path)
        backup = backup_steps(tmp_path, None)
        deleted, _ = damage(running, random.Random(11), 3, 0)
        original = ApiClient.send_document
        refused: list[str] = []

        async def api_gone_before_the_first_post(
            self: ApiClient, method: str, url: str, document: dict[str, Any], **kw: Any
        ) -> tuple[int, dict[str, Any]]:
            if method == "POST" and not refused:
                refused.append(url)
                await first.aclose()  # the API goes away between two writes: connects refused
                for _ in range(20):
                    await asyncio.sleep(0)  # let the client see its idle connections closed
            return await original(self, method, url, document, **kw)

        monkeypatch.setattr(ApiClient, "send_document", api_gone_before_the_first_post)
        # The reads after it cannot reach the API either.
        with pytest.raises(ExporterError, match=r"cannot connect"):
            await restore(running, tmp_path, apply=True, concurrency=1)
        assert refused and writes(running) == Counter()  # no POST reached the API
        journal = default_journal(tmp_path, running.base_url)
        lines = [orjson.loads(line) for line in journal.read_bytes().splitlines()]
        [absent] = [line for line in lines if line.get("state") == "absent"]
        assert absent["how"] == "not sent" and absent["old_id"] in deleted
        assert not replay(journal).unresolved

        await outer.enter_async_context(serve(sim, port=port))  # the API is back
        report = await restore(running, tmp_path, apply=True, concurrency=1)
        assert report.exit_code is ExitCode.OK, [e.detail for e in report.failed]
        assert sorted(report.created) == deleted
        assert writes(running)["POST"] == len(deleted)
        assert_restored(running, backup, journal)


async def test_the_client_tells_a_write_never_sent_from_one_whose_answer_was_lost() -> None:
    """`NotSentError` only for a connection that was never opened, and only for a write sent
    once; a write whose connection is cut after it was sent stays a plain `ApiError`."""
    import socket

    from exporter.api.auth import StaticToken
    from exporter.api.client import ClientSettings, NotSentError
    from exporter.core.errors import ApiError
    from exporter.core.secrets import Secret

    with socket.socket() as probe:  # a loopback port nothing listens on: connects are refused
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    body = {"data": {"type": "sequenceStep", "attributes": {}}}
    settings = ClientSettings(base_url=f"http://127.0.0.1:{port}/api/v2", backoff_base=0.01)
    async with ApiClient(settings, StaticToken(Secret(TOKEN))) as client:
        url = f"http://127.0.0.1:{port}/api/v2/sequenceSteps"
        with pytest.raises(NotSentError, match=r"^not sent: cannot connect \(") as caught:
            await client.send_document("POST", url, body, max_attempts=1)
        assert "not sent" in caught.value.message and "\n" not in str(caught.value)
        # Retried, so not "never sent": never reached at all, so most likely a wrong URL.
        with pytest.raises(ExporterError, match=r"^cannot reach .*check --base-url") as retried:
            await client.send_document("POST", url, body, max_attempts=2)
        assert not isinstance(retried.value, NotSentError)

    sim = Simulator(SimulatorConfig(steps=20, seed=3, static_token=TOKEN))
    sim.faults.lost_write_rate = 1.0  # applied, then the connection is cut: sent, answer lost
    async with serve(sim) as root:
        settings = ClientSettings(base_url=root + "/api/v2", backoff_base=0.01)
        async with ApiClient(settings, StaticToken(Secret(TOKEN))) as client:
            sequence = next(iter(sim.truth.records("sequence")))["id"]
            body = {
                "data": {
                    "type": "sequenceStep",
                    "attributes": {"stepType": "call"},
                    "relationships": {"sequence": {"data": {"type": "sequence", "id": sequence}}},
                }
            }
            with pytest.raises(
                ApiError,
                match=r"gave up after 1 attempts?, the last: transport failure \(ServerDisconnected",
            ) as lost:
                await client.send_document(
                    "POST", root + "/api/v2/sequenceSteps", body, max_attempts=1
                )
            assert not isinstance(lost.value, NotSentError)
    assert sim.counters.writes_lost == 1
