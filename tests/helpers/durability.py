"""What the code asks to make durable: every `os.fsync` recorded (each still syncs)."""

from __future__ import annotations

import os
import stat

import pytest


def recorded_fsyncs(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, int, int]]:
    """Every `os.fsync` from now on, in order, as ("file" | "dir", inode, size at the fsync).
    Durability itself needs a power cut to see; that it is asked for, of what and when, does
    not."""
    calls: list[tuple[str, int, int]] = []
    real = os.fsync

    def fsync(fd: int) -> None:
        info = os.fstat(fd)
        calls.append(("dir" if stat.S_ISDIR(info.st_mode) else "file", info.st_ino, info.st_size))
        real(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    return calls
