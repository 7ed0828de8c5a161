"""The restore journal: an append-only, fsynced JSON-lines record of every write, before it is sent and once it is answered.

The API has no idempotency key, so exactly-once creation rests on this file. The rules:
1. an intent line is written and fsynced *before* its request is sent; a write whose intent is
   not on disk was never sent;
2. an outcome line (`done`, `failed`, `absent`, `superseded`) closes an intent; an intent without one is
   *unresolved*: its answer was lost (a kill, a dropped connection), so it may or may not have
   been applied, and restore looks it up on the target before anything else is sent;
3. `absent` says a lookup proved the write was not applied; the step is then sent again under a
   new intent. A lost PATCH is `superseded`: PATCH is idempotent, so the plan just reads the step
   again and patches what still differs;
4. a line torn by a kill can only be the last one, and was never fsynced whole: it is cut off
   when the journal is opened (a torn intent was never sent, a torn outcome leaves its intent
   unresolved, which is safe).

Lines (one JSON object each):
  {"write": W, "op": "create", "old_id": 1, "key": {"sequence": S, "order": O, "stepType": T},
   "seen": [ids in sequence S before sending], "body": {...}, "at": epoch, "state": "intent"}
  {"write": W, "op": "patch", "old_id": 1, "target_id": 1, "body": {...}, "at": .., "state": "intent"}
  {"write": W, "op": "create", "old_id": 1, "state": "done", "new_id": 9, "how": "answer"|"lookup"}
  {"write": W, "op": .., "old_id": 1, "state": "failed", "status": 422, "detail": "..."}
  {"write": W, "op": "create", "old_id": 1, "state": "absent"}
  {"write": W, "op": "patch", "old_id": 1, "state": "superseded"}
"""

from __future__ import annotations

import fcntl
import os
import secrets
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

import orjson

from exporter.errors import BusyError, OutputError, UsageError

INTENT = "intent"
DONE = "done"
FAILED = "failed"
ABSENT = "absent"
SUPERSEDED = "superseded"  # a patch whose answer was lost: the next plan reads the step again
OUTCOMES = frozenset({DONE, FAILED, ABSENT, SUPERSEDED})


@dataclass
class Intent:
    """A write recorded before it was sent."""

    write: str
    op: str  # create | patch
    old_id: int
    body: dict[str, Any]
    at: float
    key: dict[str, Any] | None = None  # create: sequence, order, stepType
    seen: frozenset[int] = frozenset()  # create: step ids of the sequence before sending
    target_id: int | None = None  # patch: the step patched

    def line(self) -> dict[str, Any]:
        entry: dict[str, Any] = {"write": self.write, "op": self.op, "old_id": self.old_id}
        if self.op == "create":
            entry["key"] = self.key
            entry["seen"] = sorted(self.seen)
        else:
            entry["target_id"] = self.target_id
        entry.update({"body": self.body, "at": self.at, "state": INTENT})
        return entry


@dataclass
class JournalState:
    """What a journal's lines add up to."""

    unresolved: list[Intent] = field(default_factory=list)
    created: dict[int, int] = field(default_factory=dict)  # old id -> newest created id
    failed: dict[int, dict[str, Any]] = field(default_factory=dict)  # old id -> last failure
    lines: int = 0

    def claimed(self) -> set[int]:
        """Ids of steps this journal has created (a lookup must not take them for another)."""
        return set(self.created.values())


class Journal:
    """The open journal file; `record` appends one line and fsyncs it before returning."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._file: BinaryIO | None = None
        self.state = JournalState()

    def open(self) -> JournalState:
        """Open, lock (one restore per journal: two would both create what is missing) and
        read the journal."""
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            handle = open(self.path, "ab")  # noqa: SIM115 - held open for the whole restore
        except OSError as exc:
            raise OutputError(
                f"cannot open the restore journal {self.path}: {exc.strerror}"
            ) from None
        try:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.close()
            raise BusyError(
                f"the restore journal {self.path} is in use by another restore; wait for it to "
                "finish (two at once would both create the steps that are missing)"
            ) from None
        try:
            _cut_torn_tail(self.path)
            self.state = replay(self.path)
        except OSError as exc:
            handle.close()
            raise OutputError(
                f"cannot read the restore journal {self.path}: {exc.strerror}"
            ) from None
        self._file = handle
        return self.state

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None

    def new_intent(
        self,
        op: str,
        old_id: int,
        body: dict[str, Any],
        *,
        key: dict[str, Any] | None = None,
        seen: frozenset[int] = frozenset(),
        target_id: int | None = None,
    ) -> Intent:
        intent = Intent(
            write=secrets.token_hex(6),
            op=op,
            old_id=old_id,
            body=body,
            at=time.time(),
            key=key,
            seen=seen,
            target_id=target_id,
        )
        self._append(intent.line())
        return intent

    def done(self, intent: Intent, new_id: int | None, how: str) -> None:
        entry = self._outcome(intent, DONE)
        if intent.op == "create":
            assert new_id is not None
            entry["new_id"] = new_id
            entry["how"] = how
            self.state.created[intent.old_id] = new_id
        self._append(entry)
        self.state.failed.pop(intent.old_id, None)

    def failed(self, intent: Intent, status: int | None, detail: str) -> None:
        entry = self._outcome(intent, FAILED)
        entry.update({"status": status, "detail": detail})
        self._append(entry)
        self.state.failed[intent.old_id] = entry

    def absent(self, intent: Intent) -> None:
        self._append(self._outcome(intent, ABSENT))

    def superseded(self, intent: Intent) -> None:
        self._append(self._outcome(intent, SUPERSEDED))

    @staticmethod
    def _outcome(intent: Intent, state: str) -> dict[str, Any]:
        return {"write": intent.write, "op": intent.op, "old_id": intent.old_id, "state": state}

    def _append(self, entry: dict[str, Any]) -> None:
        # Synchronous on purpose: the line must be on disk before the request it announces is
        # sent. A few milliseconds per write, and writes are paced by the rate limit anyway.
        if self._file is None:
            raise RuntimeError("journal used before open()")
        try:
            self._file.write(orjson.dumps(entry) + b"\n")
            self._file.flush()
            os.fsync(self._file.fileno())
        except OSError as exc:
            raise OutputError(
                f"cannot write the restore journal {self.path}: {exc.strerror}; "
                "nothing more is sent until it can be recorded"
            ) from None
        self.state.lines += 1


def _cut_torn_tail(path: Path) -> None:
    """Drop a last line without its newline: it was being written when the process died."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return
    if not data or data.endswith(b"\n"):
        return
    keep = data.rfind(b"\n") + 1
    with open(path, "r+b") as handle:
        handle.truncate(keep)
        handle.flush()
        os.fsync(handle.fileno())


def replay(path: Path) -> JournalState:
    """What the journal's lines add up to (read only; a torn last line is ignored)."""
    state = JournalState()
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return state
    pending: dict[str, Intent] = {}
    if not data.endswith(b"\n"):
        data = data[: data.rfind(b"\n") + 1]  # a torn last line (see `_cut_torn_tail`)
    for number, raw in enumerate(data.splitlines(), start=1):
        if not raw.strip():
            continue
        try:
            entry = orjson.loads(raw)
            write = str(entry["write"])
            status = entry["state"]
            old_id = int(entry["old_id"])
        except (orjson.JSONDecodeError, KeyError, TypeError, ValueError):
            raise UsageError(
                f"the restore journal {path} is damaged at line {number}; "
                "it is the only record of writes in flight, so fix or move it by hand"
            ) from None
        state.lines += 1
        if status == INTENT:
            pending[write] = Intent(
                write=write,
                op=str(entry["op"]),
                old_id=old_id,
                body=entry.get("body") or {},
                at=float(entry.get("at", 0.0)),
                key=entry.get("key"),
                seen=frozenset(int(i) for i in entry.get("seen", [])),
                target_id=entry.get("target_id"),
            )
        elif status in OUTCOMES:
            pending.pop(write, None)
            if status == DONE and entry.get("op") == "create":
                state.created[old_id] = int(entry["new_id"])
                state.failed.pop(old_id, None)
            elif status == DONE:
                state.failed.pop(old_id, None)
            elif status == FAILED:
                state.failed[old_id] = entry
    state.unresolved = list(pending.values())
    return state


def read_mapping(path: Path) -> dict[int, int]:
    """Old id -> created id, as a journal records it."""
    return dict(replay(path).created)
