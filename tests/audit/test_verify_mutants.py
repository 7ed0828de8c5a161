"""Mutants of audit/verify.py that the suite let live, each killed by a test naming its one-line bug."""

from __future__ import annotations

import hashlib
import re
import shutil
import uuid
from pathlib import Path

import orjson
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from exporter.audit.verify import render, verify
from exporter.backup import checkpoint, manifest
from exporter.backup.storage import Storage
from exporter.core.errors import ExitCode
from exporter.model.normalize import arrow_schema
from tests.helpers.runs import run_export
from tests.helpers.s3_fault_proxy import Fault, fault_proxy
from tests.helpers.sim import StartSimulator


async def small_backup(start_simulator: StartSimulator, out: Path) -> None:
    running = await start_simulator(steps=120, seed=83)
    await run_export(running.base_url, out, file_rows=50)


def differences(out: Path) -> set[tuple[str, str]]:
    return {(d.subject, d.what) for d in verify(out).differences}


async def test_a_manifest_naming_an_unknown_type_differs(
    start_simulator: StartSimulator, tmp_path: Path
) -> None:
    """Bug: `_unknown_types` not called for a manifest: a file of a type this version does not
    know (compact and restore leave it out) would verify OK. The manifest is edited and its
    digest recomputed, so only the type check can tell."""
    await small_backup(start_simulator, tmp_path)
    assert verify(tmp_path).exit_code is ExitCode.OK
    path = tmp_path / manifest.MANIFEST_NAME
    document = orjson.loads(path.read_bytes())
    document["files"][0]["type"] = "widget"
    document["manifest_sha256"] = manifest.canonical_digest(document)
    path.write_bytes(orjson.dumps(document))
    assert ("resources.widget", "type") in differences(tmp_path)


async def test_an_unfinished_run_is_checked_for_unknown_types_and_added_files(
    start_simulator: StartSimulator, tmp_path: Path
) -> None:
    """Bugs: for a run known only by its checkpoint, `_unknown_types` or `_not_recorded` not
    called: a file of an unknown type, or a `*.parquet` file someone added beside the
    committed ones (a query over the folder reads it), would verify as committed."""
    await small_backup(start_simulator, tmp_path)
    (tmp_path / manifest.MANIFEST_NAME).unlink()
    state = checkpoint.load(tmp_path)
    assert state is not None
    state.status = "running"  # an unfinished run: its checkpoint names its files
    checkpoint.save(Storage.open(tmp_path), state)
    report = verify(tmp_path)
    assert (report.checked_against, report.exit_code) == ("checkpoint", ExitCode.FAILED)
    assert report.differences == []

    [first, *_] = state.resources["sequenceStep"].files
    shutil.copyfile(tmp_path / first.path, tmp_path / "sequenceSteps" / "added.parquet")
    assert differences(tmp_path) == {("sequenceSteps/added.parquet", "unlisted")}
    (tmp_path / "sequenceSteps" / "added.parquet").unlink()

    raw = orjson.loads((tmp_path / checkpoint.CHECKPOINT_NAME).read_bytes())
    raw["resources"]["sequenceStep"]["files"][0]["type"] = "widget"
    (tmp_path / checkpoint.CHECKPOINT_NAME).write_bytes(orjson.dumps(raw))
    assert ("resources.widget", "type") in differences(tmp_path)


async def test_a_finished_run_without_its_manifest_differs(
    start_simulator: StartSimulator, tmp_path: Path
) -> None:
    """Bug: the difference for a missing manifest not added (its `append` deleted): a run
    whose checkpoint says it finished, but whose manifest is gone, would verify as an
    unfinished run that only needs `export` again (which refuses a finished checkpoint)."""
    await small_backup(start_simulator, tmp_path)
    (tmp_path / manifest.MANIFEST_NAME).unlink()
    report = verify(tmp_path)
    assert report.exit_code is ExitCode.VERIFY_MISMATCH
    assert [(d.subject, d.what) for d in report.differences] == [
        (manifest.MANIFEST_NAME, "missing")
    ]


async def test_a_manifest_of_another_format_is_one_difference(
    start_simulator: StartSimulator, tmp_path: Path
) -> None:
    """Bugs: the format check weakened (`or` as `and`: a JSON list crashes, another tool's
    object is read as ours) or its difference not added; a manifest that is not JSON at all
    not reported (its `append` deleted: verify would say nothing of it)."""
    await small_backup(start_simulator, tmp_path)
    path = tmp_path / manifest.MANIFEST_NAME
    for document in ({"format": "another-tool", "files": []}, [1, 2]):
        path.write_bytes(orjson.dumps(document))
        assert differences(tmp_path) == {(manifest.MANIFEST_NAME, "format")}
    path.write_bytes(b'{"format": "outreach-exporter", "files": [')  # cut short
    assert differences(tmp_path) == {(manifest.MANIFEST_NAME, "unreadable")}


async def test_a_manifest_of_another_version_or_status_differs(
    start_simulator: StartSimulator, tmp_path: Path
) -> None:
    """Bugs: the version, the status or a file entry's difference not added (their `append`
    deleted, the comparison flipped): a manifest this version does not read, one that is not
    complete, or one with an entry that names no file, would verify OK once its digest is
    recomputed."""
    await small_backup(start_simulator, tmp_path)
    path = tmp_path / manifest.MANIFEST_NAME
    original = orjson.loads(path.read_bytes())
    for field, value in (("version", manifest.VERSION + 1), ("status", "running")):
        document = {**original, field: value}
        document["manifest_sha256"] = manifest.canonical_digest(document)
        path.write_bytes(orjson.dumps(document))
        assert differences(tmp_path) == {(manifest.MANIFEST_NAME, field)}
    document = {**original, "files": ["not an entry", *original["files"][1:]]}
    document["manifest_sha256"] = manifest.canonical_digest(document)
    path.write_bytes(orjson.dumps(document))
    assert (f"{manifest.MANIFEST_NAME} files[0]", "entry") in differences(tmp_path)


async def test_an_unfinished_runs_files_are_checked_against_the_schema_we_write(
    start_simulator: StartSimulator, tmp_path: Path
) -> None:
    """Bugs: `_current_schema` answering None for a known type (`not in` flipped): a file of an
    unfinished run rewritten without a column would differ only by its digest, never by the
    schema the exporter writes; and a name that merely looks set aside (`.damaged-` without a
    run id) reported as set aside by --repair (`bool(marker) and ...` as `or`)."""
    await small_backup(start_simulator, tmp_path)
    (tmp_path / manifest.MANIFEST_NAME).unlink()
    state = checkpoint.load(tmp_path)
    assert state is not None
    state.status = "running"
    checkpoint.save(Storage.open(tmp_path), state)
    [first, *_] = state.resources["sequenceStep"].files
    table = pq.read_table(tmp_path / first.path)
    pq.write_table(table.drop_columns([table.column_names[-1]]), tmp_path / first.path)
    found = differences(tmp_path)
    assert (first.path, "schema") in found and (first.path, "sha256") in found

    look_alike = tmp_path / "sequenceSteps" / "notes.parquet.damaged-not-a-run"
    look_alike.write_bytes(b"x")
    set_aside = [f.path for f in verify(tmp_path).files if f.status == "set_aside"]
    assert set_aside == []
    quarantined = tmp_path / (first.path + ".damaged-" + state.run_id)
    quarantined.write_bytes(b"x")
    set_aside = [f.path for f in verify(tmp_path).files if f.status == "set_aside"]
    assert set_aside == [first.path + ".damaged-" + state.run_id]


async def test_a_directory_where_a_file_was_differs(
    start_simulator: StartSimulator, tmp_path: Path
) -> None:
    """Bug: the difference for a directory in a listed file's place not added (its `append`
    deleted): the file is gone, yet only the resource's totals would tell."""
    await small_backup(start_simulator, tmp_path)
    entry = orjson.loads((tmp_path / manifest.MANIFEST_NAME).read_bytes())["files"][0]
    (tmp_path / entry["path"]).unlink()
    (tmp_path / entry["path"]).mkdir()
    report = verify(tmp_path)
    assert (entry["path"], "unreadable") in {(d.subject, d.what) for d in report.differences}
    assert [f.status for f in report.files if f.path == entry["path"]] == ["differs"]


@pytest.mark.slow  # a moto S3 server behind the fault proxy
async def test_a_store_failing_a_files_metadata_or_footer_leaves_it_unverified(
    s3_server: str, start_simulator: StartSimulator, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Bugs: `_cannot_read` left out where the store fails the file's metadata (HEAD, in
    `get_file_info`) or its Parquet footer (the ranged GET after the digest's read): the file
    would count as checked, and verify would say OK (or a row mismatch) for a file it never
    read, instead of "cannot be read" and exit 4. Each fault is a 500 on every retry. And the
    reason taken from the digest's OutputError cut wrong (`split(": ", 1)[-1]` or its
    `split("; ")[0]` with another constant): the line would give the location, the advice or
    half the store's text."""
    with fault_proxy(s3_server) as proxy:
        monkeypatch.setenv("AWS_ENDPOINT_URL", proxy.endpoint)
        running = await start_simulator(steps=120, seed=83)
        uri = f"s3://backups/verify-faults/{uuid.uuid4().hex[:6]}"
        await run_export(running.base_url, uri, file_rows=50)
        document = orjson.loads(Storage.open(uri).read_document(manifest.MANIFEST_NAME) or b"")
        part = document["files"][0]["path"]
        name = re.escape(part.rsplit("/", 1)[-1])
        for fault in (
            Fault("status", "HEAD", name, times=None),  # the metadata
            Fault("status", "GET", name, times=None, skip=1),  # the footer, after the digest
        ):
            proxy.clear()
            proxy.add(fault)
            report = verify(uri)
            assert fault.fired, proxy.requests
            assert report.exit_code is ExitCode.OUTPUT, report.summary()
            assert report.differences == []
            assert [f.status for f in report.files if f.path == part] == ["unreadable"]
            [line] = report.unreadable
            assert line.startswith(f"{part}: cannot be read (") and line.endswith("not verified")
        gets = [
            o for method, path, o in proxy.requests if method == "GET" and re.search(name, path)
        ]
        assert gets[0] == "pass" and "status" in gets  # the digest was read, the footer not

        # The digest's own HEAD fails (after get_file_info's): the line gives the store's reason,
        # as the store gave it, without storage_error's location and advice around it.
        proxy.clear()
        proxy.add(Fault("status", "HEAD", name, times=None, skip=1))
        [line] = verify(uri).unreadable
        storage = Storage.open(uri)
        with pytest.raises(OSError) as failed:
            storage.fs.open_input_stream(storage.path(part))
        reason = " ".join(str(failed.value).split())
        assert ": " in reason  # the case a split on the first ": " must get right
        assert line == f"{part}: cannot be read ({reason}); not verified"


async def test_the_summary_counts_the_rows_and_bytes_of_the_files_checked(
    start_simulator: StartSimulator, tmp_path: Path
) -> None:
    """Bugs: `checked` choosing the files that were not checked (`in` flipped): the OK line
    would say 0 rows and 0 bytes; `f.rows or 0` as `or 1`: a recorded file of no rows (here
    an empty table in the exporter's schema, recorded as the manifest records any file) would
    count as one row. The totals are read back from the Parquet footers and the sizes on disk."""
    await small_backup(start_simulator, tmp_path)
    path = tmp_path / manifest.MANIFEST_NAME
    document = orjson.loads(path.read_bytes())
    template = next(f for f in document["files"] if f["type"] == "sequenceStep")
    empty = f"sequenceSteps/part-{document['run_id']}-00099.parquet"
    pq.write_table(arrow_schema("sequenceStep").empty_table(), tmp_path / empty)
    data = (tmp_path / empty).read_bytes()
    sha256 = hashlib.sha256(data).hexdigest()
    entry = {**template, "path": empty, "rows": 0, "bytes": len(data), "sha256": sha256}
    document["files"].append(entry)
    document["resources"]["sequenceStep"]["files"] += 1
    document["manifest_sha256"] = manifest.canonical_digest(document)
    path.write_bytes(orjson.dumps(document))

    report = verify(tmp_path)
    assert report.exit_code is ExitCode.OK, render(report)
    paths = [tmp_path / f["path"] for f in document["files"]]
    rows = sum(pq.read_metadata(p).num_rows for p in paths)
    size = sum(p.stat().st_size for p in paths)
    assert report.summary().startswith(
        f"OK: run {document['run_id']}, {len(paths)} files, {rows:,} rows, {size:,} bytes match"
    )


async def test_a_schema_difference_names_the_columns_that_differ(
    start_simulator: StartSimulator, tmp_path: Path
) -> None:
    """Bugs: the comparison of a column's type or nullability flipped (`!=` as `==`: every
    column kept would be named as of another type, or nullability), a changed type or
    nullability left out of the explanation (its `append` deleted), "column order differs"
    added when columns are named (`not` dropped) or never added (its `append` deleted: a file
    with its columns reordered would differ with an empty explanation)."""
    await small_backup(start_simulator, tmp_path)
    entry = orjson.loads((tmp_path / manifest.MANIFEST_NAME).read_bytes())["files"][0]
    target = tmp_path / entry["path"]
    table = pq.read_table(target)
    last = table.column_names[-1]

    def schema_note() -> str:
        [note] = [d.note for d in verify(tmp_path).differences if d.what == "schema"]
        return note

    pq.write_table(table.drop_columns([last]), target)
    assert schema_note() == f"differs: column {last} missing"
    pq.write_table(table.select(table.column_names[::-1]), target)
    assert schema_note() == "differs: column order differs"
    recorded = {f["name"]: f for f in entry["schema"]}
    schema = table.schema
    column = next(f.name for f in schema if f.type == pa.string())
    retyped = schema.set(schema.get_field_index(column), pa.field(column, pa.large_string()))
    pq.write_table(table.cast(retyped), target)
    found = str(pa.large_string())
    assert schema_note() == (
        f"differs: column {column} type {recorded[column]['type']} expected, {found} found"
    )
    required = next(f for f in schema if not f.nullable)
    loosened = schema.set(schema.get_field_index(required.name), required.with_nullable(True))
    pq.write_table(table.cast(loosened), target)
    assert schema_note() == f"differs: column {required.name} nullable False expected, True found"


async def test_a_file_added_beside_the_tombstones_is_unlisted(
    start_simulator: StartSimulator, tmp_path: Path
) -> None:
    """Bug: the run's own directories (`directories`, from the manifest) not added to the ones
    searched for files it does not list (`by_directory.update` deleted): the tombstones'
    directory is no type's collection, so a `*.parquet` file added there (read by a query over
    the tombstones) would go unseen."""
    running = await start_simulator(steps=120, seed=83)
    await run_export(running.base_url, tmp_path, file_rows=50)
    for value in sorted(int(i) for i in running.sim.truth.ids("sequenceStep"))[:3]:
        running.sim.store.delete("sequenceStep", value)
    await run_export(running.base_url, tmp_path, incremental=True, detect_deletes=True)
    assert verify(tmp_path).exit_code is ExitCode.OK
    [stones] = sorted(tmp_path.glob("tombstones/**/part-*.parquet"))
    added = stones.parent / "added.parquet"
    shutil.copyfile(stones, added)
    assert differences(tmp_path) == {(added.relative_to(tmp_path).as_posix(), "unlisted")}


async def test_the_text_report_says_what_it_checked_against_and_what_is_not_the_backups(
    start_simulator: StartSimulator, tmp_path: Path
) -> None:
    """Bugs in `render`: the header naming the checkpoint for a finished run (`==` flipped), the
    uncommitted or set-aside lines listing every other file (`==` flipped), the summary line
    left out (its `append` deleted)."""
    await small_backup(start_simulator, tmp_path)
    document = orjson.loads((tmp_path / manifest.MANIFEST_NAME).read_bytes())
    first = document["files"][0]["path"]
    left_over = f"{first.rsplit('/', 1)[0]}/part-{document['run_id']}-00077.parquet"
    shutil.copyfile(tmp_path / first, tmp_path / left_over)
    set_aside = f"{first}.damaged-{document['run_id']}"
    shutil.copyfile(tmp_path / first, tmp_path / set_aside)
    report = verify(tmp_path)
    assert render(report) == [
        f"verifying {report.root} against {manifest.MANIFEST_NAME}",
        f"{left_over}: uncommitted (not part of the backup; the next export removes it)",
        f"{set_aside}: set aside by --repair, not part of the backup",
        report.summary(),
    ]
    assert report.summary().startswith("OK: ")

    (tmp_path / manifest.MANIFEST_NAME).unlink()
    state = checkpoint.load(tmp_path)
    assert state is not None
    state.status = "running"
    checkpoint.save(Storage.open(tmp_path), state)
    header = render(verify(tmp_path))[0]
    assert header.endswith(
        f" against {checkpoint.CHECKPOINT_NAME} (unfinished run: not in the manifest yet)"
    )


async def test_a_recorded_directory_outside_the_root_or_not_a_directory_is_not_searched(
    start_simulator: StartSimulator, tmp_path: Path
) -> None:
    """A type's directory that climbs out of the backup (a manifest edited to name
    `../elsewhere`) is never read; one that names a file (here the manifest itself) is not
    listed. Bug: `folder is None or <not a directory>` as `and`: the file is listed as a
    directory, and verify stops with an error instead of checking the backup (the files the
    manifest lists are checked by their own paths either way)."""
    out = tmp_path / "backup"
    await small_backup(start_simulator, out)
    (tmp_path / "elsewhere").mkdir()
    path = out / manifest.MANIFEST_NAME
    document = orjson.loads(path.read_bytes())
    shutil.copyfile(out / document["files"][0]["path"], tmp_path / "elsewhere" / "x.parquet")
    document["resources"]["sequenceStep"]["directory"] = "../elsewhere"
    document["manifest_sha256"] = manifest.canonical_digest(document)
    path.write_bytes(orjson.dumps(document))
    report = verify(out)
    assert report.exit_code is ExitCode.OK, render(report)
    assert all(not f.path.startswith("..") for f in report.files)

    document["resources"]["sequenceStep"]["directory"] = manifest.MANIFEST_NAME
    document["manifest_sha256"] = manifest.canonical_digest(document)
    path.write_bytes(orjson.dumps(document))
    report = verify(out)
    assert report.exit_code is ExitCode.OK, render(report)
