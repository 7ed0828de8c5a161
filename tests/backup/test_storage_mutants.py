"""Mutants of backup/storage.py's commit protocol (hidden names, rename, atomic documents) that the suite let live, each killed by a test naming its one-line bug."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest

from exporter.backup.storage import INPROGRESS_SUFFIX, HashingFile, Storage
from exporter.core.errors import OutputError


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
