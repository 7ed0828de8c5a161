"""The manifest: the record of a finished run, written last, that `verify` and an auditor check files against.

`_manifest.json` holds the run id, time window, source (no credentials), tool version, parameters,
and per file its path, rows, bytes, sha256 and Arrow schema; `manifest_sha256` is the SHA-256 of
the canonical JSON (sorted keys, no whitespace) of everything else, so any edit is detectable.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import orjson
import pyarrow as pa

from exporter import __version__
from exporter.checkpoint import RunState, write_atomically
from exporter.errors import UsageError
from exporter.normalize import arrow_schema

MANIFEST_NAME = "_manifest.json"
FORMAT = "outreach-exporter/manifest"
VERSION = 1


def schema_fields(schema: pa.Schema) -> list[dict[str, Any]]:
    return [{"name": f.name, "type": str(f.type), "nullable": f.nullable} for f in schema]


def canonical_digest(document: dict[str, Any]) -> str:
    body = {k: v for k, v in document.items() if k != "manifest_sha256"}
    return hashlib.sha256(orjson.dumps(body, option=orjson.OPT_SORT_KEYS)).hexdigest()


def build(state: RunState, stats: dict[str, Any] | None = None) -> dict[str, Any]:
    files = []
    resources: dict[str, Any] = {}
    for type_name, resource in state.resources.items():
        fields = schema_fields(arrow_schema(type_name))
        resources[type_name] = {
            "directory": resource.directory,
            "rows": resource.rows,
            "files": len(resource.files),
            "extra_values": resource.extra_values,
            **({"detail": resource.detail} if resource.detail else {}),
        }
        for data_file in resource.files:
            files.append({**data_file.to_json(), "schema": fields})
    document: dict[str, Any] = {
        "format": FORMAT,
        "version": VERSION,
        "run_id": state.run_id,
        "status": state.status,
        "started_at": state.started_at,
        "finished_at": state.finished_at,
        "source": state.source,
        "tool": {"name": "outreach-exporter", "version": __version__},
        "parameters": state.parameters,
        "resources": resources,
        "files": files,
        "stats": stats or {},
    }
    document["manifest_sha256"] = canonical_digest(document)
    return document


def write(root: Path, state: RunState, stats: dict[str, Any] | None = None) -> dict[str, Any]:
    document = build(state, stats)
    write_atomically(root / MANIFEST_NAME, orjson.dumps(document, option=orjson.OPT_INDENT_2))
    return document


def load(root: Path) -> dict[str, Any]:
    path = root / MANIFEST_NAME
    try:
        document = orjson.loads(path.read_bytes())
    except FileNotFoundError:
        raise UsageError(f"{path} does not exist: no finished export in {root}") from None
    except orjson.JSONDecodeError:
        raise UsageError(f"{path} is not valid JSON") from None
    if not isinstance(document, dict) or document.get("format") != FORMAT:
        raise UsageError(f"{path} is not an outreach-exporter manifest")
    return document
