"""Object-store output: an export into s3:// on a real S3-compatible server (moto) on loopback."""

from __future__ import annotations

import asyncio
import hashlib
import importlib.metadata
import os
import random
import signal
import socket
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import orjson
import pyarrow.fs as pafs
import pyarrow.parquet as pq
import pytest

from exporter.backup.compact import compact, read_current
from exporter.backup.storage import Storage
from exporter.restore.restore import backup_steps, default_journal
from exporter.simulator import Faults
from tests.conftest import TOKEN, Running, StartSimulator, clean_env, spawn
from tests.export.test_export import run_export
from tests.export.test_relationships import expected_related
from tests.export.test_resume import export_command, kill_now
from tests.restore.test_restore import assert_restored, damage, writes
from tests.truth import STEP_RELATIONSHIP_COLUMNS, assert_rows_equal, expected_row


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


MOTO_MINIMUM = (5, 2, 5)  # pyproject's moto[server]>=5.2.5: older answers break pyarrow 26


def moto_command(port: int) -> list[str]:
    """The moto S3 server of the interpreter running the tests (never a `moto_server` found
    first on PATH: a system moto may be older than this environment's), or a clear failure."""
    try:
        version = importlib.metadata.version("moto")
    except importlib.metadata.PackageNotFoundError:
        pytest.fail(
            f"moto is not installed for {sys.executable}; install the dev extras "
            "(pip install -e '.[dev]'), which pin moto[server]>=5.2.5",
            pytrace=False,
        )
    found = tuple(int(p) if p.isdigit() else 0 for p in version.split(".")[:3])
    if found < MOTO_MINIMUM:
        pytest.fail(
            f"moto {version} under {sys.executable} is older than "
            f"{'.'.join(map(str, MOTO_MINIMUM))}, which the S3 tests need (pyproject pins "
            "moto[server]>=5.2.5); upgrade it: pip install -U 'moto[server]>=5.2.5'",
            pytrace=False,
        )
    return [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)]


def start_moto() -> tuple[subprocess.Popen[bytes], int]:
    """A moto S3 server on a free loopback port, answering (polled with a deadline)."""
    port = free_port()
    process = subprocess.Popen(
        moto_command(port), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    deadline = time.monotonic() + 30
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return process, port
        except OSError:
            if process.poll() is not None or time.monotonic() > deadline:
                process.kill()
                pytest.fail(f"the moto S3 server ({' '.join(moto_command(port))}) did not start")
            time.sleep(0.05)


def admin_filesystem(port: int) -> pafs.S3FileSystem:
    return pafs.S3FileSystem(
        endpoint_override=f"127.0.0.1:{port}",
        scheme="http",
        access_key="test",
        secret_key="test",
        region="us-east-1",
        allow_bucket_creation=True,
    )


@pytest.fixture(scope="module")
def s3_server() -> Iterator[str]:
    """A moto S3 server on a free loopback port, with the AWS variables pointing at it."""
    process, port = start_moto()
    endpoint = f"http://127.0.0.1:{port}"
    saved = {
        k: os.environ.get(k)
        for k in ("AWS_ENDPOINT_URL", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_REGION")
    }
    os.environ.update(
        AWS_ENDPOINT_URL=endpoint,
        AWS_ACCESS_KEY_ID="test",
        AWS_SECRET_ACCESS_KEY="test",
        AWS_REGION="us-east-1",
    )
    try:
        admin_filesystem(port).create_dir("backups")
        yield endpoint
    finally:
        process.terminate()
        process.wait(timeout=10)
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def read_rows(storage: Storage, directory: str) -> list[dict[str, object]]:
    rows: list[dict[str, object]] = []
    for relative in storage.list_files(directory):
        if relative.endswith(".parquet"):
            rows.extend(pq.read_table(storage.path(relative), filesystem=storage.fs).to_pylist())
    return sorted(rows, key=lambda r: r["id"])  # type: ignore[arg-type, return-value]


def assert_exact_on_s3(running: Running, uri: str) -> None:
    storage = Storage.open(uri)
    steps = list(running.sim.truth.records("sequenceStep"))
    assert_rows_equal(
        read_rows(storage, "sequenceSteps"),  # type: ignore[arg-type]
        [expected_row(r, STEP_RELATIONSHIP_COLUMNS) for r in steps],
    )
    for target, rows in expected_related(running.sim, steps).items():
        from exporter.model.schema import resource_type

        assert_rows_equal(
            read_rows(storage, resource_type(target).collection),
            sorted(rows, key=lambda r: r["id"]),
        )  # type: ignore[arg-type]
    manifest = orjson.loads(storage.read_bytes("_manifest.json") or b"{}")
    listed = {entry["path"]: entry for entry in manifest["files"]}
    present = {
        p
        for p in storage.list_files("")
        if p.endswith(".parquet") and not p.startswith("_current/")
    }
    assert set(listed) == present  # no orphan object, nothing missing
    for path, entry in listed.items():
        assert storage.sha256(path) == entry["sha256"]
    assert not [p for p in storage.list_files("") if p.endswith(".inprogress")]


async def test_export_to_s3_equals_ground_truth(
    s3_server: str, start_simulator: StartSimulator, tmp_path: Path
) -> None:
    running = await start_simulator(steps=1500, seed=71)
    uri = "s3://backups/acme/full"
    _job, result = await run_export(running.base_url, uri, relationships="all", file_rows=400)
    assert result.rows["sequenceStep"] == 1500
    assert_exact_on_s3(running, uri)
    rows = compact(uri)
    assert rows["sequenceStep"] == 1500
    _generation, tables = read_current(uri)
    assert tables["sequenceStep"].num_rows == 1500


async def test_endpoint_in_the_uri_query(
    s3_server: str, start_simulator: StartSimulator, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`?endpoint_override=...&scheme=http` (MinIO and the like) instead of AWS_ENDPOINT_URL."""
    monkeypatch.delenv("AWS_ENDPOINT_URL")  # only the URI says where the server is
    running = await start_simulator(steps=300, seed=73)
    endpoint = s3_server.removeprefix("http://")
    uri = f"s3://backups/query/full?endpoint_override={endpoint}&scheme=http"
    _job, result = await run_export(running.base_url, uri)
    assert result.rows["sequenceStep"] == 300
    listed = Storage.open(uri).list_files("sequenceSteps")
    assert listed and all(p.startswith("sequenceSteps/part-") for p in listed)
    monkeypatch.setenv("AWS_ENDPOINT_URL", s3_server)  # the very same objects, found by env
    plain = Storage.open("s3://backups/query/full")
    assert plain.list_files("sequenceSteps") == listed and plain.exists("_manifest.json")


async def test_restore_from_a_backup_on_s3(
    s3_server: str, start_simulator: StartSimulator, tmp_path: Path
) -> None:
    """restore reads the backup from the bucket; its journal, which must be appended to and
    fsynced, lives in this machine's state directory instead."""
    running = await start_simulator(steps=400, seed=74)
    uri = "s3://backups/acme/restore-me"
    await run_export(running.base_url, uri)
    backup = backup_steps(uri, None)
    deleted, altered = damage(running, random.Random(74), 3, 2)
    state_home = tmp_path / "state"
    command = [
        *(sys.executable, "-m", "exporter", "restore", uri, "--apply"),
        *("--base-url", running.base_url, "--token", TOKEN, "--rate-limit", "100000/1"),
    ]
    process = await spawn(*command, env=clean_env(XDG_STATE_HOME=str(state_home)))
    out, err = await process.communicate()
    assert process.returncode == 0, err.decode()
    assert writes(running) == Counter({"POST": len(deleted), "PATCH": len(altered)})
    [written] = list((state_home / "outreach-exporter" / "restore").glob("*-journal.jsonl"))
    assert written.name == default_journal(uri, running.base_url).name
    assert "backups_acme_restore-me" in written.name
    assert_restored(running, backup, written)
    assert not Storage.open(uri).list_files("_restore")  # nothing of it went to the bucket
    assert TOKEN not in out.decode() + err.decode()


async def test_bucket_that_does_not_exist_is_one_clear_error(
    s3_server: str, tmp_path: Path
) -> None:
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "exporter",
        "export",
        "--out",
        "s3://no-such-bucket/x",
        "--token",
        "t",
        "--base-url",
        "http://127.0.0.1:9/api/v2",
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    _out, err = await process.communicate()
    assert process.returncode == 4, err
    assert b"Traceback" not in err and b"no-such-bucket" in err


async def test_sigkill_and_resume_on_s3(s3_server: str, start_simulator: StartSimulator) -> None:
    running = await start_simulator(steps=2000, seed=72, faults=Faults(latency_s=0.004))
    rng = random.Random(72)
    for trial in range(4):
        uri = f"s3://backups/acme/kill-{trial}"
        command = export_command(running, uri)
        for delay in [rng.uniform(0.3, 2.0), None]:
            process = await spawn(*command)
            if delay is not None:
                try:
                    await asyncio.wait_for(process.wait(), timeout=delay)
                except TimeoutError:
                    kill_now(process)  # may have exited just then: not a landed kill
            _out, err = await process.communicate()
            assert b"Traceback" not in err, err.decode()
            if process.returncode == 0:
                break
            assert process.returncode == -signal.SIGKILL, err.decode()
        assert_exact_on_s3(running, uri)


def test_digest_of_what_was_uploaded(s3_server: str) -> None:
    storage = Storage.open("s3://backups/digest")
    handle = storage.open_data("t/part-x-00001.parquet")
    handle.handle.write(b"hello world")
    size, digest = storage.finish_data(handle)
    assert (size, digest) == (11, hashlib.sha256(b"hello world").hexdigest())
    assert storage.read_bytes("t/part-x-00001.parquet") == b"hello world"


def test_the_s3_server_is_this_interpreters_moto(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A `moto_server` first on PATH (an older system moto) is not the one started."""
    marker = tmp_path / "started"
    fake = tmp_path / "bin" / "moto_server"
    fake.parent.mkdir()
    fake.write_text(f"#!/bin/sh\ntouch {marker}\nexit 3\n")
    fake.chmod(0o755)
    monkeypatch.setenv("PATH", f"{fake.parent}:{os.environ['PATH']}")
    process, port = start_moto()
    try:
        admin_filesystem(port).create_dir("probe")  # a real S3 server answers
        assert admin_filesystem(port).get_file_info("probe").type == pafs.FileType.Directory
    finally:
        process.terminate()
        process.wait(timeout=10)
    assert not marker.exists()
    assert moto_command(port)[:3] == [sys.executable, "-m", "moto.server"]


def test_an_old_moto_fails_with_a_clear_message(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(importlib.metadata, "version", lambda _name: "5.2.1")
    with pytest.raises(pytest.fail.Exception, match=r"moto 5\.2\.1 .* older than 5\.2\.5"):
        moto_command(1)
