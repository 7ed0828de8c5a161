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

On S3 the few documents a run replaces whole (`GUARDED_DOCUMENTS`) are written conditionally
where botocore is importable (`ConditionalDocuments`), so a run never overwrites one that another
run wrote since it read it. Every command opens its location through `Storage.open`, so one
`--out`/DIR means the same files for all of them; `display` never holds a credential. A read the
store fails (5xx, reset) is an `OutputError` (exit 4) naming the file; a file that is there but
is not Parquet is a `DamagedFile`.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import importlib
import os
import posixpath
import secrets
import threading
import time
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any
from urllib.parse import parse_qsl, unquote, urlsplit, urlunsplit

import orjson
import pyarrow as pa
import pyarrow.fs as pafs

from exporter.backup.location import check_location
from exporter.core.errors import BusyError, ExitCode, ExporterError, OutputError, UsageError
from exporter.core.files import fsync_directory

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


def _shown_path(text: str) -> str:
    """A local path as the user typed it, without a trailing '/' (so 'p1/' + '/_manifest.json'
    is never printed as 'p1//_manifest.json')."""
    stripped = text.rstrip("/")
    return stripped or text


def storage_error(action: str, where: str, exc: OSError) -> OutputError:
    """One line for a failed storage operation: what, where, why, and what to do."""
    reason = exc.strerror or " ".join(str(exc).split()) or type(exc).__name__
    if exc.errno == 28:  # ENOSPC
        hint = "free some space"
    elif exc.errno == 27:  # EFBIG: a file size limit (ulimit -f, or the filesystem's)
        hint = "raise the file size limit or lower --file-rows"
    elif exc.errno == 20 or (exc.errno == 17 and "non-directory" in str(exc)):
        # ENOTDIR, or Arrow's EEXIST for a folder it cannot create: a file stands where the
        # backup keeps a folder (a type's, by its name). Running again would fail the same way.
        return OutputError(
            f"cannot {action} {where}: a file stands where the backup keeps a folder; "
            "move that file out of the way (this tool did not write it), then run the same "
            "command again"
        )
    else:
        hint = "check the path, its permissions or credentials"
    return OutputError(
        f"cannot {action} {where}: {reason}; {hint}, then run the same command again"
    )


# Query parameters of an s3:// URI this tool reads itself, and which of them are secrets.
_S3_OPTIONS = {
    "region": str,
    "scheme": str,
    "endpoint_override": str,
    "access_key": str,
    "secret_key": str,
    "session_token": str,
    "tls_ca_file_path": str,
    "force_virtual_addressing": bool,
}
SECRET_QUERY_KEYS = frozenset(
    {
        "access_key",
        "secret_key",
        "session_token",
        "aws_access_key_id",
        "aws_secret_access_key",
        "aws_session_token",
        "password",
        "token",
        "sig",
        "signature",
        "x-amz-signature",
        "x-amz-credential",
        "x-amz-security-token",
        "sas",
        "account_key",
        "credential",
    }
)


def redact_uri(text: str) -> str:
    """A storage location as it may be shown: no userinfo (`s3://KEY:SECRET@bucket`), secret
    query values (`secret_key=...`) replaced by `***`, no fragment. A plain path is unchanged."""
    try:
        parts = urlsplit(text)
    except ValueError:
        return "<unparseable location>"
    if not parts.scheme or len(parts.scheme) == 1:
        return text
    secret_query = any(
        unquote(pair.partition("=")[0]).lower() in SECRET_QUERY_KEYS
        for pair in parts.query.split("&")
        if pair
    )
    if "@" not in parts.netloc and not secret_query and not parts.fragment:
        return text  # nothing to hide: shown as given (urlunsplit would turn 's3://' to 's3:')
    netloc = parts.netloc.rpartition("@")[2]
    query = "&".join(
        f"{key}=***" if unquote(key).lower() in SECRET_QUERY_KEYS else f"{key}{eq}{value}"
        for key, eq, value in (pair.partition("=") for pair in parts.query.split("&") if pair)
    )
    return urlunsplit((parts.scheme, netloc, parts.path, query, ""))


def _secrets_of(text: str) -> list[str]:
    """The secret pieces of a location (userinfo, secret query values), to scrub from errors."""
    try:
        parts = urlsplit(text)
    except ValueError:
        return [text]
    found = [v for v in (parts.username, parts.password) if v]
    found += [
        v
        for k, v in parse_qsl(parts.query, keep_blank_values=True)
        if k.lower() in SECRET_QUERY_KEYS
    ]
    return [piece for value in found for piece in {value, unquote(value)} if piece]


def _scrubbed(message: str, secrets_: list[str]) -> str:
    for secret in sorted(secrets_, key=len, reverse=True):
        message = message.replace(secret, "***")
    return " ".join(message.split())  # one line


def _refuse_prefix(flag: str, shown: str, why: str) -> UsageError:
    return UsageError(f"{flag} {shown!r}: {why}")


def _clean_key_prefix(flag: str, shown: str, path: str) -> str:
    """An object-store prefix as one canonical key prefix: '/'-separated, no '.', '..' or empty
    segment (an object store takes keys literally, so `x/../dd` and `a//b` would be written
    under one name and looked for under another), no trailing '/'."""
    segments = path.strip("/").split("/") if path.strip("/") else []
    for segment in segments:
        if segment in ("", ".", ".."):
            raise _refuse_prefix(
                flag,
                shown,
                "a prefix must not contain '.', '..' or an empty segment ('//'): object keys are "
                "taken literally; write the prefix out plainly, e.g. s3://bucket/backups/acme",
            )
    return "/".join(segments)


def inside_root(relative: object) -> str | None:
    """`relative` normalised ('a/./b' is 'a/b'), or None when it is not a plain path below the
    root (not a string, absolute, climbing with '..', empty, with '//', a NUL or a backslash)."""
    if not isinstance(relative, str) or "\x00" in relative or "\\" in relative:
        return None
    pure = PurePosixPath(relative)
    if pure.is_absolute() or ".." in pure.parts or not pure.parts or "//" in relative:
        return None
    return pure.as_posix()


class Storage:
    """A backup's root: relative '/'-separated paths below a filesystem base."""

    def __init__(self, filesystem: pafs.FileSystem, base: str, display: str) -> None:
        self.fs = filesystem
        self.base = base.rstrip("/") or "/"
        self.display = redact_uri(display)
        self.local = isinstance(filesystem, pafs.LocalFileSystem)
        self.s3: dict[str, Any] | None = None  # how to reach an S3 store (conditional writes)
        self.flag = "--out"  # how messages name the location
        self._root_checked = self.local

    @classmethod
    def open(cls, out: str | Path, *, flag: str = "--out") -> Storage:
        """The storage `out` names; `flag` is how error messages refer to it (`--out`, DIR).

        Every command opens its location here, so a location means the same objects whichever
        command is given it: a local path is made absolute and normalised ('x/../dd' is 'dd',
        a trailing '/' is dropped); an object-store prefix with '.', '..', '//' or a '#' is
        refused; a prefix that is an object (not a "directory") is refused."""
        text = str(out)
        try:  # the rules `export --out` checks (an empty location, ~nouser, a bad URI, ...)
            check_location(text)
        except ValueError as exc:
            raise UsageError(f"{flag}: {exc}") from None
        shown = redact_uri(text)
        scheme = urlsplit(text).scheme if "://" in text or text.startswith("file:") else ""
        if isinstance(out, Path) or not scheme or len(scheme) == 1:  # a path (C: on Windows)
            path = os.path.normpath(Path(text).expanduser().absolute())
            return cls(pafs.LocalFileSystem(), Path(path).as_posix(), _shown_path(text))
        parts = urlsplit(text)
        if parts.fragment or text.endswith("#"):
            raise _refuse_prefix(
                flag, shown, "a '#' starts a URI fragment, which names no object; remove it"
            )
        if scheme == "s3":
            return cls._s3(text, flag)
        if scheme == "file":
            if parts.netloc not in ("", "localhost") or parts.query:
                raise _refuse_prefix(flag, shown, "a file:// URI names a local path: file:///dir")
            # `file:dir` (no slashes, which RFC 8089 does not allow but people type) is read as
            # the path `dir`, made absolute like any local path, so it names one folder and is
            # shown as one (`file://dir` would read as a host named dir).
            path = os.path.normpath(Path(unquote(parts.path) or "/").absolute())
            return cls(pafs.LocalFileSystem(), Path(path).as_posix(), f"file://{path}")
        secrets_ = _secrets_of(text)
        try:
            filesystem, base = pafs.FileSystem.from_uri(text)
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError, OSError, ValueError) as exc:
            raise UsageError(
                f"{flag} {shown!r} is not a path or a URI pyarrow can open: "
                + _scrubbed(str(exc), secrets_)
            ) from None
        return cls(filesystem, base, text.rstrip("/"))

    @classmethod
    def _s3(cls, uri: str, flag: str) -> Storage:
        shown = redact_uri(uri)
        secrets_ = _secrets_of(uri)
        parts = urlsplit(uri)
        bucket = parts.hostname or ""
        if not bucket:
            raise UsageError(f"{flag} {shown!r}: an S3 URI names a bucket, e.g. s3://bucket/prefix")
        if parts.port is not None:
            raise _refuse_prefix(
                flag, shown, "an S3 URI names a bucket, not a server: set AWS_ENDPOINT_URL"
            )
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
        if parts.username or parts.password:
            options["access_key"] = unquote(parts.username or "")
            options["secret_key"] = unquote(parts.password or "")
        for key, value in parse_qsl(parts.query, keep_blank_values=True):
            kind = _S3_OPTIONS.get(key)
            if kind is None:
                raise _refuse_prefix(
                    flag,
                    shown,
                    f"unknown query parameter {key!r}; known: {', '.join(sorted(_S3_OPTIONS))}",
                )
            if kind is bool:
                if value.lower() not in ("true", "false", "1", "0"):
                    raise _refuse_prefix(flag, shown, f"{key} takes true or false")
                options[key] = value.lower() in ("true", "1")
            else:
                options[key] = value
        if ("access_key" in options) != ("secret_key" in options):
            raise _refuse_prefix(flag, shown, "give both the access key and the secret key")
        prefix = _clean_key_prefix(flag, shown, parts.path)
        try:
            filesystem = pafs.S3FileSystem(**options)
        except (pa.ArrowInvalid, OSError, ValueError, TypeError) as exc:
            raise UsageError(
                f"{flag} {shown!r}: cannot set up S3 access: {_scrubbed(str(exc), secrets_)}"
            ) from None
        base = f"{bucket}/{prefix}" if prefix else bucket
        storage = cls(filesystem, base, f"s3://{base}")  # where, not how: no query shown
        storage.s3 = {"bucket": bucket, "prefix": prefix, **options}
        storage.flag = flag
        return storage

    def _check_root(self) -> None:
        """Before the first access to an object store: an object named like the prefix
        (`s3://b/p1` beside `s3://b/p1/...`) would make one command read the object and another
        the prefix, so every command refuses it alike."""
        if self._root_checked:
            return
        self._root_checked = True
        if "/" not in self.base:
            return  # a whole bucket
        try:
            kind = self.fs.get_file_info(self.base).type
        except OSError as exc:
            self._root_checked = False
            raise storage_error("read", self.display, exc) from None
        if kind == pafs.FileType.File:
            self._root_checked = False
            raise UsageError(
                f"{self.flag} {self.display}: an object of that very name exists, so the prefix "
                "is ambiguous; choose another prefix (or remove that object if it is not needed)"
            )

    def __str__(self) -> str:
        return self.display

    def path(self, relative: str) -> str:
        return posixpath.join(self.base, relative) if relative else self.base

    def shown(self, relative: str) -> str:
        """`relative` as a user may be shown it: under the redacted location."""
        return posixpath.join(self.display, relative) if relative else self.display

    # -- writing ----------------------------------------------------------------------------

    def check_writable(self) -> None:
        """Write and remove a probe object; the probe is removed even when the check fails."""
        self._check_root()
        probe = self.path(f".write-probe-{secrets.token_hex(4)}")
        try:
            try:
                self.fs.create_dir(self.base, recursive=True)
                with self.fs.open_output_stream(probe) as handle:
                    handle.write(b"ok")
            finally:
                self._delete_with_retries(probe)
        except OSError as exc:
            raise storage_error("write to the output directory", self.display, exc) from None

    def _delete_with_retries(self, target: str, attempts: int = 5) -> None:
        """Delete a file this run wrote; a passing store error is retried (OSError at the end)."""
        for attempt in range(attempts):
            try:
                self.fs.delete_file(target)
                return
            except FileNotFoundError:
                return
            except OSError:
                if attempt == attempts - 1:
                    raise
                time.sleep(0.1 * 2**attempt)

    def open_data(self, relative: str) -> OpenFile:
        """Start a data file; it counts only once `finish_data` returned and a checkpoint names it."""
        self._check_root()
        directory, name = posixpath.split(relative)
        temporary = (
            posixpath.join(directory, "." + name + INPROGRESS_SUFFIX) if self.local else None
        )
        try:
            self.fs.create_dir(self.path(directory), recursive=True)
            sink = self.fs.open_output_stream(self.path(temporary or relative))
        except OSError as exc:
            raise storage_error("write", self.shown(relative), exc) from None
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
                fsync_directory(posixpath.dirname(self.path(data.relative)))
        except OSError as exc:
            raise storage_error("complete", self.shown(data.relative), exc) from None
        return data.handle.size, data.handle.digest.hexdigest()

    def abandon_data(self, data: OpenFile) -> None:
        with contextlib.suppress(Exception):
            data.handle.close()
        with contextlib.suppress(Exception):
            self.fs.delete_file(self.path(data.temporary or data.relative))

    def write_atomically(self, relative: str, payload: bytes) -> None:
        """Replace a small file in one step (the checkpoint, the manifest, the lease).

        For the documents in `GUARDED_DOCUMENTS` on an S3 store reachable by botocore, the PUT
        is conditional on what this process last read or wrote there: created only if absent
        (If-None-Match), replaced only if unchanged (If-Match). When another run wrote it in
        between, `DocumentChanged` (exit 7) is raised and nothing is written."""
        self._check_root()
        target = self.path(relative)
        if not self.local and self._conditional is not None and relative in GUARDED_DOCUMENTS:
            self._conditional.put(relative, payload, self.shown(relative))
            return
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
            fsync_directory(directory)
        except OSError as exc:
            if self.local:
                with contextlib.suppress(OSError):
                    os.unlink(
                        os.path.join(
                            os.path.dirname(target),
                            "." + os.path.basename(target) + INPROGRESS_SUFFIX,
                        )
                    )
            raise storage_error("write", self.shown(relative), exc) from None

    @property
    def conditional_writes(self) -> bool:
        """Whether guarded documents are written conditionally (S3 with botocore importable)."""
        return not self.local and self._conditional is not None

    @functools.cached_property
    def _conditional(self) -> ConditionalDocuments | None:
        if self.s3 is None:
            return None
        return ConditionalDocuments.connect(self.s3)

    # -- reading and listing ----------------------------------------------------------------

    def read_bytes(self, relative: str) -> bytes | None:
        """The file's content, or None when it does not exist."""
        self._check_root()
        target = self.path(relative)
        try:
            info = self.fs.get_file_info(target)
            if info.type == pafs.FileType.NotFound:
                return None
            with self.fs.open_input_stream(target) as handle:
                data: bytes = handle.read()
                return data
        except OSError as exc:
            raise storage_error("read", self.shown(relative), exc) from None

    def read_document(self, relative: str) -> bytes | None:
        """A small JSON object replaced whole by writers (checkpoint, manifest, lease), or None.

        On S3 through botocore it is one GET (whole or nothing), and its version is remembered
        for the next conditional write. Through pyarrow a read that races a replacement can
        come back cut short (the size is asked before the bytes), so content that does not
        parse is read again, a few times, before it is handed on as it is (and reported as
        unreadable by the caller)."""
        if not self.local and self._conditional is not None and relative in GUARDED_DOCUMENTS:
            self._check_root()
            return self._conditional.get(relative, self.shown(relative))
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
        self._check_root()
        try:
            return bool(self.fs.get_file_info(self.path(relative)).type != pafs.FileType.NotFound)
        except OSError as exc:
            raise storage_error("read", self.shown(relative), exc) from None

    def list_files(self, directory: str) -> list[str]:
        """Relative paths of every file below `directory` (none when it does not exist)."""
        self._check_root()
        selector = pafs.FileSelector(self.path(directory), recursive=True, allow_not_found=True)
        try:
            infos = self.fs.get_file_info(selector)
        except OSError as exc:
            raise storage_error("list", self.shown(directory), exc) from None
        prefix = self.base.rstrip("/") + "/"
        return sorted(
            info.path[len(prefix) :] if info.path.startswith(prefix) else info.path
            for info in infos
            if info.type == pafs.FileType.File
        )

    def delete(self, relative: str) -> None:
        """Delete one file (retried over passing store errors); absent is fine."""
        self._check_root()
        if not self.local and self._conditional is not None and relative in GUARDED_DOCUMENTS:
            self._conditional.forget(relative)
        try:
            self._delete_with_retries(self.path(relative))
        except OSError as exc:
            raise storage_error("remove", self.shown(relative), exc) from None

    def delete_dir(self, directory: str) -> None:
        self._check_root()
        with contextlib.suppress(FileNotFoundError):
            try:
                self.fs.delete_dir(self.path(directory))
            except OSError as exc:
                if self.exists(directory):
                    raise storage_error("remove", self.shown(directory), exc) from None

    def inside(self, relative: str) -> str | None:
        """`relative` normalised ('a/./b' is 'a/b'), or None when it would leave the root.

        A recorded path that is absolute, climbs with '..', is empty or holds a NUL or a
        backslash must not be followed: it would name a file outside the backup (on an object
        store, another prefix or bucket), or a different file on another system.
        """
        return inside_root(relative)

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
        self._check_root()
        return kind

    def file_type(self, relative: str) -> pafs.FileType:
        """What is at `relative`: File, Directory or NotFound."""
        self._check_root()
        try:
            return self.fs.get_file_info(self.path(relative)).type
        except OSError as exc:
            raise storage_error("read", self.shown(relative), exc) from None

    def sha256(self, relative: str) -> str:
        """The file's SHA-256, streamed; OutputError when the store fails to answer."""
        self._check_root()
        digest = hashlib.sha256()
        try:
            with self.fs.open_input_stream(self.path(relative)) as handle:
                while chunk := handle.read(1 << 20):
                    digest.update(chunk)
        except OSError as exc:
            raise storage_error("read", self.shown(relative), exc) from None
        return digest.hexdigest()


class DamagedFile(ExporterError):
    """A file the backup names is there but is not a readable Parquet file (a data error:
    exit 1; `verify` lists every such file)."""

    exit_code = ExitCode.FAILED

    def __init__(self, where: str, exc: BaseException) -> None:
        reason = " ".join(str(exc).split())[:200] or type(exc).__name__
        super().__init__(
            f"{where} is damaged (not a readable Parquet file: {reason}); run `exporter verify` "
            "on the backup to list every damaged file, and restore it from a copy"
        )


# Small documents a run replaces whole, written conditionally on an object store.
GUARDED_DOCUMENTS = frozenset({"_checkpoint.json", "_manifest.json", "_lock.json"})


class DocumentChanged(BusyError):
    """A guarded document changed since this process last read or wrote it: another run is
    writing the same backup. Nothing was written."""


class ConditionalDocuments:
    """Guarded documents on S3 through botocore: conditional PUTs, versions remembered by ETag.

    pyarrow's S3FileSystem sends no If-Match / If-None-Match, so these few small objects go
    through botocore, when it is importable (it comes with boto3 and the AWS CLI; it is not a
    dependency of this package). Without it they are written unconditionally, as data is.

    A PUT whose answer was lost may have been applied: a 412 is therefore checked by reading
    the object back, and the write counts as done when the object holds our very bytes."""

    def __init__(self, client: Any, bucket: str, prefix: str) -> None:
        self.client = client
        self.bucket = bucket
        self.prefix = prefix
        self.versions: dict[str, str | None] = {}  # relative -> ETag, None: known absent
        self._lock = threading.Lock()

    @classmethod
    def connect(cls, options: dict[str, Any]) -> ConditionalDocuments | None:
        try:
            # Optional, and untyped: imported by name, only for S3 conditional writes.
            botocore_config = importlib.import_module("botocore.config")
            botocore_session = importlib.import_module("botocore.session")
        except ImportError:
            return None
        session = botocore_session.get_session()
        endpoint = options.get("endpoint_override")
        scheme = options.get("scheme") or "https"
        config = botocore_config.Config(
            retries={"mode": "standard", "max_attempts": 4},
            connect_timeout=10,
            read_timeout=30,
            s3={
                "addressing_style": "virtual" if options.get("force_virtual_addressing") else "path"
            }
            if endpoint
            else {},
        )
        client = session.create_client(
            "s3",
            region_name=options.get("region") or os.environ.get("AWS_REGION") or "us-east-1",
            endpoint_url=f"{scheme}://{endpoint}" if endpoint else None,
            aws_access_key_id=options.get("access_key"),
            aws_secret_access_key=options.get("secret_key"),
            aws_session_token=options.get("session_token"),
            verify=options.get("tls_ca_file_path"),
            config=config,
        )
        members = client.meta.service_model.operation_model("PutObject").input_shape.members
        if "IfMatch" not in members or "IfNoneMatch" not in members:
            return None  # a botocore too old to send them (before 1.35.x)
        return cls(client, options["bucket"], options["prefix"])

    def _key(self, relative: str) -> str:
        return f"{self.prefix}/{relative}" if self.prefix else relative

    def _fail(self, action: str, shown: str, exc: Exception) -> OutputError:
        reason = " ".join(str(exc).split()) or type(exc).__name__
        return OutputError(
            f"cannot {action} {shown}: {reason}; check the store and its credentials, then run "
            "the same command again"
        )

    def get(self, relative: str, shown: str) -> bytes | None:
        errors = importlib.import_module("botocore.exceptions")
        BotoCoreError, ClientError = errors.BotoCoreError, errors.ClientError

        try:
            answer = self.client.get_object(Bucket=self.bucket, Key=self._key(relative))
            body: bytes = answer["Body"].read()
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") in ("NoSuchKey", "404"):
                with self._lock:
                    self.versions[relative] = None
                return None
            raise self._fail("read", shown, exc) from None
        except BotoCoreError as exc:
            raise self._fail("read", shown, exc) from None
        with self._lock:
            self.versions[relative] = str(answer["ETag"])
        return body

    def forget(self, relative: str) -> None:
        with self._lock:
            self.versions[relative] = None  # about to be deleted: known absent

    def put(self, relative: str, payload: bytes, shown: str) -> None:
        errors = importlib.import_module("botocore.exceptions")
        BotoCoreError, ClientError = errors.BotoCoreError, errors.ClientError

        with self._lock:
            known = relative in self.versions
            version = self.versions.get(relative)
        condition: dict[str, str] = {}
        if known:
            condition = {"IfNoneMatch": "*"} if version is None else {"IfMatch": version}
        try:
            answer = self.client.put_object(
                Bucket=self.bucket, Key=self._key(relative), Body=payload, **condition
            )
        except ClientError as exc:
            status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
            code = exc.response.get("Error", {}).get("Code")
            changed = status in (409, 412) or code in (
                "PreconditionFailed",
                "ConditionalRequestConflict",
            )
            deleted = "IfMatch" in condition and code in ("NoSuchKey", "404")  # removed since
            if not (changed or deleted):
                raise self._fail("write", shown, exc) from None
            if self.get(relative, shown) == payload:
                return  # our own PUT, applied, whose answer was lost (the retry met it)
            raise DocumentChanged(
                f"{shown} was changed by another run since this one read it: two runs are "
                "writing this backup at once; stopped without writing. Let the other run finish"
            ) from None
        except BotoCoreError as exc:
            raise self._fail("write", shown, exc) from None
        with self._lock:
            self.versions[relative] = str(answer["ETag"])
