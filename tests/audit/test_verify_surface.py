"""`verify` tells what is not part of the backup as export does: files `--repair` set aside, and uncommitted files by export's own definition (`layout.is_ours`)."""

from __future__ import annotations

import shutil
from pathlib import Path

from exporter.core.errors import ExitCode
from exporter.export.repair import quarantine_name
from tests.helpers.checks import load_manifest
from tests.helpers.commands import verify_json, verify_text

OTHER_RUN = "20261204T000000Z-abcdef"


def test_a_file_set_aside_by_repair_is_listed_not_a_mismatch(backup: Path) -> None:
    relative = next(f["path"] for f in load_manifest(backup)["files"])
    aside = quarantine_name(relative, OTHER_RUN)
    (backup / aside).write_bytes((backup / relative).read_bytes()[:100])  # damaged bytes
    code, lines = verify_text(backup)
    assert code == ExitCode.OK, lines
    assert f"{aside}: set aside by --repair, not part of the backup" in lines, lines
    assert lines[-1].startswith("OK: "), lines
    code, report = verify_json(backup)
    assert code == ExitCode.OK
    assert {f["path"]: f["status"] for f in report["files"]}[aside] == "set_aside"
    assert not report["differences"]


def test_uncommitted_is_what_export_would_remove(backup: Path) -> None:
    document = load_manifest(backup)
    relative = next(f["path"] for f in document["files"] if f["type"] == "sequenceStep")
    folder = relative.rsplit("/", 1)[0]
    run_id = document["run_id"]
    # Of our naming, where export writes, named by nothing: export removes both (the first even
    # though its run is a known one, the second a temporary file).
    known_run = f"{folder}/part-{run_id}-99999.parquet"
    temporary = f"{folder}/.part-{OTHER_RUN}-00001.parquet.inprogress"
    # Not of our naming where export writes: export leaves it, so it is an added file.
    nested = f"{folder}/sub/part-{OTHER_RUN}-00001.parquet"
    for path in (known_run, temporary, nested):
        (backup / path).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(backup / relative, backup / path)
    code, report = verify_json(backup)
    statuses = {f["path"]: f["status"] for f in report["files"]}
    assert statuses[known_run] == "uncommitted", statuses
    assert statuses[temporary] == "uncommitted", statuses
    assert statuses[nested] == "unlisted", statuses
    assert [d["subject"] for d in report["differences"]] == [nested]
    assert code == ExitCode.VERIFY_MISMATCH
    (backup / nested).unlink()
    code, lines = verify_text(backup)
    assert code == ExitCode.OK, lines
    assert f"{known_run}: uncommitted (not part of the backup; the next export removes it)" in lines
    assert "2 uncommitted file(s)" in lines[-1], lines
