"""`exporter verify` and `exporter status` on an s3:// backup (moto on loopback): the same reports as on a local copy."""

from __future__ import annotations

import asyncio
import secrets
import signal
import socket
import sys
from datetime import datetime
from pathlib import Path
from typing import Any

import orjson
import pyarrow.compute as pc
import pyarrow.fs as pafs
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner

from exporter.backup.storage import Storage
from exporter.commands.main import main
from exporter.core.errors import ExitCode
from exporter.simulator import Faults
from tests.helpers.runs import run_cli, run_export
from tests.helpers.sim import TOKEN, StartSimulator, clean_env

pytestmark = pytest.mark.slow  # every test starts or uses a moto S3 server


def new_uri() -> str:
    return f"s3://backups/verify/{secrets.token_hex(4)}"


def invoke(*args: str) -> tuple[int, str, str]:
    """The CLI in this process (the AWS variables the fixture set reach Storage.open)."""
    result = CliRunner().invoke(main, list(args))
    assert result.exception is None or isinstance(result.exception, SystemExit), result.output
    return result.exit_code, result.stdout, result.stderr


def as_json(command: str, where: str) -> tuple[int, dict[str, Any]]:
    code, stdout, _stderr = invoke(command, where, "--json")
    report: dict[str, Any] = orjson.loads(stdout)
    return code, report


async def exporter(*args: str, env: dict[str, str] | None = None) -> tuple[int, str, str]:
    """A real `python -m exporter` process; it inherits the AWS variables."""
    command = [sys.executable, "-m", "exporter", *args]
    return await asyncio.wait_for(run_cli(command, env=env), timeout=60)


def load_manifest(storage: Storage) -> dict[str, Any]:
    document: dict[str, Any] = orjson.loads(storage.read_bytes("_manifest.json") or b"null")
    return document


def write_object(storage: Storage, relative: str, data: bytes) -> None:
    with storage.fs.open_output_stream(storage.path(relative)) as handle:
        handle.write(data)


def local_copy(storage: Storage, destination: Path) -> Path:
    """Every object under the prefix, copied into a local directory."""
    pafs.copy_files(
        storage.base,
        destination.as_posix(),
        source_filesystem=storage.fs,
        destination_filesystem=pafs.LocalFileSystem(),
    )
    return destination


def without(report: dict[str, Any], key: str) -> dict[str, Any]:
    return {k: v for k, v in report.items() if k != key}


def newest_updated_at(storage: Storage, paths: list[str]) -> datetime | None:
    """Independent of footer statistics: the whole updatedAt column of every file."""
    values = [
        pc.max(
            pq.read_table(storage.path(p), filesystem=storage.fs, columns=["updatedAt"]).column(0)
        ).as_py()
        for p in paths
    ]
    present = [v for v in values if v is not None]
    return max(present) if present else None


def parse(stamp: str | None) -> datetime | None:
    return None if stamp is None else datetime.fromisoformat(stamp.replace("Z", "+00:00"))


def differences_by_subject(report: dict[str, Any]) -> dict[str, set[str]]:
    found: dict[str, set[str]] = {}
    for difference in report["differences"]:
        found.setdefault(difference["subject"], set()).add(difference["what"])
    return found


async def export_to_s3(start_simulator: StartSimulator, seed: int) -> tuple[str, Storage]:
    running = await start_simulator(steps=400, seed=seed)
    uri = new_uri()
    await run_export(
        running.base_url, uri, relationships="sequence,creator", file_rows=100, page_size=100
    )
    return uri, Storage.open(uri)


async def test_finished_run_verifies_and_reports_as_a_local_copy_does(
    s3_server: str,
    start_simulator: StartSimulator,
    tmp_path: Path,
) -> None:
    uri, storage = await export_to_s3(start_simulator, seed=31)
    manifest = load_manifest(storage)
    files = manifest["files"]
    rows = sum(f["rows"] for f in files)
    assert len([f for f in files if f["type"] == "sequenceStep"]) >= 3
    assert rows == sum(r["rows"] for r in manifest["resources"].values()) > 400

    code, stdout, stderr = await exporter("verify", uri)
    assert (code, stderr) == (ExitCode.OK, ""), stdout
    lines = stdout.splitlines()
    assert lines == [
        f"verifying {uri} against _manifest.json",
        f"OK: run {manifest['run_id']}, {len(files)} files, {rows:,} rows, "
        f"{sum(f['bytes'] for f in files):,} bytes match the manifest "
        f"(manifest_sha256 {manifest['manifest_sha256']})",
    ]
    code, report = as_json("verify", uri)
    assert code == ExitCode.OK and report["directory"] == uri
    assert {f["path"]: (f["rows"], f["bytes"], f["sha256"]) for f in report["files"]} == {
        f["path"]: (f["rows"], f["bytes"], f["sha256"]) for f in files
    }

    code, status = as_json("status", uri)
    assert code == 0 and status["state"] == "complete" and status["directory"] == uri
    [run] = status["runs"]
    assert (run["run_id"], run["recorded_in"], run["parameters"]) == (
        manifest["run_id"],
        "manifest",
        manifest["parameters"],
    )
    resources = {r["type_name"]: r for r in run["resources"]}
    assert set(resources) == set(manifest["resources"]) == {"sequenceStep", "sequence", "user"}
    for type_name, resource in manifest["resources"].items():
        mine = [f["path"] for f in files if f["type"] == type_name]
        assert (resources[type_name]["rows"], resources[type_name]["files"]) == (
            resource["rows"],
            len(mine),
        )
        newest = newest_updated_at(storage, mine)
        assert newest is not None and parse(resources[type_name]["updated_at_max"]) == newest
    assert run["problems"] == [] and status["next_export"]["action"] == "refuse"
    code, text, _ = invoke("status", uri)
    assert code == 0 and text.splitlines()[0] == f"{uri}: complete"

    # The same bytes in a local directory give the same reports, but for where they are.
    local = local_copy(storage, tmp_path / "copy")
    assert without(as_json("verify", str(local))[1], "directory") == without(report, "directory")
    assert without(as_json("status", str(local))[1], "directory") == without(status, "directory")


async def test_tampered_objects_are_reported_by_name(
    s3_server: str,
    start_simulator: StartSimulator,
) -> None:
    uri, storage = await export_to_s3(start_simulator, seed=32)
    files = load_manifest(storage)["files"]
    steps = [f for f in files if f["type"] == "sequenceStep"]

    flipped = steps[1]
    data = bytearray(storage.read_bytes(flipped["path"]) or b"")
    data[len(data) // 2] ^= 0x01
    write_object(storage, flipped["path"], bytes(data))
    found = storage.sha256(flipped["path"])
    assert found != flipped["sha256"]
    code, stdout, stderr = await exporter("verify", uri)
    assert code == ExitCode.VERIFY_MISMATCH and "Traceback" not in stderr
    lines = stdout.splitlines()
    assert (
        f"{flipped['path']}: sha256 differs: expected {flipped['sha256']}, found {found}" in lines
    )
    assert lines[-1].startswith("MISMATCH: 1 difference(s) in 1 item(s)")

    added = "users/part-added-00001.parquet"
    write_object(storage, added, storage.read_bytes(steps[0]["path"]) or b"")
    deleted = steps[2]
    storage.delete(deleted["path"])
    code, report = as_json("verify", uri)
    assert code == ExitCode.VERIFY_MISMATCH and report["ok"] is False
    assert differences_by_subject(report) == {
        flipped["path"]: {"sha256"},
        added: {"unlisted"},
        deleted["path"]: {"missing"},
        "resources.sequenceStep": {"rows", "files"},
    }
    statuses = {f["path"]: f["status"] for f in report["files"]}
    assert (statuses[flipped["path"]], statuses[added], statuses[deleted["path"]]) == (
        "differs",
        "unlisted",
        "missing",
    )


async def test_recorded_paths_cannot_leave_the_prefix(
    s3_server: str,
    start_simulator: StartSimulator,
) -> None:
    """A manifest naming a key in another prefix or bucket is a `path` difference, not a read."""
    uri, storage = await export_to_s3(start_simulator, seed=33)
    # A real object outside the prefix, so following the path would find something.
    outside = Storage.open("s3://backups/verify")
    document = load_manifest(storage)
    target = document["files"][0]
    write_object(outside, "outside.parquet", storage.read_bytes(target["path"]) or b"")
    document["files"][0]["path"] = "../outside.parquet"
    document["files"][1]["path"] = "/backups/verify/outside.parquet"
    write_object(storage, "_manifest.json", orjson.dumps(document))
    code, report = as_json("verify", uri)
    assert code == ExitCode.VERIFY_MISMATCH
    found = differences_by_subject(report)
    assert found["../outside.parquet"] == {"path"}
    assert found["/backups/verify/outside.parquet"] == {"path"}
    code, status = as_json("status", uri)
    assert code == 0
    problems = status["runs"][0]["problems"]
    assert any(p.startswith("../outside.parquet: recorded path points outside") for p in problems)


async def kill_export_on_s3(base_url: str, uri: str) -> None:
    """A real `exporter export --out s3://...`, SIGKILLed once its checkpoint commits step files."""
    environment = clean_env()
    process = await asyncio.create_subprocess_exec(
        *[sys.executable, "-m", "exporter", "export", "--base-url", base_url, "--token", TOKEN],
        *["--out", uri, "--commit-interval", "0.2", "--file-rows", "100", "--page-size", "50"],
        *["--concurrency", "2", "--rate-limit", "100000/1", "--relationships", "sequence"],
        env=environment,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
    )
    storage = Storage.open(uri)
    try:
        for _ in range(600):
            await asyncio.sleep(0.05)
            assert process.returncode is None, "the export finished before it could be killed"
            raw = await asyncio.to_thread(storage.read_bytes, "_checkpoint.json")
            try:
                state = orjson.loads(raw or b"null")
            except orjson.JSONDecodeError:
                continue  # replaced between the read's HEAD and GET: read it again
            if state and len(state["resources"]["sequenceStep"]["files"]) >= 2:
                break
        else:
            raise AssertionError("no commit within 30 s")
    finally:
        if process.returncode is None:
            process.send_signal(signal.SIGKILL)
        await process.wait()
    assert process.returncode == -signal.SIGKILL


async def test_unfinished_run_verifies_against_its_checkpoint(
    s3_server: str,
    start_simulator: StartSimulator,
    tmp_path: Path,
) -> None:
    running = await start_simulator(steps=2000, seed=34, faults=Faults(latency_s=0.05))
    uri = new_uri()
    await kill_export_on_s3(running.base_url, uri)
    storage = Storage.open(uri)
    assert not storage.exists("_manifest.json")
    state = orjson.loads(storage.read_bytes("_checkpoint.json") or b"null")
    committed = {f["path"] for r in state["resources"].values() for f in r["files"]}
    # An upload that completed but was never committed (the kill may or may not have left one).
    stray = f"sequenceSteps/part-{state['run_id']}-99999.parquet"
    write_object(storage, stray, storage.read_bytes(sorted(committed)[0]) or b"")
    parts = {p for p in storage.list_files("") if p.endswith(".parquet")}
    assert committed and committed <= parts and stray in parts - committed

    code, stdout, _ = invoke("verify", uri)
    assert code == ExitCode.FAILED, stdout
    lines = stdout.splitlines()
    assert (
        lines[0]
        == f"verifying {uri} against _checkpoint.json (unfinished run: not in the manifest yet)"
    )
    assert lines[-1].startswith(
        f"unfinished run {state['run_id']}: {len(committed)} files committed verify OK"
    )
    assert lines[-1].endswith("run export again to finish")
    code, report = as_json("verify", uri)
    assert code == ExitCode.FAILED and report["differences"] == []
    assert {f["path"] for f in report["files"] if f["status"] == "ok"} == committed
    assert {f["path"] for f in report["files"] if f["status"] == "uncommitted"} == parts - committed

    code, status = as_json("status", uri)
    assert code == 0 and status["state"] == "unfinished"
    [run] = status["runs"]
    assert (run["run_id"], run["status"], run["recorded_in"]) == (
        state["run_id"],
        "unfinished",
        "checkpoint",
    )
    assert set(run["uncommitted_files"]) == parts - committed
    step_files = [f["path"] for f in state["resources"]["sequenceStep"]["files"]]
    [steps] = [r for r in run["resources"] if r["type_name"] == "sequenceStep"]
    assert steps["files"] == len(step_files)
    assert parse(steps["updated_at_max"]) == newest_updated_at(storage, step_files)
    assert status["next_export"]["action"] == "resume"

    local = local_copy(storage, tmp_path / "copy")
    assert without(as_json("verify", str(local))[1], "directory") == without(report, "directory")
    assert without(as_json("status", str(local))[1], "directory") == without(status, "directory")

    # A committed object changed since is a mismatch, as locally.
    target = step_files[0]
    data = bytearray(storage.read_bytes(target) or b"")
    data[len(data) // 2] ^= 0x01
    write_object(storage, target, bytes(data))
    code, report = as_json("verify", uri)
    assert code == ExitCode.VERIFY_MISMATCH
    assert differences_by_subject(report) == {target: {"sha256"}}


async def test_no_export_no_bucket_no_server(s3_server: str) -> None:
    # An empty prefix in a bucket that exists: no export, as for an empty local directory.
    empty = new_uri()
    code, stdout, stderr = invoke("verify", empty)
    assert (code, stdout) == (ExitCode.USAGE, "")
    assert stderr.splitlines() == [f"error: {empty} does not exist: no export to verify"]
    code, status = as_json("status", empty)
    assert (code, status["state"], status["next_export"]["action"]) == (0, "none", "start")

    # A bucket that does not exist: one line, whichever command.
    for command in ("verify", "status"):
        code, stdout, stderr = await exporter(command, "s3://no-such-bucket/backup")
        assert code == ExitCode.USAGE and stdout == "", (command, stderr)
        assert "Traceback" not in stderr
        [line] = stderr.splitlines()
        assert line.startswith("error: s3://no-such-bucket/backup: bucket 'no-such-bucket'")

    # No server at the endpoint: one line naming the URI, the exit code of an unreadable output.
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]
        for command in ("verify", "status"):
            code, stdout, stderr = await exporter(
                command, "s3://backups/x", env={"AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}"}
            )
            assert code == ExitCode.OUTPUT and stdout == "", (command, stderr)
            assert "Traceback" not in stderr
            [line] = stderr.splitlines()
            assert line.startswith("error: cannot read s3://backups/x: ")
