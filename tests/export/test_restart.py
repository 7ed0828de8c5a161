"""What an export deletes in the folder it is given: only files it wrote, only after the token and the source are confirmed."""

from __future__ import annotations

import sys
from pathlib import Path

import orjson
import pyarrow.parquet as pq
import pytest

from exporter.core.errors import AuthError, ExitCode
from tests.helpers.runs import run_export
from tests.helpers.sim import TOKEN, StartSimulator, spawn
from tests.helpers.truth import assert_rows_equal, expected_steps

ORPHAN = "part-20250101T000000Z-abcdef-00001.parquet"  # our naming, named by no checkpoint


def users_own_files(out: Path) -> dict[Path, bytes]:
    """Files a user keeps in folders named like ours, some named like Parquet parts."""
    files = {
        out / "tasks" / "todo.txt": b"buy milk",
        out / "users" / "people.csv": b"id,name\n1,ann\n",
        out / "calls" / "2024" / "log.json": b"{}",
        out / "sequenceSteps" / "part-mine.parquet": b"not ours",
        out / "notes.md": b"# notes",
    }
    for path, content in files.items():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content)
    return files


def assert_intact(files: dict[Path, bytes]) -> None:
    for path, content in files.items():
        assert path.exists(), f"{path} was deleted"
        assert path.read_bytes() == content


@pytest.mark.slow
async def test_restart_in_a_folder_that_is_not_a_backup_deletes_nothing(
    start_simulator: StartSimulator, tmp_path: Path
) -> None:
    running = await start_simulator(steps=120, seed=3)
    mine = users_own_files(tmp_path)
    # Named like ours, but with no checkpoint or manifest here nothing proves it is.
    (tmp_path / "sequenceSteps" / ORPHAN).write_bytes(b"a user's copy")
    mine[tmp_path / "sequenceSteps" / ORPHAN] = b"a user's copy"
    _job, result = await run_export(running.base_url, tmp_path, restart=True)
    assert result.rows == {"sequenceStep": 120}
    assert_intact(mine)


async def test_restart_with_a_wrong_token_deletes_nothing(
    start_simulator: StartSimulator, tmp_path: Path
) -> None:
    running = await start_simulator(steps=120, seed=4)
    await run_export(running.base_url, tmp_path)
    before = {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()}
    mine = users_own_files(tmp_path)
    with pytest.raises(
        AuthError, match=r"refused the access token \(401\); it is wrong or expired"
    ):
        await run_export(running.base_url, tmp_path, token="wrong-token", restart=True)
    assert_intact(mine)
    assert_intact({p: c for p, c in before.items() if not p.name.startswith("_lock")})


async def test_restart_deletes_only_what_the_backup_names_and_our_orphans(
    start_simulator: StartSimulator, tmp_path: Path
) -> None:
    running = await start_simulator(steps=300, seed=5)
    # Pages of 50, so files roll at 100 rows (one page of 1000 would hold every step).
    await run_export(running.base_url, tmp_path, file_rows=100, page_size=50)
    old = orjson.loads((tmp_path / "_manifest.json").read_bytes())
    old_files = [tmp_path / f["path"] for f in old["files"]]
    assert len(old_files) >= 2 and all(p.exists() for p in old_files)
    mine = users_own_files(tmp_path)
    # Our naming, inside our directory of a folder holding our checkpoint: ours (README).
    orphan = tmp_path / "sequenceSteps" / ORPHAN
    orphan.write_bytes(b"left by a killed run")
    _job, result = await run_export(running.base_url, tmp_path, restart=True)
    assert result.rows == {"sequenceStep": 300}
    assert not any(p.exists() for p in old_files)
    assert not orphan.exists()
    assert_intact(mine)
    new = orjson.loads((tmp_path / "_manifest.json").read_bytes())
    assert new["run_id"] != old["run_id"]
    rows = [r for f in new["files"] for r in pq.read_table(tmp_path / f["path"]).to_pylist()]
    assert_rows_equal(sorted(rows, key=lambda r: r["id"]), expected_steps(running.sim))


async def test_a_tampered_checkpoint_cannot_make_restart_delete_a_users_file(
    start_simulator: StartSimulator, tmp_path: Path
) -> None:
    running = await start_simulator(steps=50, seed=6)
    await run_export(running.base_url, tmp_path)
    mine = users_own_files(tmp_path)
    outside = tmp_path.parent / f"{tmp_path.name}-outside.txt"
    outside.write_bytes(b"keep")
    mine[outside] = b"keep"
    state = orjson.loads((tmp_path / "_checkpoint.json").read_bytes())
    named = state["resources"]["sequenceStep"]["files"][0]
    for path in ("tasks/todo.txt", "../" + outside.name, "notes.md"):
        state["resources"]["sequenceStep"]["files"].append({**named, "path": path})
    (tmp_path / "_checkpoint.json").write_bytes(orjson.dumps(state))
    await run_export(running.base_url, tmp_path, restart=True)
    assert_intact(mine)


async def test_a_fresh_run_keeps_part_named_files_of_a_folder_it_does_not_own(
    start_simulator: StartSimulator, tmp_path: Path
) -> None:
    running = await start_simulator(steps=40, seed=7)
    foreign = tmp_path / "sequenceSteps" / ORPHAN
    foreign.parent.mkdir(parents=True)
    foreign.write_bytes(b"someone else's")
    await run_export(running.base_url, tmp_path)
    assert foreign.read_bytes() == b"someone else's"


async def test_every_run_removes_uncommitted_files_of_ours_first(
    start_simulator: StartSimulator, tmp_path: Path
) -> None:
    """Left by an incremental run that failed before its first commit: removed by the next
    `--incremental` run (before, only fresh and resumed runs cleaned up)."""
    running = await start_simulator(steps=60, seed=8)
    _job, first = await run_export(running.base_url, tmp_path)
    committed = tmp_path / first.state.resources["sequenceStep"].files[0].path
    failed = "20250101T000000Z-abcdef"
    left = tmp_path / "sequenceSteps" / f"run={failed}" / f"part-{failed}-00001.parquet"
    temporary = left.parent / f".part-{failed}-00002.parquet.inprogress"
    left.parent.mkdir(parents=True)
    left.write_bytes(committed.read_bytes())
    temporary.write_bytes(b"half")
    mine = users_own_files(tmp_path)
    lookalike = left.parent / "part-notes.parquet"  # not our naming: not ours
    lookalike.write_bytes(b"x")
    mine[lookalike] = b"x"
    _job, again = await run_export(running.base_url, tmp_path, incremental=True)
    assert again.state.kind == "incremental"
    assert not left.exists() and not temporary.exists()
    assert_intact(mine)
    manifest = orjson.loads((tmp_path / "_manifest.json").read_bytes())
    assert committed.relative_to(tmp_path).as_posix() in {f["path"] for f in manifest["files"]}


@pytest.mark.slow
async def test_cli_restart_with_a_wrong_token_exits_3_and_deletes_nothing(
    start_simulator: StartSimulator, tmp_path: Path
) -> None:
    running = await start_simulator(steps=50, seed=9)
    await run_export(running.base_url, tmp_path)
    before = {
        p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file() and "_lock" not in p.name
    }
    command = [sys.executable, "-m", "exporter", "export", "--out", str(tmp_path)]
    command += ["--base-url", running.base_url, "--token", "wrong-XYZ", "--restart"]
    process = await spawn(*command)
    _out, err = await process.communicate()
    text = err.decode()
    assert process.returncode == ExitCode.AUTH, text
    assert len(text.strip().splitlines()) == 1 and "Traceback" not in text
    assert "wrong-XYZ" not in text
    assert_intact(before)
    # --repair and --restart contradict each other: refused before any request.
    both = await spawn(*command[:-3], "--token", TOKEN, "--restart", "--repair")
    _out, err = await both.communicate()
    assert both.returncode == ExitCode.USAGE and b"--repair" in err
    assert_intact(before)


async def test_restart_beside_a_users_folder_named_like_a_type_not_exported(
    start_simulator: StartSimulator, tmp_path: Path
) -> None:
    """`prospects/` is one of our directories (a `--resources all` backup writes there), but a
    steps-only backup holds nothing in it: only files of our exact naming are ours there too."""
    running = await start_simulator(steps=40, seed=9)
    await run_export(running.base_url, tmp_path)
    mine = {
        tmp_path / "prospects" / "leads.csv": b"id,email\n1,a@b\n",
        tmp_path / "prospects" / "part-mine.parquet": b"not ours",
        tmp_path / "prospects" / "run=2024" / "notes.txt": b"keep",
    }
    for path, content in mine.items():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content)
    orphan = tmp_path / "prospects" / ORPHAN  # our naming, in our folder: a killed run's
    orphan.write_bytes(b"left by a killed run")
    _job, result = await run_export(running.base_url, tmp_path, restart=True)
    assert result.rows == {"sequenceStep": 40}
    assert not orphan.exists()
    assert_intact(mine)
    _job, again = await run_export(running.base_url, tmp_path, incremental=True)
    assert again.state.kind == "incremental"
    assert_intact(mine)
