"""A moto S3 server on a free loopback port (the `s3_server` fixture in conftest.py starts it), and an export checked on the object store."""

from __future__ import annotations

import importlib.metadata
import socket
import subprocess
import sys
import time

import orjson
import pyarrow.fs as pafs
import pyarrow.parquet as pq
import pytest

from exporter.backup.storage import Storage
from tests.helpers.sim import Running
from tests.helpers.truth import (
    STEP_RELATIONSHIP_COLUMNS,
    assert_rows_equal,
    expected_related,
    expected_row,
)


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
