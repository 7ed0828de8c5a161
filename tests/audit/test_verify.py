"""`exporter verify`: a real export verifies clean, and every kind of tampering is reported against the right file."""

from __future__ import annotations

import asyncio
import hashlib
import random
import shutil
import signal
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner

from exporter.commands.main import main
from exporter.core.errors import ExitCode
from exporter.simulator import Faults
from tests.helpers.checks import load_manifest
from tests.helpers.commands import verify_json, verify_text
from tests.helpers.runs import export_command, run_export, run_exporter
from tests.helpers.sim import StartSimulator, mutate, spawn
from tests.helpers.waiting import wait_until


def write_manifest(out: Path, document: dict[str, Any]) -> None:
    (out / "_manifest.json").write_bytes(orjson.dumps(document, option=orjson.OPT_INDENT_2))


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def step_files(out: Path) -> list[dict[str, Any]]:
    return [f for f in load_manifest(out)["files"] if f["type"] == "sequenceStep"]


def differences_by_subject(report: dict[str, Any]) -> dict[str, set[str]]:
    found: dict[str, set[str]] = {}
    for difference in report["differences"]:
        found.setdefault(difference["subject"], set()).add(difference["what"])
    return found


@pytest.mark.slow
def test_untouched_export_verifies(backup: Path) -> None:
    manifest = load_manifest(backup)
    assert len(step_files(backup)) >= 3 and {"sequence", "user"} <= set(manifest["resources"])
    code, report = verify_json(backup)
    assert code == ExitCode.OK
    assert report["ok"] is True and report["differences"] == []
    assert report["run_id"] == manifest["run_id"]
    assert sorted(f["path"] for f in report["files"]) == sorted(
        f["path"] for f in manifest["files"]
    )
    assert all(f["status"] == "ok" for f in report["files"])
    code, lines = verify_text(backup)
    assert code == 0
    assert lines[-1].startswith("OK:") and manifest["manifest_sha256"] in lines[-1]
    assert f"{len(manifest['files'])} files" in lines[-1]


def flip_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))


def truncate(path: Path) -> None:
    with path.open("r+b") as handle:
        handle.truncate(path.stat().st_size // 2)


def drop_column(path: Path) -> None:
    table = pq.read_table(path)
    pq.write_table(table.drop_columns(["taskNote"]), path, compression="zstd")


def drop_rows(path: Path) -> None:
    table = pq.read_table(path)
    pq.write_table(table.slice(0, table.num_rows - 10), path, compression="zstd")


Tamper = Callable[[Path], None]


@pytest.mark.slow
@pytest.mark.parametrize(
    ("tamper", "kinds"),
    [
        (flip_byte, {"sha256"}),
        (truncate, {"bytes", "sha256", "parquet"}),
        (drop_column, {"bytes", "sha256", "schema"}),
        (drop_rows, {"bytes", "sha256", "rows"}),
    ],
    ids=["flipped-byte", "truncated", "column-dropped", "rows-dropped"],
)
def test_a_changed_file_is_reported_by_name(backup: Path, tamper: Tamper, kinds: set[str]) -> None:
    entry = step_files(backup)[1]
    target = backup / entry["path"]
    tamper(target)
    code, report = verify_json(backup)
    assert code == ExitCode.VERIFY_MISMATCH and report["ok"] is False
    by_subject = differences_by_subject(report)
    assert by_subject.pop(entry["path"]) == kinds
    # Only the resource total can be affected besides the file itself.
    assert set(by_subject) <= {"resources.sequenceStep"}
    details = {d["what"]: d for d in report["differences"] if d["subject"] == entry["path"]}
    assert details["sha256"]["expected"] == entry["sha256"]
    assert details["sha256"]["found"] == sha256(target)
    if "bytes" in kinds:
        assert (details["bytes"]["expected"], details["bytes"]["found"]) == (
            entry["bytes"],
            target.stat().st_size,
        )
    if "rows" in kinds:
        assert (details["rows"]["expected"], details["rows"]["found"]) == (
            entry["rows"],
            entry["rows"] - 10,
        )
        total = load_manifest(backup)["resources"]["sequenceStep"]["rows"]
        [resource] = [d for d in report["differences"] if d["subject"] == "resources.sequenceStep"]
        assert (resource["expected"], resource["found"]) == (total, total - 10)
    if "schema" in kinds:
        assert "taskNote" in details["schema"]["message"]
        assert "taskNote" not in {c["name"] for c in details["schema"]["found"]}
        assert pq.read_metadata(target).num_rows == entry["rows"]  # same rows, other schema
    code, lines = verify_text(backup)
    assert code == ExitCode.VERIFY_MISMATCH
    mine = [line for line in lines if line.startswith(entry["path"] + ": ")]
    assert len(mine) == len(kinds)
    assert lines[-1].startswith("MISMATCH:")


def test_deleted_file(backup: Path) -> None:
    entry = step_files(backup)[0]
    (backup / entry["path"]).unlink()
    code, report = verify_json(backup)
    assert code == ExitCode.VERIFY_MISMATCH
    assert differences_by_subject(report) == {
        entry["path"]: {"missing"},
        "resources.sequenceStep": {"rows", "files"},
    }
    resource = load_manifest(backup)["resources"]["sequenceStep"]
    rows = next(
        d
        for d in report["differences"]
        if d["subject"] == "resources.sequenceStep" and d["what"] == "rows"
    )
    assert (rows["expected"], rows["found"]) == (resource["rows"], resource["rows"] - entry["rows"])


def test_extra_file(backup: Path) -> None:
    entry = step_files(backup)[0]
    added = backup / "sequenceSteps" / "part-added-00001.parquet"
    shutil.copyfile(backup / entry["path"], added)
    also = backup / "users" / "notes.parquet"  # any *.parquet a glob would read
    shutil.copyfile(backup / entry["path"], also)
    code, report = verify_json(backup)
    assert code == ExitCode.VERIFY_MISMATCH
    assert differences_by_subject(report) == {
        "sequenceSteps/part-added-00001.parquet": {"unlisted"},
        "users/notes.parquet": {"unlisted"},
    }
    _code, lines = verify_text(backup)
    assert any(line.startswith("sequenceSteps/part-added-00001.parquet: ") for line in lines)


def test_edited_manifest_field(backup: Path) -> None:
    document = load_manifest(backup)
    stored = document["manifest_sha256"]
    document["parameters"]["page_size"] = 999
    write_manifest(backup, document)
    code, report = verify_json(backup)
    assert code == ExitCode.VERIFY_MISMATCH
    [difference] = report["differences"]
    body = {k: v for k, v in document.items() if k != "manifest_sha256"}
    recomputed = hashlib.sha256(orjson.dumps(body, option=orjson.OPT_SORT_KEYS)).hexdigest()
    assert difference["subject"] == "_manifest.json" and difference["what"] == "manifest_sha256"
    assert (difference["expected"], difference["found"]) == (stored, recomputed)


def test_forged_manifest_with_a_fresh_digest_still_fails_on_the_file(backup: Path) -> None:
    """Someone edits a file's row count and recomputes manifest_sha256: the file check catches it."""
    document = load_manifest(backup)
    entry = document["files"][0]
    entry["rows"] += 5
    document["resources"][entry["type"]]["rows"] += 5
    body = {k: v for k, v in document.items() if k != "manifest_sha256"}
    document["manifest_sha256"] = hashlib.sha256(
        orjson.dumps(body, option=orjson.OPT_SORT_KEYS)
    ).hexdigest()
    write_manifest(backup, document)
    code, report = verify_json(backup)
    assert code == ExitCode.VERIFY_MISMATCH
    assert differences_by_subject(report) == {
        entry["path"]: {"rows"},
        f"resources.{entry['type']}": {"rows"},
    }


def test_manifest_pointing_outside_the_directory_is_not_followed(backup: Path) -> None:
    document = load_manifest(backup)
    document["files"][0]["path"] = "../outside.parquet"
    write_manifest(backup, document)
    code, report = verify_json(backup)
    assert code == ExitCode.VERIFY_MISMATCH
    assert differences_by_subject(report)["../outside.parquet"] == {"path"}


def test_no_export_is_a_usage_error(tmp_path: Path) -> None:
    result = CliRunner().invoke(main, ["verify", str(tmp_path)])
    assert result.exit_code == ExitCode.USAGE
    assert result.stdout == ""
    [line] = result.stderr.splitlines()
    assert line.startswith("error: ") and str(tmp_path) in line
    result = CliRunner().invoke(main, ["verify", str(tmp_path / "nowhere")])
    assert result.exit_code == ExitCode.USAGE and "does not exist" in result.stderr


@pytest.mark.slow
async def test_real_subprocess(backup: Path, tmp_path: Path) -> None:
    clean = await asyncio.to_thread(run_exporter, "verify", str(backup))
    assert clean.returncode == 0, clean.stderr
    assert clean.stdout.splitlines()[-1].startswith("OK:") and clean.stderr == ""

    entry = step_files(backup)[2]
    flip_byte(backup / entry["path"])
    tampered = await asyncio.to_thread(run_exporter, "verify", str(backup))
    assert tampered.returncode == ExitCode.VERIFY_MISMATCH
    assert any(line.startswith(entry["path"] + ": sha256") for line in tampered.stdout.splitlines())
    as_json = await asyncio.to_thread(run_exporter, "verify", "--json", str(backup))
    assert as_json.returncode == ExitCode.VERIFY_MISMATCH
    assert orjson.loads(as_json.stdout)["differences"][0]["subject"] == entry["path"]

    empty = tmp_path / "empty"
    empty.mkdir()
    missing = await asyncio.to_thread(run_exporter, "verify", str(empty))
    assert missing.returncode == ExitCode.USAGE
    assert "Traceback" not in missing.stderr
    assert len(missing.stderr.splitlines()) == 1 and missing.stderr.startswith("error: ")


@pytest.mark.slow
async def test_a_killed_incremental_run_verifies_against_its_checkpoint(
    start_simulator: StartSimulator, tmp_path: Path
) -> None:
    """After finished runs, an incremental run killed midway: its committed files are not in
    the manifest (that describes the runs before it), and are not differences."""
    running = await start_simulator(steps=1500, seed=24, faults=Faults(latency_s=0.02))
    out = tmp_path / "nightly"
    await run_export(running.base_url, out, relationships="all")
    mutate(running, random.Random(24), 150)
    command = [*export_command(running, out), "--incremental", "--page-size", "5"]
    process = await spawn(*command)
    checkpoint = out / "_checkpoint.json"
    first_run = load_manifest(out)["run_id"]

    def new_run_committed_a_file() -> bool:
        state = orjson.loads(checkpoint.read_bytes())
        return state["run_id"] != first_run and any(r["files"] for r in state["resources"].values())

    await wait_until(
        new_run_committed_a_file, what="the incremental run's first file", process=process
    )
    process.send_signal(signal.SIGKILL)
    await process.communicate()
    assert process.returncode == -signal.SIGKILL  # killed midway, not finished
    state = orjson.loads(checkpoint.read_bytes())
    assert state["status"] == "running" and state["kind"] == "incremental", state["status"]
    new_files = [f["path"] for r in state["resources"].values() for f in r["files"]]
    assert new_files and all("/run=" in p for p in new_files)

    code, report = verify_json(out)
    assert code == ExitCode.FAILED, report  # unfinished, everything committed matches
    assert report["checked_against"] == "checkpoint" and report["differences"] == []
    checked = {f["path"] for f in report["files"] if f["status"] == "ok"}
    assert set(new_files) <= checked  # the new run's files ...
    assert {f["path"] for f in load_manifest(out)["files"]} <= checked  # ... and the earlier ones
    flip_byte(out / load_manifest(out)["files"][0]["path"])  # an earlier run's file changed
    code, report = verify_json(out)
    assert code == ExitCode.VERIFY_MISMATCH
    assert load_manifest(out)["files"][0]["path"] in differences_by_subject(report)


@pytest.mark.slow
async def test_a_failed_runs_orphans_are_uncommitted_not_added(
    start_simulator: StartSimulator, tmp_path: Path
) -> None:
    """A part file of a run no record names (an incremental run that failed before its first
    commit) is not part of the backup: its own line, no mismatch. Any other file is added."""
    running = await start_simulator(steps=300, seed=1711)
    await run_export(running.base_url, tmp_path)
    mutate(running, random.Random(1711), 20)
    await run_export(running.base_url, tmp_path, incremental=True)
    source = next((tmp_path / "sequenceSteps").glob("part-*.parquet"))
    failed_run = "20991231T235959Z-abcdef"
    orphan = tmp_path / "sequenceSteps" / f"run={failed_run}" / f"part-{failed_run}-00001.parquet"
    orphan.parent.mkdir()
    shutil.copyfile(source, orphan)
    relative = orphan.relative_to(tmp_path).as_posix()
    code, lines = verify_text(tmp_path)
    assert code == ExitCode.OK, lines
    assert (
        f"{relative}: uncommitted (not part of the backup; the next export removes it)"
    ) in lines
    assert lines[-1].startswith("OK: ") and "1 uncommitted file(s)" in lines[-1]
    code, report = verify_json(tmp_path)
    assert {f["path"]: f["status"] for f in report["files"]}[relative] == "uncommitted"
    assert report["differences"] == []

    added = tmp_path / "sequenceSteps" / "part-added-00001.parquet"  # not a name we write
    shutil.copyfile(source, added)
    code, lines = verify_text(tmp_path)
    assert code == ExitCode.VERIFY_MISMATCH, lines
    assert (
        "sequenceSteps/part-added-00001.parquet: not listed in the manifest (a file added?)"
        in lines
    )


@pytest.mark.parametrize("content", [b"{", b'{"version": 1}', b"[]"])
async def test_a_damaged_checkpoint_beside_a_manifest_is_not_ok(
    start_simulator: StartSimulator, tmp_path: Path, content: bytes
) -> None:
    """`export` refuses a backup whose checkpoint is damaged, so `verify` must not say OK."""
    running = await start_simulator(steps=100, seed=1715)
    await run_export(running.base_url, tmp_path)
    (tmp_path / "_checkpoint.json").write_bytes(content)
    code, lines = verify_text(tmp_path)
    assert code == ExitCode.VERIFY_MISMATCH, lines
    [line] = [x for x in lines if x.startswith("_checkpoint.json: damaged")]
    assert "put back the checkpoint from a copy" in line and "do not use --restart" in line
    assert "use --restart to discard" not in line
