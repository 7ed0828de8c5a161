"""A manifest check independent of `exporter verify`: files, sizes, digests and row counts."""

from __future__ import annotations

import hashlib
from pathlib import Path

import orjson
import pyarrow.parquet as pq


def assert_manifest_matches_files(out: Path) -> None:
    manifest = orjson.loads((out / "_manifest.json").read_bytes())
    listed = {entry["path"] for entry in manifest["files"]}
    on_disk = {  # `exporter compact`'s output (_current/) is not part of the backup
        str(p.relative_to(out))
        for p in out.rglob("*.parquet")
        if not p.name.startswith(".") and p.relative_to(out).parts[0] != "_current"
    }
    assert listed == on_disk, (sorted(listed - on_disk)[:5], sorted(on_disk - listed)[:5])
    for entry in manifest["files"]:
        path = out / entry["path"]
        assert hashlib.sha256(path.read_bytes()).hexdigest() == entry["sha256"], entry["path"]
        assert pq.read_metadata(path).num_rows == entry["rows"], entry["path"]
    for type_name, resource in manifest["resources"].items():
        rows = sum(e["rows"] for e in manifest["files"] if e["type"] == type_name)
        assert rows == resource["rows"], type_name
