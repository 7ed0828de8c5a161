"""Mutants of backup/storage.py's S3 conditional writes (If-None-Match / If-Match, ConditionalDocuments) that the suite let live, each killed by a test naming its one-line bug."""

from __future__ import annotations

import importlib
import uuid
from collections.abc import Iterator
from types import SimpleNamespace
from typing import Any

import pyarrow.fs as pafs
import pytest

from exporter.backup.storage import ConditionalDocuments, DocumentChanged, Storage
from exporter.core.errors import OutputError, UsageError
from tests.helpers.s3_fault_proxy import Fault, FaultProxy, fault_proxy


@pytest.fixture
def proxy(s3_server: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[FaultProxy]:
    """The fault proxy in front of moto; AWS_ENDPOINT_URL points at it for the test."""
    with fault_proxy(s3_server) as running:
        monkeypatch.setenv("AWS_ENDPOINT_URL", running.endpoint)
        yield running


@pytest.fixture
def botocore_waits(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    """The waits botocore asks for between retries, recorded and returned at once."""
    asked: list[float] = []
    endpoint = importlib.import_module("botocore.endpoint")
    monkeypatch.setattr(endpoint, "time", SimpleNamespace(sleep=asked.append))
    return asked


def new_uri(name: str) -> str:
    return f"s3://backups/conditional/{name}-{uuid.uuid4().hex[:6]}"


def puts_of(proxy: FaultProxy, name: str) -> list[str]:
    return [outcome for method, path, outcome in proxy.requests if method == "PUT" and name in path]


@pytest.mark.slow
@pytest.mark.parametrize("status", [409, 412])
def test_a_conflict_told_by_its_status_alone_is_a_change(proxy: FaultProxy, status: int) -> None:
    """A store may answer a failed condition with 412 (or 409, a conflicting conditional
    write) and an error code this code does not know. Bugs: `status in (409, 412)` flipped or
    either number changed, `or` as `and` with the codes: the other run's write would be
    reported as a store failure (exit 4, "run the same command again") instead of a second
    run writing the backup (exit 7)."""
    uri = new_uri(f"status-{status}")
    ours, theirs = Storage.open(uri), Storage.open(uri)
    assert ours.read_document("_checkpoint.json") is None
    assert theirs.read_document("_checkpoint.json") is None
    theirs.write_atomically("_checkpoint.json", b'{"by": "them"}')
    proxy.add(Fault("status", "PUT", r"_checkpoint\.json", times=None, status=status))
    with pytest.raises(DocumentChanged, match=r"_checkpoint\.json was changed by another run"):
        ours.write_atomically("_checkpoint.json", b'{"by": "us"}')
    proxy.clear()
    assert Storage.open(uri).read_document("_checkpoint.json") == b'{"by": "them"}'


@pytest.mark.slow
@pytest.mark.parametrize("known", ["absent", "a version"])
def test_a_store_failing_a_conditional_write_is_a_store_failure(
    proxy: FaultProxy, botocore_waits: list[float], known: str
) -> None:
    """A PUT the store keeps failing (500, InternalError) is sent five times (botocore's
    `max_attempts` counts the retries after the first), then reported as the store's failure
    with its reason. Bugs: `code in ("PreconditionFailed", ...)`
    or `code in ("NoSuchKey", "404")` flipped, `"IfMatch" in condition and ...` as `or`, the
    reason left out of the message (`... or type(exc).__name__` as `and`), one retry more
    (`max_attempts` 4 as 5): a failing store would be taken for another run (exit 7)."""
    uri = new_uri("failing")
    storage = Storage.open(uri)
    if known == "a version":
        storage.write_atomically("_manifest.json", b'{"n": 1}')
    assert storage.read_document("_manifest.json") == (b'{"n": 1}' if known != "absent" else None)
    proxy.clear()
    proxy.add(Fault("status", "PUT", r"_manifest\.json", times=None, status=500))
    with pytest.raises(OutputError, match=r"cannot write .*_manifest\.json: .*InternalError") as e:
        storage.write_atomically("_manifest.json", b'{"n": 2}')
    assert not isinstance(e.value, DocumentChanged)
    assert puts_of(proxy, "_manifest.json") == ["status"] * 5
    assert len(botocore_waits) == 4
    proxy.clear()
    expected = b'{"n": 1}' if known != "absent" else None
    assert Storage.open(uri).read_document("_manifest.json") == expected


@pytest.mark.slow
def test_a_store_failing_a_read_is_a_store_failure(
    proxy: FaultProxy, botocore_waits: list[float]
) -> None:
    """Bug: `code in ("NoSuchKey", "404")` flipped in `get`: a read the store failed would
    say "no checkpoint" (a fresh start over a backup) instead of failing."""
    storage = Storage.open(new_uri("read"))
    storage.write_atomically("_checkpoint.json", b"{}")
    proxy.add(Fault("status", "GET", r"_checkpoint\.json", times=None, status=500))
    with pytest.raises(OutputError, match=r"cannot read .*_checkpoint\.json: .*InternalError"):
        Storage.open(storage.display).read_document("_checkpoint.json")


@pytest.mark.slow
def test_a_document_deleted_since_it_was_read_is_a_change(s3_server: str) -> None:
    """S3 answers an If-Match PUT on an object that is gone with 404 NoSuchKey. Bug:
    `"IfMatch" in condition` flipped: another run's removal (a `--restart`) would be
    reported as a store failure instead of a second run at work."""
    uri = new_uri("deleted")
    ours, theirs = Storage.open(uri), Storage.open(uri)
    ours.write_atomically("_checkpoint.json", b'{"n": 1}')
    assert theirs.read_document("_checkpoint.json") == b'{"n": 1}'
    ours.delete("_checkpoint.json")
    with pytest.raises(DocumentChanged, match="changed by another run"):
        theirs.write_atomically("_checkpoint.json", b'{"n": 2}')
    assert not Storage.open(uri).exists("_checkpoint.json")
    ours.write_atomically("_checkpoint.json", b'{"n": 3}')  # deleted by us: known absent
    assert theirs.read_document("_checkpoint.json") == b'{"n": 3}'


def test_the_client_reaches_the_configured_region_and_endpoint(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Bug: `options.get("region") or os.environ.get("AWS_REGION") or "us-east-1"` with `and`:
    the region of the URI's query (or of AWS_REGION) would be dropped for another one. No
    request is sent: botocore builds a client without connecting."""
    monkeypatch.setenv("AWS_REGION", "ca-central-1")
    options = {"bucket": "b", "prefix": "p", "endpoint_override": "127.0.0.1:9", "scheme": "http"}
    for given, expected in [({"region": "eu-west-2"}, "eu-west-2"), ({}, "ca-central-1")]:
        documents = ConditionalDocuments.connect({**options, **given})
        assert documents is not None
        assert documents.client.meta.region_name == expected
        assert documents.client.meta.endpoint_url == "http://127.0.0.1:9"
    monkeypatch.delenv("AWS_REGION")
    documents = ConditionalDocuments.connect(options)
    assert documents is not None and documents.client.meta.region_name == "us-east-1"


@pytest.mark.slow
def test_a_prefix_named_like_an_object_is_refused_before_any_read_or_delete(
    s3_server: str,
) -> None:
    """Bugs: `self._check_root()` left out of `read_document`'s conditional read or of
    `delete_dir`: a command would read the checkpoint below an ambiguous prefix, or delete
    the objects below it, where every other command refuses."""
    name = f"conditional/object-{uuid.uuid4().hex[:6]}"
    bucket = Storage.open("s3://backups")
    for key in (name, f"{name}/_checkpoint.json", f"{name}/t/part-1.parquet"):
        with bucket.fs.open_output_stream(bucket.path(key)) as handle:
            handle.write(b"{}")
    for access in (
        lambda storage: storage.read_document("_checkpoint.json"),
        lambda storage: storage.delete_dir("t"),
    ):
        with pytest.raises(UsageError, match="an object of that very name exists"):
            access(Storage.open(f"s3://backups/{name}"))
    assert bucket.list_files(name) == [f"{name}/_checkpoint.json", f"{name}/t/part-1.parquet"]


@pytest.mark.slow
def test_a_missing_bucket_is_told_from_an_empty_prefix(s3_server: str) -> None:
    """Bugs: the bucket's existence not asked (`and` as `or`, `==` flipped in `root_type`),
    or asked of another name (`split("/", 1)[0]` as `[1]`): a typo in the bucket's name would
    look like an empty backup, or an empty prefix like a missing bucket."""
    absent = f"no-such-bucket-{uuid.uuid4().hex[:6]}"
    with pytest.raises(UsageError, match=rf"bucket '{absent}' does not exist; check the URI"):
        Storage.open(f"s3://{absent}/prefix/below").root_type()
    empty = Storage.open(f"s3://backups/conditional/empty-{uuid.uuid4().hex[:6]}/below")
    assert empty.root_type() == pafs.FileType.NotFound
    assert Storage.open("s3://backups").root_type() == pafs.FileType.Directory


@pytest.mark.parametrize("missing", ["IfMatch", "IfNoneMatch"])
def test_a_botocore_without_both_conditions_is_not_used(
    monkeypatch: pytest.MonkeyPatch, missing: str
) -> None:
    """botocore gained If-None-Match on PutObject (S3, August 2024) months before If-Match
    (November 2024); one with only the first must not be used for conditional writes. Bug:
    `"IfMatch" not in members or "IfNoneMatch" not in members` as `and`: the first replacement
    of a document would fail on the unknown parameter. No request is sent."""
    botocore_model = importlib.import_module("botocore.model")
    members = botocore_model.StructureShape.__dict__["members"]

    def without_one(shape: Any) -> Any:
        found = members.__get__(shape, type(shape))
        if shape.name == "PutObjectRequest":
            found = {k: v for k, v in found.items() if k != missing}
        return found

    options = {"bucket": "b", "prefix": "", "endpoint_override": "127.0.0.1:9", "scheme": "http"}
    assert ConditionalDocuments.connect(options) is not None
    monkeypatch.setattr(botocore_model.StructureShape, "members", property(without_one))
    assert ConditionalDocuments.connect(options) is None
