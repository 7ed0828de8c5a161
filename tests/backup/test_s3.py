"""Object-store output: an export into s3:// on a real S3-compatible server (moto) on loopback."""

from __future__ import annotations

import asyncio
import hashlib
import importlib.metadata
import os
import random
import sys
from collections import Counter
from pathlib import Path
from typing import Any

import orjson
import pyarrow.fs as pafs
import pytest

from exporter.backup.compact import compact, read_current
from exporter.backup.storage import Storage
from exporter.restore.restore import default_journal
from exporter.restore.source import backup_steps
from exporter.simulator import Faults
from tests.helpers.restore import assert_restored, damage, writes
from tests.helpers.runs import export_command, kill_export_when, run_export, run_to_completion
from tests.helpers.s3 import admin_filesystem, assert_exact_on_s3, moto_command, start_moto
from tests.helpers.sim import TOKEN, StartSimulator, clean_env, spawn

pytestmark = pytest.mark.slow  # every test starts or uses a moto S3 server


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
    """Each of four runs is killed (SIGKILL, asserted to land) once its checkpoint names one to
    three of the eight step files, then resumed: it used to kill at a random instant and pass
    when every run finished before its kill was due (no kill landed)."""
    running = await start_simulator(steps=2000, seed=72, faults=Faults(latency_s=0.004))
    rng = random.Random(72)
    for trial in range(4):
        uri = f"s3://backups/acme/kill-{trial}"
        command = export_command(running, uri)
        files = rng.randint(1, 3)

        def committed(state: dict[str, Any], files: int = files) -> bool:
            step = state.get("resources", {}).get("sequenceStep", {})
            return len(step.get("files", [])) >= files

        await kill_export_when(command, uri, committed)  # asserts the kill landed
        storage = Storage.open(uri)
        left = orjson.loads(storage.read_document("_checkpoint.json") or b"null")
        assert left["status"] == "running" and committed(left)
        code, _codes = await run_to_completion(command, [])
        assert code == 0
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
