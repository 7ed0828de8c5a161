"""Committed files that are damaged (missing, cut short, altered): how they are found, proved and named.

A committed file is named by a checkpoint with its size and sha256, so damage is provable:
1. missing, or of another size than recorded: found by one listing, cheap enough for every run;
2. the same size but other bytes (a flipped bit): found by its sha256, which `--repair` reads
   for every committed file, and which a read that fails is checked against before the file is
   called damaged (a store that fails reads is not damage).
Every message names the file and says how to recover: `--repair` sets it aside and fetches its
records again (see `repair`).
"""

from __future__ import annotations

from dataclasses import dataclass

import pyarrow as pa
import pyarrow.fs as pafs

from exporter.backup.sink import DataFile
from exporter.backup.storage import Storage, storage_error
from exporter.core.errors import ExporterError, OutputError


class DamagedFileError(OutputError):
    """A committed file is missing or damaged; `--repair` recovers it."""


@dataclass(frozen=True)
class Damage:
    file: DataFile
    reason: str  # "missing", "cut short: 120 of 4,096 bytes", "its content differs (sha256)"


def shown(storage: Storage, relative: str) -> str:
    return f"{storage.display.rstrip('/')}/{relative}"


def inspect(storage: Storage, files: list[DataFile], *, thorough: bool) -> list[Damage]:
    """The damaged ones of `files`: missing or of another size; with `thorough`, also those
    whose sha256 differs from the recorded one (every file is read)."""
    if not files:
        return []
    try:
        infos = storage.fs.get_file_info([storage.path(f.path) for f in files])
    except OSError as exc:
        raise storage_error("list", storage.display, exc) from None
    found: list[Damage] = []
    for data_file, info in zip(files, infos, strict=True):
        if info.type == pafs.FileType.NotFound:
            found.append(Damage(data_file, "missing"))
        elif info.type != pafs.FileType.File:
            found.append(Damage(data_file, "not a file"))
        elif info.size != data_file.bytes:
            found.append(
                Damage(
                    data_file, f"{info.size:,} bytes instead of the {data_file.bytes:,} recorded"
                )
            )
        elif thorough:
            try:
                digest = storage.sha256(data_file.path)
            except OSError as exc:
                raise storage_error("read", storage.path(data_file.path), exc) from None
            if digest != data_file.sha256:
                found.append(Damage(data_file, "its content differs from the recorded sha256"))
    return found


REPAIR_ADVICE = "Run the same command with --repair"  # what `export` says; `compact` says its own


def damaged_error(
    storage: Storage, damage: list[Damage], advice: str = REPAIR_ADVICE
) -> DamagedFileError:
    """One line: the first damaged file, how many more, and how to recover."""
    first = damage[0]
    more = f" (and {len(damage) - 1} more committed file(s))" if len(damage) > 1 else ""
    held = (
        f" ({first.file.rows:,} {first.file.type_name} records in this one)"
        if first.file.rows
        else ""
    )
    return DamagedFileError(
        f"{shown(storage, first.file.path)} is damaged: {first.reason}{more}; the backup's "
        f"files were not changed. {advice}: it sets damaged files aside (renamed "
        f"*.damaged-<run id>) and fetches their records again{held}"
    )


def read_failure(
    storage: Storage,
    relative: str,
    exc: BaseException,
    expected: DataFile | None,
    advice: str = REPAIR_ADVICE,
) -> ExporterError:
    """What a failed read of the committed file `relative` means, as one line.

    Damage only when proved (missing, another size, another sha256, or bytes pyarrow cannot read
    as Parquet); a read the store itself refused stays a storage error."""
    if isinstance(exc, ExporterError):
        return exc
    try:
        info = storage.fs.get_file_info(storage.path(relative))
    except OSError as listing:
        return storage_error("read", storage.path(relative), listing)
    data_file = expected or DataFile(relative, "", 0, -1, "", None, None)
    if info.type == pafs.FileType.NotFound:
        return damaged_error(storage, [Damage(data_file, "missing")], advice)
    if expected is not None and info.size != expected.bytes:
        reason = f"{info.size:,} bytes instead of the {expected.bytes:,} recorded"
        return damaged_error(storage, [Damage(data_file, reason)], advice)
    if expected is not None:
        try:
            same = storage.sha256(relative) == expected.sha256
        except OSError as reading:
            return storage_error("read", storage.path(relative), reading)
        if not same:
            reason = "its content differs from the recorded sha256"
            return damaged_error(storage, [Damage(data_file, reason)], advice)
        if isinstance(exc, OSError):
            return storage_error("read", storage.path(relative), exc)
    if isinstance(exc, pa.ArrowInvalid | pa.ArrowException | ValueError | OSError):
        text = " ".join(str(exc).split())[:160]
        return DamagedFileError(
            f"{shown(storage, relative)} cannot be read as Parquet ({text}); the backup's files "
            f"were not changed. If it is damaged: {advice[0].lower()}{advice[1:]}: it checks "
            "every committed file against its recorded sha256, sets damaged ones aside and "
            "fetches their records again"
        )
    raise exc
