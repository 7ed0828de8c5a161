"""The run's checkpoint: which files are committed and how far each partition is, written atomically.

Invariant: a checkpoint names only files already renamed into place (see `sink`), and a
partition's `done_through` is an id such that every record of the partition with an id up to
it is in those files. So after a kill at any instant, the newest checkpoint on disk describes
complete data, and a resumed run fetches exactly what it does not cover.

The file is versioned JSON, written to a temporary name, fsynced, renamed over the old one, and
its directory fsynced. It holds no secret: parameters are recorded without tokens.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypedDict, cast

import orjson

from exporter.backup.detail import ResourceDetail
from exporter.backup.sink import DataFile, FileEntry
from exporter.backup.storage import Storage, inside_root
from exporter.core.errors import ExporterError, UsageError

CHECKPOINT_NAME = "_checkpoint.json"
VERSION = 1


@dataclass
class PartitionState:
    """An inclusive id range of one collection and how much of it is committed."""

    key: int
    low: int
    high: int
    done_through: int  # every record with low <= id <= done_through is committed
    finished: bool = False

    @property
    def resume_from(self) -> int:
        return max(self.low, self.done_through + 1)

    def to_json(self) -> list[Any]:
        return [self.key, self.low, self.high, self.done_through, self.finished]

    @classmethod
    def from_json(cls, data: list[Any]) -> PartitionState:
        key, low, high, done, finished = data
        return cls(int(key), int(low), int(high), int(done), bool(finished))


@dataclass
class ResourceState:
    type_name: str
    directory: str
    planned: bool = False  # partitions were planned (the probe ran)
    finished: bool = False
    partitions: list[PartitionState] = field(default_factory=list)
    files: list[DataFile] = field(default_factory=list)
    next_sequence: int = 1
    extra_values: int = 0  # values kept in `_extra` (unknown or ill-typed)
    detail: ResourceDetail = field(default_factory=ResourceDetail)  # walk progress, findings

    @property
    def rows(self) -> int:
        return sum(f.rows for f in self.files)

    def to_json(self) -> dict[str, Any]:
        return {
            "type": self.type_name,
            "directory": self.directory,
            "planned": self.planned,
            "finished": self.finished,
            "partitions": [p.to_json() for p in self.partitions],
            "files": [f.to_json() for f in self.files],
            "next_sequence": self.next_sequence,
            "extra_values": self.extra_values,
            "detail": self.detail.to_json(),
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> ResourceState:
        directory = checked_directory(data["directory"])
        return cls(
            type_name=str(data["type"]),
            directory=directory,
            planned=bool(data["planned"]),
            finished=bool(data["finished"]),
            partitions=[PartitionState.from_json(p) for p in data["partitions"]],
            files=[checked_file(DataFile.from_json(f), directory) for f in data["files"]],
            next_sequence=int(data["next_sequence"]),
            extra_values=int(data.get("extra_values", 0)),
            detail=ResourceDetail.from_json(data.get("detail")),
        )


class RunEntry(TypedDict):
    """A finished run as a later one records it: one of the manifest's `runs`
    (`RunState.summary()` without its files). Entries written by older releases may lack keys."""

    run_id: str
    kind: str  # full | incremental
    started_at: str
    finished_at: str | None
    window_start: str | None
    window_end: str | None
    parameters: dict[str, Any]
    tool_version: str | None
    rows: dict[str, int]  # per type


class HistoryEntry(RunEntry):
    """A finished run as the checkpoint's `history` records it: with its files (`checked_history`
    makes sure of those)."""

    files: list[FileEntry]


@dataclass
class RunState:
    run_id: str
    started_at: str
    source: str  # base URL without credentials
    parameters: dict[str, Any]
    status: str = "running"  # running | complete
    resources: dict[str, ResourceState] = field(default_factory=dict)
    finished_at: str | None = None
    kind: str = "full"  # full | incremental
    window_start: str | None = None  # incremental: records updated at or after this
    window_end: str | None = None  # the API's clock when the run began: the next run's mark
    phase: str = "crawl"  # crawl | deltas | deletes | done
    # Earlier finished runs in this directory, oldest first, each with its files.
    history: list[HistoryEntry] = field(default_factory=list)
    tool_version: str | None = None  # the exporter that started the run
    account: dict[str, Any] | None = None  # whose backup this is: `account.Account.to_json()`

    def to_json(self) -> dict[str, Any]:
        return {
            "version": VERSION,
            "run_id": self.run_id,
            "status": self.status,
            "started_at": self.started_at,
            "finished_at": self.finished_at,
            "source": self.source,
            "parameters": self.parameters,
            "resources": {k: v.to_json() for k, v in self.resources.items()},
            "kind": self.kind,
            "window_start": self.window_start,
            "window_end": self.window_end,
            "phase": self.phase,
            "history": self.history,
            "tool_version": self.tool_version,
            "account": self.account,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> RunState:
        return cls(
            run_id=str(data["run_id"]),
            started_at=str(data["started_at"]),
            source=str(data["source"]),
            parameters=dict(data["parameters"]),
            status=str(data["status"]),
            resources={k: ResourceState.from_json(v) for k, v in data["resources"].items()},
            finished_at=data.get("finished_at"),
            kind=str(data.get("kind", "full")),
            window_start=data.get("window_start"),
            window_end=data.get("window_end"),
            phase=str(data.get("phase", "crawl")),
            history=checked_history(data.get("history", [])),
            tool_version=data.get("tool_version"),
            account=data["account"] if isinstance(data.get("account"), dict) else None,
        )

    def committed_files(self) -> list[DataFile]:
        """This run's committed files and every earlier run's."""
        return [*self.history_files(), *(f for r in self.resources.values() for f in r.files)]

    def history_files(self) -> list[DataFile]:
        return [DataFile.from_json(f) for run in self.history for f in run["files"]]

    def summary(self) -> HistoryEntry:
        """This run as one entry of a later run's `history`."""
        return {
            "run_id": self.run_id,
            "kind": self.kind,
            "started_at": self.started_at,
            "finished_at": self.finished_at,
            "window_start": self.window_start,
            "window_end": self.window_end,
            "parameters": self.parameters,
            "tool_version": self.tool_version,
            "rows": {k: v.rows for k, v in self.resources.items()},
            "files": [f.to_json() for r in self.resources.values() for f in r.files],
        }


# What an export names its directories: `<collection>`, `<collection>/run=<id>`, `tombstones/run=<id>`.
_DIRECTORY = re.compile(r"[A-Za-z]+(/run=[0-9A-Za-z-]+)?")
_PART_FILE = re.compile(r"part-[0-9A-Za-z-]+\.parquet")


class UnsafePath(ValueError):
    """A path in a state file that would lead outside the backup (or is not one we write)."""


def checked_directory(value: object) -> str:
    """A resource's recorded directory, if it is one an export writes; else UnsafePath."""
    if not isinstance(value, str) or inside_root(value) != value or not _DIRECTORY.fullmatch(value):
        raise UnsafePath(f"directory {value!r}")
    return value


def checked_file(data_file: DataFile, directory: str | None = None) -> DataFile:
    """A recorded part file, if it is a part file below its directory; else UnsafePath."""
    path = data_file.path
    folder, _, name = path.rpartition("/")
    if (
        inside_root(path) != path
        or not _PART_FILE.fullmatch(name)
        or not _DIRECTORY.fullmatch(folder)
        or (directory is not None and folder != directory)
    ):
        raise UnsafePath(f"file {path!r}")
    return data_file


def checked_history(value: object) -> list[HistoryEntry]:
    """A recorded history, if each entry is a run with a list of part files; else ValueError."""
    if not isinstance(value, list):
        raise ValueError("history is not a list")
    for run in value:
        if not isinstance(run, dict) or not isinstance(run.get("files"), list):
            raise ValueError("a history entry without files")
        for entry in run["files"]:
            checked_file(DataFile.from_json(entry))
    return cast(list[HistoryEntry], list(value))


class UnreadableCheckpoint(UsageError):
    """The checkpoint is there but cannot be used; `reason` says why, without advice (a caller
    that knows more, such as an export beside a finished backup's manifest, gives its own)."""

    def __init__(self, message: str, reason: str) -> None:
        super().__init__(message)
        self.reason = reason


def encode(state: RunState) -> bytes:
    return orjson.dumps(state.to_json(), option=orjson.OPT_INDENT_2 | orjson.OPT_SORT_KEYS)


def save(storage: Storage, state: RunState) -> None:
    """Replace the checkpoint atomically: the commit point of a run."""
    storage.write_atomically(CHECKPOINT_NAME, encode(state))


def load(where: Storage | Path | str) -> RunState | None:
    """The checkpoint in `where`, or None when there is none."""
    storage = where if isinstance(where, Storage) else Storage.open(where)
    raw = storage.read_document(CHECKPOINT_NAME)
    if raw is None:
        return None
    path = storage.path(CHECKPOINT_NAME)
    try:
        data = orjson.loads(raw)
        if not isinstance(data, dict):
            raise ValueError("not an object")
        version = data.get("version")
        if version != VERSION:
            raise UsageError(
                f"{path} has checkpoint version {version!r}; this exporter reads version "
                f"{VERSION}. Use --restart to discard it"
            )
        return RunState.from_json(data)
    except UnsafePath as exc:
        reason = f"{storage.shown(CHECKPOINT_NAME)} names {exc}"
        raise UnreadableCheckpoint(
            f"{reason}, which is not a path this exporter writes inside the backup: the "
            "checkpoint was edited or damaged, so nothing was written. Put back "
            f"{CHECKPOINT_NAME} from a copy of the backup",
            reason,
        ) from None
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        reason = (
            f"{storage.shown(CHECKPOINT_NAME)} is not a readable checkpoint ({type(exc).__name__})"
        )
        beside = _beside_a_manifest(storage)
        if beside is True:  # --restart would delete a finished backup
            raise UnreadableCheckpoint(
                f"{reason}, beside a finished backup's _manifest.json: do not use --restart, "
                "which deletes the backup; put back the checkpoint from a copy of the backup "
                "(the manifest's files stay intact)",
                reason,
            ) from None
        if beside is None:  # the store could not say: never advise what may delete a backup
            raise UnreadableCheckpoint(
                f"{reason}, and the store could not say whether a finished backup's "
                "_manifest.json is beside it: look before using --restart, which deletes the "
                "backup; with a manifest, put back the checkpoint from a copy of the backup",
                reason,
            ) from None
        raise UnreadableCheckpoint(
            f"{path} is not a readable checkpoint ({type(exc).__name__}); "
            "use --restart to discard it and start over",
            reason,
        ) from None


def _beside_a_manifest(storage: Storage) -> bool | None:
    """Is a finished backup's manifest beside the checkpoint? None when the store cannot say."""
    try:
        return storage.exists("_manifest.json")  # manifest.MANIFEST_NAME (it imports us)
    except ExporterError:
        return None
