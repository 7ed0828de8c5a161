"""Mutants of backup/storage.py (the commit protocol, locations and their refusals, the root check, errors) that the suite let live, each killed by a test naming its one-line bug; the S3 conditional writes are in test_storage_s3_mutants.py."""

from __future__ import annotations

import hashlib
import os
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pyarrow.fs as pafs
import pytest

from exporter.backup import storage as storage_module
from exporter.backup.storage import INPROGRESS_SUFFIX, HashingFile, Storage
from exporter.core.errors import ExitCode, OutputError, UsageError
from tests.helpers.durability import recorded_fsyncs


def test_finish_data_renames_the_hidden_file_and_reports_its_own_bytes(tmp_path: Path) -> None:
    """Bugs: the hidden file not renamed into place (`os.replace` deleted), the size or the
    digest not those of the bytes on disk (`self.size += ...` as `-=`), the final name visible
    before `finish_data` (`temporary` only when not local)."""
    storage = Storage.open(tmp_path)
    opened = storage.open_data("things/part-1.parquet")
    assert opened.temporary == "things/.part-1.parquet" + INPROGRESS_SUFFIX
    for chunk in (b"PAR1", b"x" * 1000, memoryview(b"tail")):
        assert opened.handle.write(chunk) == len(chunk)
    assert opened.handle.tell() == 1008
    assert not (tmp_path / "things/part-1.parquet").exists()
    size, digest = storage.finish_data(opened)
    on_disk = (tmp_path / "things/part-1.parquet").read_bytes()
    assert (size, digest) == (len(on_disk), hashlib.sha256(on_disk).hexdigest())
    assert on_disk == b"PAR1" + b"x" * 1000 + b"tail"
    assert sorted(p.name for p in (tmp_path / "things").iterdir()) == ["part-1.parquet"]


def test_abandon_data_leaves_neither_name(tmp_path: Path) -> None:
    """Bug: the hidden file left behind (`delete_file` of the final name instead, or not
    called): an aborted run would litter `.inprogress` files that nothing removes."""
    storage = Storage.open(tmp_path)
    opened = storage.open_data("things/part-2.parquet")
    opened.handle.write(b"partial")
    storage.abandon_data(opened)
    assert list((tmp_path / "things").iterdir()) == []
    storage.abandon_data(opened)  # twice is harmless: the handle is closed once


def test_hashing_file_is_a_write_only_stream(tmp_path: Path) -> None:
    """Bugs: `seekable`/`readable` answering True (pyarrow would seek or read back on a
    stream that cannot), `writable` False, `close` closing the sink twice."""
    storage = Storage.open(tmp_path)
    opened = storage.open_data("t/part-3.parquet")
    handle: HashingFile = opened.handle
    assert (handle.writable(), handle.seekable(), handle.readable()) == (True, False, False)
    handle.flush()
    handle.close()
    assert handle.closed
    handle.close()  # a second close is a no-op, not an error from the closed sink


def test_write_atomically_replaces_whole_and_leaves_no_hidden_file(tmp_path: Path) -> None:
    """Bugs: the payload's tail not written (`view = view[os.write(...):]` loop cut), the
    hidden file not renamed (`os.replace` deleted) or left behind, a missing directory not
    created (`os.makedirs` deleted)."""
    storage = Storage.open(tmp_path)
    big = b"{" + b"a" * (1 << 20) + b"}"
    storage.write_atomically("deep/dir/_checkpoint.json", big)
    storage.write_atomically("deep/dir/_checkpoint.json", b"{}")
    assert (tmp_path / "deep/dir/_checkpoint.json").read_bytes() == b"{}"
    assert os.listdir(tmp_path / "deep/dir") == ["_checkpoint.json"]
    storage.write_atomically("_manifest.json", big)
    assert storage.read_bytes("_manifest.json") == big
    assert storage.read_document("_manifest.json") == big


def test_a_failed_atomic_write_raises_and_removes_its_hidden_file(tmp_path: Path) -> None:
    """Bug: the hidden file of a failed replacement left behind (the `os.unlink` in the
    `except` deleted, or its name built differently): the target here is a directory, so
    the rename fails after the hidden file was written."""
    storage = Storage.open(tmp_path)
    (tmp_path / "_manifest.json").mkdir()
    (tmp_path / "_manifest.json" / "keep").write_bytes(b"x")
    with pytest.raises(OutputError, match=r"cannot write .*_manifest\.json"):
        storage.write_atomically("_manifest.json", b"{}")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["_manifest.json"]


def test_listing_existence_deletion_and_digest(tmp_path: Path) -> None:
    """Bugs: `list_files` listing directories or keeping the root's prefix, `exists` true for
    an absent file (`!=` flipped), `delete` of an absent file raising, `sha256` of the
    wrong bytes, a directory not removed."""
    storage = Storage.open(tmp_path)
    assert storage.list_files("nothing") == [] and not storage.exists("nothing/x")
    storage.write_atomically("a/b/one.json", b"1")
    storage.write_atomically("a/two.json", b"22")
    assert storage.list_files("a") == ["a/b/one.json", "a/two.json"]
    assert storage.exists("a/two.json") and storage.exists("a/b")
    assert storage.sha256("a/two.json") == hashlib.sha256(b"22").hexdigest()
    assert storage.read_bytes("a/absent.json") is None
    assert storage.read_document("a/absent.json") is None
    storage.delete("a/two.json")
    storage.delete("a/two.json")  # absent is fine
    assert storage.list_files("a") == ["a/b/one.json"]
    storage.delete_dir("a")
    storage.delete_dir("a")  # absent is fine
    assert not storage.exists("a")


class _FlakyStore:
    """The store in front of `real`: every call of its `method` recorded (by its first
    argument), the first `failures` of them failing with a passing error."""

    def __init__(self, real: pafs.FileSystem, method: str, failures: int = 0) -> None:
        self.real = real
        self.method = method
        self.failures = failures
        self.calls: list[object] = []

    def __getattr__(self, name: str) -> Any:
        attribute = getattr(self.real, name)
        if name != self.method:
            return attribute

        def flaky(*args: Any) -> Any:
            self.calls.append(args[0])
            if len(self.calls) <= self.failures:
                raise OSError(5, "store briefly unavailable")
            return attribute(*args)

        return flaky


def _record_sleeps(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    """What the module asks to sleep, recorded and returned at once (a value, not a time)."""
    asked: list[float] = []
    monkeypatch.setattr(storage_module.time, "sleep", asked.append)
    return asked


@pytest.mark.parametrize("failures", [4, 5])
def test_a_delete_is_tried_five_times_with_doubling_waits(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, failures: int
) -> None:
    """Bugs: one attempt more or fewer (`attempts: int = 5` as 6, `attempt == attempts - 1`
    flipped or `+ 1`), the waits not doubling from 0.1 s (`0.1 * 2**attempt`'s constants or
    sign), a failure on the last attempt swallowed instead of raised."""
    storage = Storage.open(tmp_path)
    storage.write_atomically("a/one.json", b"{}")
    flaky = _FlakyStore(storage.fs, "delete_file", failures)
    monkeypatch.setattr(storage, "fs", flaky)
    asked = _record_sleeps(monkeypatch)
    if failures == 5:
        with pytest.raises(OutputError, match=r"cannot remove .*one\.json: store briefly"):
            storage.delete("a/one.json")
        assert storage.exists("a/one.json")
    else:
        storage.delete("a/one.json")
        assert not storage.exists("a/one.json")
    assert len(flaky.calls) == 5
    assert asked == pytest.approx([0.1, 0.2, 0.4, 0.8])


def _object_store_view(tmp_path: Path) -> Storage:
    """A store that is not a local directory (pyarrow's SubTreeFileSystem over a temporary
    directory): like an object store, it has no atomic rename and its root is checked before
    the first access. Its prefix `root/p1` is here a file, as an object named like a prefix."""
    (tmp_path / "root").mkdir(parents=True)
    (tmp_path / "root" / "p1").write_bytes(b"an object")
    filesystem = pafs.SubTreeFileSystem(str(tmp_path), pafs.LocalFileSystem())
    return Storage(filesystem, "root/p1", "mem://root/p1")


def test_writes_refuse_a_prefix_named_like_an_object(tmp_path: Path) -> None:
    """Bugs: `self._check_root()` left out of `open_data` or of `write_atomically`: the first
    write of a run would meet the ambiguous prefix as a storage failure (exit 4, "cannot
    write") instead of the one refusal every command gives (a usage error naming it)."""
    for write in (
        lambda storage: storage.open_data("things/part-1.parquet"),
        lambda storage: storage.write_atomically("_checkpoint.json", b"{}"),
    ):
        with pytest.raises(UsageError, match="an object of that very name exists"):
            write(_object_store_view(tmp_path))
        shutil.rmtree(tmp_path / "root")


def test_on_an_object_store_data_is_written_under_its_final_name(tmp_path: Path) -> None:
    """Bug: a hidden name used without a rename to follow (`temporary` when not local): on an
    object store the file would stay `.part-1.parquet.inprogress` and its name be missing."""
    storage = _object_store_view(tmp_path)
    (tmp_path / "root" / "p1").unlink()
    opened = storage.open_data("things/part-1.parquet")
    assert opened.temporary is None
    opened.handle.write(b"PAR1")
    assert storage.finish_data(opened) == (4, hashlib.sha256(b"PAR1").hexdigest())
    assert storage.list_files("things") == ["things/part-1.parquet"]
    storage.write_atomically("_checkpoint.json", b'{"n": 1}')
    assert sorted(os.listdir(tmp_path / "root" / "p1")) == ["_checkpoint.json", "things"]
    assert storage.read_document("_checkpoint.json") == b'{"n": 1}'


def test_a_document_cut_short_is_read_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Bugs: a document that does not parse handed on at once on an object store (`range(0 if
    self.local else 4)` inverted or 4 changed), without the pause between reads (0.25 s), or
    not read again (`raw = self.read_bytes(...)` kept from the first read). The writer's
    replacement lands during the second pause; a document that never parses is handed on as
    it is after four reads more."""
    storage = _object_store_view(tmp_path)
    (tmp_path / "root" / "p1").unlink()
    (tmp_path / "root" / "p1").mkdir()  # a directory: its files are the objects below it
    storage.write_atomically("_manifest.json", b'{"cut')
    asked: list[float] = []

    def writer_finishes_meanwhile(seconds: float) -> None:
        asked.append(seconds)
        if len(asked) == 2:
            storage.write_atomically("_manifest.json", b'{"whole": true}')

    monkeypatch.setattr(storage_module.time, "sleep", writer_finishes_meanwhile)
    assert storage.read_document("_manifest.json") == b'{"whole": true}'
    assert asked == [0.25, 0.25]
    storage.write_atomically("_checkpoint.json", b"not json")
    assert storage.read_document("_checkpoint.json") == b"not json"
    assert asked == [0.25] * 6
    local = Storage.open(tmp_path / "local")
    local.write_atomically("_manifest.json", b'{"cut')
    assert local.read_document("_manifest.json") == b'{"cut'  # a rename is never seen half
    assert len(asked) == 6


def test_abandon_data_closes_the_handle(tmp_path: Path) -> None:
    """Bug: `data.handle.close()` left out of `abandon_data`: each abandoned part would keep
    its descriptor open (on an object store, its upload) for the rest of the run."""
    storage = Storage.open(tmp_path)
    opened = storage.open_data("things/part-4.parquet")
    opened.handle.write(b"partial")
    storage.abandon_data(opened)
    assert opened.handle.closed and opened.handle.sink.closed


def test_a_rename_into_place_is_made_durable(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Bugs: the directory not fsynced after the rename (`fsync_directory(...)` left out of
    `finish_data` or `write_atomically`), or the file's bytes not fsynced before it: after a
    power cut the checkpoint could name a part file whose name or bytes were never on disk."""
    storage = Storage.open(tmp_path)
    synced = recorded_fsyncs(monkeypatch)
    opened = storage.open_data("things/part-5.parquet")
    opened.handle.write(b"PAR1")
    storage.finish_data(opened)
    storage.write_atomically("_checkpoint.json", b"{}")
    inode = {name: os.stat(tmp_path / name).st_ino for name in ("things/part-5.parquet", "things")}
    assert [inode for _kind, inode, _size in synced] == [
        inode["things/part-5.parquet"],
        inode["things"],
        os.stat(tmp_path / "_checkpoint.json").st_ino,
        os.stat(tmp_path).st_ino,
    ]


def test_every_descriptor_opened_is_closed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Bugs: `os.close(fd)` left out after the fsync of a finished data file, of an atomic
    write or of a directory: a long run would leak one descriptor per file until it hits the
    process's limit."""
    storage = Storage.open(tmp_path)
    opened_fds: list[int] = []
    closed_fds: list[int] = []
    real_open, real_close = os.open, os.close

    def record_open(path: str, flags: int, mode: int = 0o777) -> int:
        fd = real_open(path, flags, mode)
        opened_fds.append(fd)
        return fd

    def record_close(fd: int) -> None:
        closed_fds.append(fd)
        real_close(fd)

    monkeypatch.setattr(storage_module.os, "open", record_open)
    monkeypatch.setattr(storage_module.os, "close", record_close)
    data = storage.open_data("things/part-6.parquet")
    data.handle.write(b"PAR1")
    storage.finish_data(data)
    storage.write_atomically("_checkpoint.json", b"{}")
    monkeypatch.undo()
    assert len(opened_fds) == 4  # the data file, its directory, the checkpoint, the root
    assert closed_fds == opened_fds


def test_files_are_made_with_their_parents_and_plain_permissions(tmp_path: Path) -> None:
    """Bugs: a data file's missing parent directories not made (`create_dir(...,
    recursive=True)` as False), an atomic write's file created with another mode than 0o644
    (less the umask): an executable bit, or a checkpoint other users cannot read."""
    storage = Storage.open(tmp_path)
    opened = storage.open_data("new/nested/part-7.parquet")
    opened.handle.write(b"PAR1")
    storage.finish_data(opened)
    assert (tmp_path / "new/nested/part-7.parquet").read_bytes() == b"PAR1"
    umask = os.umask(0)
    os.umask(umask)
    storage.write_atomically("_checkpoint.json", b"{}")
    assert (tmp_path / "_checkpoint.json").stat().st_mode & 0o777 == 0o644 & ~umask


@pytest.mark.parametrize(
    ("error", "expected"),
    [
        (OSError(28, "No space left on device"), "No space left on device; free some space"),
        (OSError(27, "File too large"), "File too large; raise the file size limit or lower"),
        (OSError(29, "Illegal seek"), "Illegal seek; check the path, its permissions"),
        (OSError("the store  said\nno"), "the store said no; check the path"),
        (OSError(), "OSError; check the path"),
    ],
)
def test_a_storage_error_says_why_and_what_to_do(error: OSError, expected: str) -> None:
    """Bugs: the hint for a full disk (errno 28) or a file size limit (27) given for another
    errno or not at all (`==` flipped, a number off by one); the reason not the system's
    words, the store's message on one line, or the type's name (`or` as `and`)."""
    message = str(storage_module.storage_error("write", "out/x.json", error))
    assert message.startswith(f"cannot write out/x.json: {expected}")
    assert message.endswith(", then run the same command again")


def test_an_s3_uri_is_read_into_its_options(monkeypatch: pytest.MonkeyPatch) -> None:
    """Bugs: AWS_ENDPOINT_URL_S3 not preferred to AWS_ENDPOINT_URL, the endpoint's scheme kept
    in its host (`netloc or endpoint` as `and`), AWS_DEFAULT_REGION ignored without
    AWS_REGION, the URI's userinfo not taken as the keys (or not unquoted, or only when both
    are there: `parts.username or parts.password` as `and`), a boolean query
    value misread (`in ("true", "1")` flipped). No request is sent: S3FileSystem connects
    lazily."""
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", "http://127.0.0.1:9001")
    monkeypatch.setenv("AWS_ENDPOINT_URL", "https://127.0.0.1:9002")
    monkeypatch.delenv("AWS_REGION", raising=False)
    monkeypatch.setenv("AWS_DEFAULT_REGION", "eu-north-1")
    storage = Storage.open("s3://KEY:se%2Fcret@bucket/pre/fix?force_virtual_addressing=1")
    assert storage.display == "s3://bucket/pre/fix" and storage.base == "bucket/pre/fix"
    assert storage.s3 == {
        "bucket": "bucket",
        "prefix": "pre/fix",
        "endpoint_override": "127.0.0.1:9001",
        "scheme": "http",
        "region": "eu-north-1",
        "access_key": "KEY",
        "secret_key": "se/cret",
        "force_virtual_addressing": True,
    }
    monkeypatch.delenv("AWS_ENDPOINT_URL_S3")
    monkeypatch.setenv("AWS_REGION", "us-west-2")
    plain = Storage.open("s3://bucket?force_virtual_addressing=false", flag="DIR")
    assert plain.s3 == {
        "bucket": "bucket",
        "prefix": "",
        "endpoint_override": "127.0.0.1:9002",
        "scheme": "https",
        "region": "us-west-2",
        "force_virtual_addressing": False,
    }
    assert (plain.base, plain.flag, plain.path("_lock.json")) == (
        "bucket",
        "DIR",
        "bucket/_lock.json",
    )
    secret_only = Storage.open("s3://:SECRET@bucket")  # an empty key is sent, not the default
    assert secret_only.s3 is not None
    assert (secret_only.s3["access_key"], secret_only.s3["secret_key"]) == ("", "SECRET")


@pytest.mark.parametrize(
    ("uri", "refusal"),
    [
        ("s3://bucket:9000/p", "names a bucket, not a server: set AWS_ENDPOINT_URL"),
        ("s3:///p", "an S3 URI names a bucket, e.g. s3://bucket/prefix"),
        ("s3://b/p?colour=blue", "unknown query parameter 'colour'; known: access_key, "),
        ("s3://b/p?colour=", "unknown query parameter 'colour'"),
        ("s3://b/p?force_virtual_addressing=yes", "force_virtual_addressing takes true or false"),
        ("s3://b/p?access_key=A", "give both the access key and the secret key"),
        ("s3://b/p?secret_key=S", "give both the access key and the secret key"),
        ("file://elsewhere/dir", "a file:// URI names a local path: file:///dir"),
        ("file:///dir?mode=x", "a file:// URI names a local path: file:///dir"),
        ("", "--out: an empty location"),
        ("foo://x", "is not a path or a URI pyarrow can open: Unrecognized filesystem type"),
    ],
)
def test_a_location_that_names_nothing_clearly_is_refused(uri: str, refusal: str) -> None:
    """Bugs: a port, a missing bucket, an unknown query parameter (also with a blank value:
    `keep_blank_values=True` as False), a boolean that is not one, one key without the other
    (`!=` flipped), a file:// URI with a host or a query, an empty location (`check_location`
    left out: it would be the current directory), or a scheme pyarrow does not know, each
    taken instead of refused (or refused with the wrong reason)."""
    with pytest.raises(UsageError) as refused:
        Storage.open(uri)
    assert refusal in str(refused.value)
    assert "se%2Fcret" not in str(refused.value)


def test_local_locations_and_file_uris_are_one_path(tmp_path: Path) -> None:
    """Bugs: a file:// URI taken for an object store (`scheme == "file"` flipped), its path
    not unquoted or the root lost (`or "/"` as `and`, `base.rstrip("/") or "/"` as `and`), a
    one-letter scheme (a Windows drive) taken for a URI (`len(scheme) == 1` off by one), a
    `file:` URI without '//' taken for a relative path (`"://" in text or ...` as `and`)."""
    assert Storage.open("/").path("x") == "/x"
    uri = Storage.open(f"file://{tmp_path.as_posix()}/with%20space/")
    assert (uri.local, uri.base) == (True, f"{tmp_path.as_posix()}/with space")
    assert uri.display == f"file://{tmp_path.as_posix()}/with space"
    assert Storage.open("file:///").base == "/"
    drive = Storage.open("C://backups")  # a Windows drive, here a directory named "C:"
    assert drive.local and drive.base == f"{Path.cwd().as_posix()}/C:/backups"
    short = Storage.open(f"file:{tmp_path.as_posix()}")  # one slash: still a file URI
    assert (short.local, short.base) == (True, tmp_path.as_posix())


def test_the_root_is_checked_once_and_again_after_a_failure(tmp_path: Path) -> None:
    """Bugs: the root checked before every access (`_root_checked = True` as False: one more
    request each time), a whole bucket checked (`"/" not in self.base` flipped), a check the
    store failed or refused not made again next time (`_root_checked = False` as True: the
    second command of a process would write into the ambiguous prefix)."""
    storage = _object_store_view(tmp_path)
    counting = _FlakyStore(storage.fs, "get_file_info", failures=1)
    storage.fs = counting
    with pytest.raises(OutputError, match="cannot read mem://root/p1: store briefly"):
        storage.exists("x")
    for _ in range(2):
        with pytest.raises(UsageError, match="an object of that very name exists"):
            storage.exists("x")
    assert counting.calls == ["root/p1"] * 3
    (tmp_path / "root" / "p1").unlink()
    (tmp_path / "root" / "p1").mkdir()
    storage.write_atomically("_checkpoint.json", b"{}")
    assert storage.read_document("_checkpoint.json") == b"{}"
    assert counting.calls == ["root/p1"] * 4 + ["root/p1/_checkpoint.json"]
    bucket = Storage(pafs.SubTreeFileSystem(str(tmp_path), pafs.LocalFileSystem()), "root", "b")
    whole = _FlakyStore(bucket.fs, "get_file_info")
    bucket.fs = whole
    assert bucket.list_files("p1") == ["p1/_checkpoint.json"]
    assert [a for a in whole.calls if isinstance(a, str)] == []


def test_check_writable_leaves_nothing_and_refuses_what_others_refuse(tmp_path: Path) -> None:
    """Bugs: the probe not removed (`_delete_with_retries(probe)` left out), the location's
    directories not made (`create_dir` left out, or not recursive), the root not checked
    first (`_check_root()` left out: an ambiguous prefix reported as a write failure)."""
    storage = Storage.open(tmp_path / "new" / "out")
    storage.check_writable()
    assert list((tmp_path / "new" / "out").iterdir()) == []
    with pytest.raises(UsageError, match="an object of that very name exists"):
        _object_store_view(tmp_path / "view").check_writable()


class _FullStore:
    """The store in front of `real`, whose new files take no byte (a full disk)."""

    def __init__(self, real: pafs.FileSystem) -> None:
        self.real = real

    def open_output_stream(self, path: str) -> Any:
        real = self.real

        class Stream:
            def __enter__(self) -> Stream:
                real.open_output_stream(path).close()  # created, empty
                return self

            def __exit__(self, *exc: object) -> None:
                return None

            def write(self, data: bytes) -> int:
                raise OSError(28, "No space left on device")

        return Stream()

    def __getattr__(self, name: str) -> Any:
        return getattr(self.real, name)


def test_check_writable_writes_bytes_not_only_a_name(tmp_path: Path) -> None:
    """Bug: the probe's `handle.write(b"ok")` left out: a store that creates names but takes
    no byte (a full disk) would pass the check, and the run fail at its first data file."""
    storage = Storage.open(tmp_path)
    storage.fs = _FullStore(storage.fs)
    with pytest.raises(OutputError, match="No space left on device; free some space"):
        storage.check_writable()
    assert list(tmp_path.iterdir()) == []


def test_a_damaged_file_says_why_in_one_short_line() -> None:
    """Bugs: the reader's reason replaced by its type's name (`or` as `and`), not cut at 200
    characters (`[:200]` as 201), the message left out (`super().__init__` deleted)."""
    long = storage_module.DamagedFile("out/t/part-1.parquet", ValueError("bad\n footer " * 40))
    reason = " ".join(("bad\n footer " * 40).split())[:200]
    assert str(long).startswith(
        f"out/t/part-1.parquet is damaged (not a readable Parquet file: {reason}); "
    )
    assert long.exit_code == ExitCode.FAILED
    assert "(not a readable Parquet file: EOFError); run `exporter verify`" in str(
        storage_module.DamagedFile("x", EOFError())
    )


@pytest.mark.parametrize(
    "access",
    [
        lambda storage: storage.read_bytes("a.json"),
        lambda storage: storage.exists("a.json"),
        lambda storage: storage.list_files("t"),
        lambda storage: storage.delete("a.json"),
        lambda storage: storage.delete_dir("t"),
        lambda storage: storage.root_type(),
        lambda storage: storage.file_type("a.json"),
        lambda storage: storage.sha256("a.json"),
    ],
    ids=[
        "read_bytes",
        "exists",
        "list_files",
        "delete",
        "delete_dir",
        "root_type",
        "file_type",
        "sha256",
    ],
)
def test_every_access_refuses_a_prefix_named_like_an_object(
    tmp_path: Path, access: Callable[[Storage], object]
) -> None:
    """Bugs: `self._check_root()` left out of any one of these: that command would read the
    object's neighbours (or answer "absent", or File) where every other command refuses."""
    with pytest.raises(UsageError, match="an object of that very name exists"):
        access(_object_store_view(tmp_path))


def test_without_botocore_guarded_documents_are_written_as_data(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Bug: `not self.local and self._conditional is not None` as `or` in
    `conditional_writes`: an S3 store without botocore would claim conditional writes that it
    cannot make. No request is sent."""
    monkeypatch.setattr(storage_module.ConditionalDocuments, "connect", lambda options: None)
    assert Storage.open("s3://bucket/prefix").conditional_writes is False


@pytest.mark.parametrize(
    ("recorded", "inside"),
    [
        ("a/./b", "a/b"),
        ("t/part-1.parquet", "t/part-1.parquet"),
        (None, None),
        (7, None),
        ("a\x00b", None),
        ("a\\b", None),
        ("/etc/passwd", None),
        ("../x", None),
        ("a/../../b", None),
        ("", None),
        (".", None),
        ("a//b", None),
    ],
)
def test_a_recorded_path_is_followed_only_below_the_root(
    recorded: object, inside: str | None
) -> None:
    """Bugs: in `inside_root`, a NUL, a backslash, an absolute path, a '..', an empty path or
    a '//' let through (an `in` flipped, `or` as `and`, a `not` dropped), or a plain path
    refused: a manifest naming `../x` would make restore or verify read outside the backup."""
    assert storage_module.inside_root(recorded) == inside


def test_secrets_in_a_refused_location_are_scrubbed_longest_first() -> None:
    """Bugs: the secrets of a location pyarrow refuses (whose message repeats the URI) not
    scrubbed longest first (`reverse=True` as False: the user name `ab` replaced inside the
    password `abcdef` would leave `cdef` shown), a secret query value kept or a plain one
    scrubbed (`k.lower() in SECRET_QUERY_KEYS` flipped)."""
    with pytest.raises(UsageError) as refused:
        Storage.open("foo://ab:abcdef@host/x?Token=t0k3n&region=eu-west-1")
    message = str(refused.value)
    assert "cdef" not in message and "t0k3n" not in message
    assert "foo://***:***@host/x?Token=***&region=eu-west-1" in message


def test_a_location_is_shown_as_given_less_its_trailing_slash(tmp_path: Path) -> None:
    """Bugs: `stripped or text` as `and` (a trailing '/' kept, or the root shown as ''), a
    one-letter scheme (a Windows drive) taken for a URI by `redact_uri` (`len(parts.scheme)
    == 1` off by one: `C:/dir#x` shown lower-cased and cut), a fragment kept or a URI with
    nothing to hide rebuilt (a `not` dropped in `redact_uri`'s early return)."""
    assert Storage.open(f"{tmp_path}/out/").display == f"{tmp_path}/out"
    assert Storage.open("/").display == "/"
    assert storage_module.redact_uri("C:/dir#x") == "C:/dir#x"
    assert storage_module.redact_uri("s3://b/p#frag") == "s3://b/p"
    assert storage_module.redact_uri("s3://") == "s3://"  # not rebuilt: urlunsplit gives 's3:'


def test_a_local_backup_deletes_its_guarded_documents_as_files(tmp_path: Path) -> None:
    """Bug: `not self.local and self._conditional is not None and relative in
    GUARDED_DOCUMENTS` as `or` in `delete`: a local `--restart` removing the checkpoint
    would ask the (absent) conditional writer to forget it, and fail."""
    storage = Storage.open(tmp_path)
    for name in ("_checkpoint.json", "_manifest.json", "_lock.json"):
        storage.write_atomically(name, b"{}")
        storage.delete(name)
    assert list(tmp_path.iterdir()) == []
