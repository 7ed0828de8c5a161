"""Where a backup's files live: a local directory or an object-store prefix, through pyarrow's filesystems.

`--out` takes a local path, a `file://` URI, an `s3://bucket/prefix` URI, or anything else
`pyarrow.fs.FileSystem.from_uri` knows. For S3 the endpoint, region and credentials come from
the usual AWS variables (`AWS_ENDPOINT_URL`, `AWS_REGION`, `AWS_ACCESS_KEY_ID`, ...) or from
the URI's query (`?endpoint_override=...&region=...`).

The commit protocol holds on both, though only a local filesystem can rename atomically:
- a data file is written under a unique name (run id and sequence number). Locally it is
  written as a hidden temporary file and renamed; on an object store an object appears whole
  only when its upload completes, so it is written under its final name directly;
- the checkpoint (and the manifest) is one small object replaced in a single write: a rename
  locally, a single PUT on an object store. It is the commit point: only what it names counts;
- on resume, files under our prefixes that no checkpoint names are deleted (an upload that was
  completed but never committed, or a temporary file).
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import posixpath
import secrets
import time
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any
from urllib.parse import urlsplit

import orjson
import pyarrow as pa
import pyarrow.fs as pafs

from exporter.errors import OutputError, UsageError

INPROGRESS_SUFFIX = ".inprogress"


class HashingFile:
    """A write-only file object that hashes and counts what passes through to `sink`."""

    def __init__(self, sink: pa.NativeFile) -> None:
        self.sink = sink
        self.digest = hashlib.sha256()
        self.size = 0
        self.closed = False

    def write(self, data: Any) -> int:
        view = memoryview(data)
        self.digest.update(view)
        self.size += view.nbytes
        self.sink.write(view)
        return view.nbytes

    def tell(self) -> int:
        return self.size

    def flush(self) -> None:
        self.sink.flush()

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self.sink.close()

    def writable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return False

    def readable(self) -> bool:
        return False


@dataclass
class OpenFile:
    """A data file being written: its final relative path and what to write to."""

    relative: str
    handle: HashingFile
    temporary: str | None  # local only: the hidden name it is written under


def storage_error(action: str, where: str, exc: OSError) -> OutputError:
    reason = exc.strerror or str(exc)
    if exc.errno == 28:  # ENOSPC
        hint = "free some space"
    elif exc.errno == 27:  # EFBIG: a file size limit (ulimit -f, or the filesystem's)
        hint = "raise the file size limit or lower --file-rows"
    else:
        hint = "check the path, its permissions or credentials"
    return OutputError(
        f"cannot {action} {where}: {reason}; {hint}, then run the same command again"
    )


class Storage:
    """A backup's root: relative '/'-separated paths below a filesystem base."""

    def __init__(self, filesystem: pafs.FileSystem, base: str, display: str) -> None:
        self.fs = filesystem
        self.base = base.rstrip("/")
        self.display = display
        self.local = isinstance(filesystem, pafs.LocalFileSystem)

    @classmethod
    def open(cls, out: str | Path, *, flag: str = "--out") -> Storage:
        """The storage `out` names; `flag` is how error messages refer to it (`--out`, DIR)."""
        text = str(out)
        scheme = urlsplit(text).scheme
        if isinstance(out, Path) or not scheme or len(scheme) == 1:  # a path (C: on Windows)
            path = Path(text).expanduser().absolute()
            return cls(pafs.LocalFileSystem(), path.as_posix(), text)
        if scheme == "s3":
            return cls._s3(text, flag)
        try:
            filesystem, base = pafs.FileSystem.from_uri(text)
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError, OSError) as exc:
            raise UsageError(
                f"{flag} {text!r} is not a path or a URI pyarrow can open: {exc}"
            ) from None
        return cls(filesystem, base, text)

    @classmethod
    def _s3(cls, uri: str, flag: str) -> Storage:
        parts = urlsplit(uri)
        if not parts.netloc:
            raise UsageError(f"{flag} {uri!r}: an S3 URI names a bucket, e.g. s3://bucket/prefix")
        options: dict[str, Any] = {}
        endpoint = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
        if endpoint:
            endpoint_parts = urlsplit(endpoint)
            options["endpoint_override"] = endpoint_parts.netloc or endpoint
            if endpoint_parts.scheme:
                options["scheme"] = endpoint_parts.scheme
        region = os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION")
        if region:
            options["region"] = region
        if parts.query:
            try:
                filesystem, base = pafs.FileSystem.from_uri(uri)
            except (pa.ArrowInvalid, OSError) as exc:
                raise UsageError(f"{flag} {uri!r}: {exc}") from None
            return cls(filesystem, base, uri.split("?", 1)[0])
        try:
            filesystem = pafs.S3FileSystem(**options)
        except (pa.ArrowInvalid, OSError) as exc:
            raise UsageError(f"{flag} {uri!r}: cannot set up S3 access: {exc}") from None
        base = (parts.netloc + parts.path).rstrip("/")
        return cls(filesystem, base, uri)

    def __str__(self) -> str:
        return self.display

    def path(self, relative: str) -> str:
        return posixpath.join(self.base, relative) if relative else self.base

    # -- writing ----------------------------------------------------------------------------

    def check_writable(self) -> None:
        probe = f".write-probe-{secrets.token_hex(4)}"
        try:
            self.fs.create_dir(self.base, recursive=True)
            with self.fs.open_output_stream(self.path(probe)) as handle:
                handle.write(b"ok")
            self.fs.delete_file(self.path(probe))
        except OSError as exc:
            raise storage_error("write to the output directory", self.display, exc) from None

    def open_data(self, relative: str) -> OpenFile:
        """Start a data file; it counts only once `finish_data` returned and a checkpoint names it."""
        directory, name = posixpath.split(relative)
        temporary = (
            posixpath.join(directory, "." + name + INPROGRESS_SUFFIX) if self.local else None
        )
        try:
            self.fs.create_dir(self.path(directory), recursive=True)
            sink = self.fs.open_output_stream(self.path(temporary or relative))
        except OSError as exc:
            raise storage_error("write", self.path(relative), exc) from None
        return OpenFile(relative, HashingFile(sink), temporary)

    def finish_data(self, data: OpenFile) -> tuple[int, str]:
        """Close, make durable and put in place; returns (bytes, sha256)."""
        try:
            data.handle.close()
            if data.temporary is not None:
                temporary = self.path(data.temporary)
                fd = os.open(temporary, os.O_RDONLY)
                try:
                    os.fsync(fd)
                finally:
                    os.close(fd)
                os.replace(temporary, self.path(data.relative))
                self._fsync_dir(posixpath.dirname(self.path(data.relative)))
        except OSError as exc:
            raise storage_error("complete", self.path(data.relative), exc) from None
        return data.handle.size, data.handle.digest.hexdigest()

    def abandon_data(self, data: OpenFile) -> None:
        with contextlib.suppress(Exception):
            data.handle.close()
        with contextlib.suppress(Exception):
            self.fs.delete_file(self.path(data.temporary or data.relative))

    def write_atomically(self, relative: str, payload: bytes) -> None:
        """Replace a small file in one step (the checkpoint and the manifest)."""
        target = self.path(relative)
        try:
            if not self.local:
                with self.fs.open_output_stream(target) as handle:  # one PUT: whole or not at all
                    handle.write(payload)
                return
            directory, name = os.path.split(target)
            os.makedirs(directory, exist_ok=True)
            temporary = os.path.join(directory, "." + name + INPROGRESS_SUFFIX)
            fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
            try:
                view = memoryview(payload)
                while view:
                    view = view[os.write(fd, view) :]
                os.fsync(fd)
            finally:
                os.close(fd)
            os.replace(temporary, target)
            self._fsync_dir(directory)
        except OSError as exc:
            if self.local:
                with contextlib.suppress(OSError):
                    os.unlink(
                        os.path.join(
                            os.path.dirname(target),
                            "." + os.path.basename(target) + INPROGRESS_SUFFIX,
                        )
                    )
            raise storage_error("write", target, exc) from None

    @staticmethod
    def _fsync_dir(directory: str) -> None:
        fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)

    # -- reading and listing ----------------------------------------------------------------

    def read_bytes(self, relative: str) -> bytes | None:
        """The file's content, or None when it does not exist."""
        target = self.path(relative)
        try:
            info = self.fs.get_file_info(target)
            if info.type == pafs.FileType.NotFound:
                return None
            with self.fs.open_input_stream(target) as handle:
                data: bytes = handle.read()
                return data
        except OSError as exc:
            raise storage_error("read", target, exc) from None

    def read_document(self, relative: str) -> bytes | None:
        """A small JSON object replaced whole by writers (checkpoint, manifest, lease), or None.

        On an object store a read that races a replacement can come back cut short (the size
        is asked before the bytes), so content that does not parse is read again, a few times,
        before it is handed on as it is (and reported as unreadable by the caller)."""
        raw = self.read_bytes(relative)
        for _ in range(0 if self.local else 4):
            if raw is None:
                return None
            try:
                orjson.loads(raw)
                return raw
            except orjson.JSONDecodeError:
                time.sleep(0.25)
                raw = self.read_bytes(relative)
        return raw

    def exists(self, relative: str) -> bool:
        try:
            return bool(self.fs.get_file_info(self.path(relative)).type != pafs.FileType.NotFound)
        except OSError as exc:
            raise storage_error("read", self.path(relative), exc) from None

    def list_files(self, directory: str) -> list[str]:
        """Relative paths of every file below `directory` (none when it does not exist)."""
        selector = pafs.FileSelector(self.path(directory), recursive=True, allow_not_found=True)
        try:
            infos = self.fs.get_file_info(selector)
        except OSError as exc:
            raise storage_error("list", self.path(directory), exc) from None
        prefix = self.base + "/"
        return sorted(
            info.path[len(prefix) :] if info.path.startswith(prefix) else info.path
            for info in infos
            if info.type == pafs.FileType.File
        )

    def delete(self, relative: str) -> None:
        try:
            self.fs.delete_file(self.path(relative))
        except FileNotFoundError:
            return
        except OSError as exc:
            raise storage_error("remove", self.path(relative), exc) from None

    def delete_dir(self, directory: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            try:
                self.fs.delete_dir(self.path(directory))
            except OSError as exc:
                if self.exists(directory):
                    raise storage_error("remove", self.path(directory), exc) from None

    def inside(self, relative: str) -> str | None:
        """`relative` normalised ('a/./b' is 'a/b'), or None when it would leave the root.

        A recorded path that is absolute, climbs with '..' or is empty must not be followed: it
        would name a file outside the backup (on an object store, another prefix or bucket).
        """
        pure = PurePosixPath(relative)
        if pure.is_absolute() or ".." in pure.parts or not pure.parts:
            return None
        return pure.as_posix()

    def root_type(self) -> pafs.FileType:
        """What the root is: Directory, File or NotFound.

        A prefix in an S3 bucket that does not exist would look like an absent directory; that is
        a UsageError instead, since nothing can be read from it (or written to it).
        """
        bucket = self.base.split("/", 1)[0]
        try:
            kind = self.fs.get_file_info(self.base).type
            missing_bucket = (
                kind == pafs.FileType.NotFound
                and isinstance(self.fs, pafs.S3FileSystem)
                and self.fs.get_file_info(bucket).type == pafs.FileType.NotFound
            )
        except OSError as exc:
            raise storage_error("read", self.display, exc) from None
        if missing_bucket:
            raise UsageError(
                f"{self.display}: bucket {bucket!r} does not exist; check the URI and "
                "AWS_ENDPOINT_URL"
            )
        return kind

    def file_type(self, relative: str) -> pafs.FileType:
        """What is at `relative`: File, Directory or NotFound."""
        try:
            return self.fs.get_file_info(self.path(relative)).type
        except OSError as exc:
            raise storage_error("read", self.path(relative), exc) from None

    def sha256(self, relative: str) -> str:
        digest = hashlib.sha256()
        with self.fs.open_input_stream(self.path(relative)) as handle:
            while chunk := handle.read(1 << 20):
                digest.update(chunk)
        return digest.hexdigest()
