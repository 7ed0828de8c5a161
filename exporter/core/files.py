"""Local files: small ones the user points at (config, fleet, secrets; bounded, never a hang), and a folder's fsync."""

# A path given for a config or a secret can name anything: a FIFO (a read blocks until a writer
# comes, in the event loop's thread, where no signal handler can run), /dev/zero (a read never
# ends and takes all memory), a directory, a socket. So: `stat` first and refuse what is not a
# regular file before opening it (opening some devices has effects of its own); open with
# O_NONBLOCK, so a file swapped for a FIFO between the two calls cannot block the open either;
# `fstat` the descriptor (what is read is what was checked); read at most `limit` bytes.
# Symbolic links are followed on purpose: mounted secrets (Kubernetes, Docker) are links.

from __future__ import annotations

import os
import stat
from pathlib import Path

from exporter.core.errors import UsageError

MAX_CONFIG_BYTES = 1 << 20  # a config or fleet file: a megabyte is thousands of accounts
MAX_SECRET_BYTES = 64 << 10  # a token, a client secret, a refresh-token store


def read_small_file(path: Path | str, what: str, limit: int = MAX_CONFIG_BYTES) -> str:
    """The UTF-8 text of the regular file at `path`, at most `limit` bytes.

    `what` names the file in errors ("config file", "the token file"). A missing file raises
    `FileNotFoundError` (each caller says what a missing file means); anything else that keeps
    it from being read is one `UsageError`, which never quotes the file's content."""
    shown = f"{what} {path}"
    try:
        mode = os.stat(path).st_mode
        if not stat.S_ISREG(mode):
            raise UsageError(_not_regular(shown, mode))
        flags = os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_NOCTTY", 0) | os.O_CLOEXEC
        fd = os.open(path, flags)
    except FileNotFoundError:
        raise
    except OSError as exc:
        raise UsageError(f"cannot read {shown}: {exc.strerror or exc}") from None
    try:
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            raise UsageError(_not_regular(shown, mode))
        chunks: list[bytes] = []
        size = 0
        while size <= limit:
            chunk = os.read(fd, limit + 1 - size)
            if not chunk:
                break
            chunks.append(chunk)
            size += len(chunk)
    except OSError as exc:
        raise UsageError(f"cannot read {shown}: {exc.strerror or exc}") from None
    finally:
        os.close(fd)
    if size > limit:
        raise UsageError(f"{shown} is larger than {limit:,} bytes; is it the right file?")
    try:
        return b"".join(chunks).decode("utf-8")
    except UnicodeDecodeError:
        raise UsageError(f"{shown} is not UTF-8 text") from None


def _not_regular(shown: str, mode: int) -> str:
    kind = (
        "a directory"
        if stat.S_ISDIR(mode)
        else "a FIFO"
        if stat.S_ISFIFO(mode)
        else "a device"
        if stat.S_ISCHR(mode) or stat.S_ISBLK(mode)
        else "a socket"
        if stat.S_ISSOCK(mode)
        else "something else"
    )
    return f"{shown} is {kind}, not a regular file; give the path of a file"


def fsync_directory(path: Path | str) -> None:
    """Make the names in folder `path` durable: after a file is renamed or created in it, its
    content's fsync does not cover the folder entry, and a power cut could bring the old name
    (or none) back."""
    descriptor = os.open(path, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)
