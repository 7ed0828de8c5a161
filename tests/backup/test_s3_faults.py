"""An S3 store that fails (5xx, resets, lost answers, delays; a fault proxy in front of moto): exports stay exact, and verify, compact and the lease say what happened in one line."""

from __future__ import annotations

import os
import re
import sys
import uuid
from collections.abc import Iterator

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from exporter.backup.compact import compact, load_pointer, read_current
from exporter.backup.lock import LEASE_NAME, BusyError, OutputLock
from exporter.backup.reader import read_table
from exporter.backup.storage import Storage
from exporter.core.errors import ExitCode, OutputError
from tests.helpers.runs import export_command, run_cli, run_export
from tests.helpers.s3 import assert_exact_on_s3
from tests.helpers.s3_fault_proxy import Fault, FaultProxy, fault_proxy
from tests.helpers.sim import StartSimulator
from tests.helpers.waiting import wait_until_blocking

pytestmark = pytest.mark.slow  # every test starts or uses a moto S3 server


@pytest.fixture
def proxy(s3_server: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[FaultProxy]:
    """The fault proxy in front of moto; AWS_ENDPOINT_URL points at it for the test."""
    with fault_proxy(s3_server) as running:
        monkeypatch.setenv("AWS_ENDPOINT_URL", running.endpoint)
        yield running


def new_uri(name: str) -> str:
    return f"s3://backups/faults/{name}-{uuid.uuid4().hex[:6]}"


async def run(*args: str) -> tuple[int, str, str]:
    return await run_cli([sys.executable, "-m", "exporter", *args])


def test_a_lost_answer_to_a_conditional_write_is_recognised(proxy: FaultProxy) -> None:
    storage = Storage.open(new_uri("lost"))
    assert storage.read_document("_checkpoint.json") is None
    proxy.add(Fault("lost", "PUT", r"_checkpoint\.json", times=1))
    storage.write_atomically("_checkpoint.json", b'{"n": 1}')  # applied; the retry meets a 412
    storage.write_atomically("_checkpoint.json", b'{"n": 2}')  # and its version was taken
    assert Storage.open(storage.display).read_document("_checkpoint.json") == b'{"n": 2}'
    outcomes = [o for m, p, o in proxy.requests if m == "PUT" and "_checkpoint" in p]
    assert outcomes[0] == "lost" and len(outcomes) >= 3


async def test_an_export_through_a_failing_store_ends_exact(
    proxy: FaultProxy, start_simulator: StartSimulator
) -> None:
    running = await start_simulator(steps=1200, seed=1712)
    uri = new_uri("export")
    proxy.add(
        Fault("status", "PUT", r"part-", times=3, skip=1, status=503),
        Fault("reset", "PUT", r"part-", times=2, skip=4),
        Fault("lost", "PUT", r"_checkpoint\.json", times=2, skip=1),
        Fault("lost", "PUT", r"part-", times=1, skip=6),
        Fault("status", "GET", r"_lock\.json", times=1, status=500),
        Fault("delay", None, r"", times=20, seconds=0.2),
        Fault("reset", "GET", r"list-type=2", times=1),
    )
    attempts = []
    for _attempt in range(6):
        code, _out, err = await run(*export_command(running, uri)[3:])
        attempts.append((code, err))
        assert "Traceback" not in err, err
        if code == 0:
            break
        errors = [line for line in err.splitlines() if line.startswith("error:")]
        assert code == ExitCode.OUTPUT and len(errors) == 1, err
    else:
        raise AssertionError(f"never finished: {attempts}")
    fired = {(f.kind, f.method, f.path): f.fired for f in proxy.faults}
    assert all(fired.values()), fired  # every kind of fault really happened
    proxy.clear()
    assert_exact_on_s3(running, uri)
    code, out, err = await run("verify", uri)
    assert code == 0, out + err


async def test_verify_says_cannot_be_read_not_mismatch(
    proxy: FaultProxy, start_simulator: StartSimulator
) -> None:
    running = await start_simulator(steps=300, seed=1713)
    uri = new_uri("verify")
    # Pages of 50, so files roll at 100 rows (one page of 1000 would hold every step).
    await run_export(running.base_url, uri, file_rows=100, page_size=50)
    storage = Storage.open(uri)
    part = sorted(p for p in storage.list_files("sequenceSteps") if p.endswith(".parquet"))[1]
    proxy.add(Fault("status", "GET", rf"{part.split('/')[-1]}", times=None, status=500))
    code, out, err = await run("verify", uri)
    assert code == ExitCode.OUTPUT, out + err
    assert "Traceback" not in err and "MISMATCH" not in out
    lines = out.splitlines()
    assert any(line.startswith(f"{part}: cannot be read (") for line in lines), lines
    assert lines[-1].startswith("CANNOT READ: 1 of ")
    proxy.clear()
    code, out, _err = await run("verify", uri)
    assert code == 0, out


async def test_compact_with_a_failing_store_keeps_the_published_set(
    proxy: FaultProxy, start_simulator: StartSimulator
) -> None:
    running = await start_simulator(steps=300, seed=1714)
    uri = new_uri("compact")
    await run_export(running.base_url, uri, relationships="all")
    compact(uri)
    storage = Storage.open(uri)
    before = load_pointer(storage)
    assert before is not None
    proxy.add(Fault("status", "GET", r"sequenceSteps/part-", times=None, status=500))
    code, out, err = await run("compact", uri)
    assert code == ExitCode.OUTPUT, out + err
    [line] = err.strip().splitlines()
    assert line.startswith("error: cannot read s3://backups/faults/") and "Traceback" not in err
    proxy.clear()
    assert load_pointer(storage) == before  # the published set is untouched
    generation, tables = read_current(uri)
    assert generation == before["generation"] and tables["sequenceStep"].num_rows == 300
    assert not storage.exists(LEASE_NAME)  # the failed compaction let its lease go


def test_reading_a_failing_part_is_an_output_error(proxy: FaultProxy) -> None:
    storage = Storage.open(new_uri("read"))
    buffer = pa.BufferOutputStream()
    pq.write_table(pa.table({"id": list(range(100))}), buffer)
    with storage.fs.open_output_stream(storage.path("t/part-x.parquet")) as handle:
        handle.write(buffer.getvalue().to_pybytes())
    assert read_table(storage, "t/part-x.parquet").num_rows == 100
    proxy.add(Fault("status", "GET", r"part-x", times=None, status=500))
    with pytest.raises(OutputError, match=r"^cannot read s3://backups/faults/read-\w+/t/part-x"):
        read_table(storage, "t/part-x.parquet")
    with pytest.raises(OutputError, match="cannot read"):
        storage.sha256("t/part-x.parquet")


def test_a_lease_release_that_fails_is_retried(proxy: FaultProxy) -> None:
    storage = Storage.open(new_uri("release"))
    lock = OutputLock(storage, "export")
    lock.acquire()
    assert storage.exists(LEASE_NAME)
    proxy.add(Fault("status", "DELETE", r"_lock\.json", times=3, status=503))
    lock.release()
    proxy.clear()
    assert not Storage.open(storage.display).exists(LEASE_NAME)


def test_a_lease_the_store_will_not_renew_stops_commits(proxy: FaultProxy) -> None:
    """Every renewal refused (503): while the lease is within its lifetime the run goes on;
    once a whole lifetime has passed without a renewal, `check` stops the commit and says why
    (before: "our lease lapsed and (no renewal for 2 s, ...) took the backup over"). Waits for
    the refusals and for the lapse, not for a duration."""
    storage = Storage.open(new_uri("unrenewed"))
    lock = OutputLock(storage, "export", ttl=1.5)
    lock.acquire()
    try:
        proxy.add(Fault("status", "PUT", r"_lock\.json", times=None, status=503))
        lock.check()  # refused renewals within the lifetime are passing errors: still ours

        def refused() -> bool:
            return any(o == "status" and "_lock" in p for m, p, o in proxy.requests)

        wait_until_blocking(refused, what="a renewal refused by the store")

        def stopped() -> str | None:
            try:
                lock.check()
            except BusyError as exc:
                return str(exc)
            return None

        message = wait_until_blocking(stopped, what="the unrenewed lease to lapse")
        assert re.search(
            r"our lease was not renewed for \d+ s, past its 1\.5 s lifetime .*so another run "
            r"may have taken the backup over; stopped without committing\. Run the same command",
            message,
        ), message
        assert "\n" not in message
        with pytest.raises(BusyError, match="not renewed"):
            lock.check()  # and stays lapsed, whatever a late renewal does
    finally:
        proxy.clear()
        lock.release()


def test_a_failed_write_probe_leaves_no_object(proxy: FaultProxy) -> None:
    storage = Storage.open(new_uri("probe"))
    proxy.add(Fault("status", "DELETE", r"write-probe", times=2, status=500))
    storage.check_writable()  # the removal is retried
    proxy.clear()
    # The upload completes (the object exists), but its answer never arrives.
    proxy.add(Fault("lost", "POST", r"write-probe.*uploadId=", times=None))
    with pytest.raises(OutputError, match="cannot write to the output directory"):
        storage.check_writable()
    proxy.clear()
    assert [p for p in storage.list_files("") if "write-probe" in p] == []


def test_the_proxy_is_what_the_tests_talk_to(proxy: FaultProxy) -> None:
    assert os.environ["AWS_ENDPOINT_URL"] == proxy.endpoint
    storage = Storage.open(new_uri("sanity"))
    storage.write_atomically("_manifest.json", b"{}")
    assert storage.read_document("_manifest.json") == b"{}"
    assert {m for m, _p, _o in proxy.requests} >= {"PUT", "GET"}
