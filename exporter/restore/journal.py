"""The restore journal: an append-only, fsynced JSON-lines record of every write, before it is sent and once it is answered.

The API has no idempotency key, so exactly-once creation rests on this file. The rules:
1. the first line names the target account (a journal of an older version gets it appended) (`exporter.api.account.Account`: canonical base URL and
   the org the API states); a journal is never used against another account;
2. an intent line is written and fsynced *before* its request is sent; a write whose intent is
   not on disk was never sent;
3. an outcome line (`done`, `failed`, `absent`, `superseded`) closes an intent; an intent without one is
   *unresolved*: its answer was lost (a kill, a dropped connection, a 5xx, a 2xx that names no
   step), so it may or may not have been applied, or may still be applied later (a slow write);
4. an unresolved create is looked up on the target (by `exporter.restore.restore`: a step that was not
   there before the intent, equal in every field sent, not claimed by another create of this
   journal). Found: `done`. Not found: it stays unresolved and the step is *not* sent again:
   against this API, a lost create is never provably absent by observation alone (no
   idempotency key, no ordering between requests, no way to cancel one, no bound on how late
   an accepted write is applied). Restore says so and exits 1; every later run looks again.
   `absent` is written only on the operator's word (`--resend-lost`, after a last lookup that
   does not find it); only then is the step sent again, under a new intent;
5. a definite refusal (a 4xx other than 401, 408, 425 and 429) is `failed`: nothing was applied;
6. a lost PATCH is `superseded`: PATCH is idempotent, so the plan just reads the step again and
   patches what still differs;
7. a line torn by a kill can only be the last one, and was never fsynced whole: it is cut off
   when the journal is opened (a torn intent was never sent, a torn outcome leaves its intent
   unresolved, which is safe).

A journal that does not add up is refused whole (`UsageError`, the line named): a line that is
not one of the forms below, an outcome for no open intent (or for another step than its
intent's), a write id used twice, a second create for a step while one is unresolved, a created
id that was in the sequence before its intent was sent, or one step created for two backup steps.

Lines (one JSON object each):
  {"state": "target", "account": {"origin": URL, "org": ORG|null}, "at": epoch}
  {"write": W, "op": "create", "old_id": 1, "key": {"sequence": S, "order": O, "stepType": T},
   "seen": [ids in sequence S before sending], "above": highest step id before sending|null,
   "body": {...}, "at": epoch, "state": "intent"}
  {"write": W, "op": "patch", "old_id": 1, "target_id": 1, "body": {...}, "at": .., "state": "intent"}
  {"write": W, "op": "create", "old_id": 1, "state": "done", "new_id": 9, "how": "answer"|"lookup"}
  {"write": W, "op": .., "old_id": 1, "state": "failed", "status": 422, "detail": "..."}
  {"write": W, "op": "create", "old_id": 1, "state": "absent", "how": "operator"}
  {"write": W, "op": "patch", "old_id": 1, "state": "superseded"}
"""

from __future__ import annotations

import errno
import fcntl
import math
import os
import re
import secrets
import stat
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

import orjson

from exporter.api.account import Account
from exporter.core.errors import BusyError, OutputError, UsageError
from exporter.core.files import fsync_directory

TARGET = "target"
INTENT = "intent"
DONE = "done"
FAILED = "failed"
ABSENT = "absent"
SUPERSEDED = "superseded"  # a patch whose answer was lost: the next plan reads the step again
OUTCOMES = frozenset({DONE, FAILED, ABSENT, SUPERSEDED})
OPS = frozenset({"create", "patch"})
_WRITE_ID = re.compile(r"[0-9a-f]{1,64}")


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
    above: int | None = None  # create: the highest step id on the target before sending
    target_id: int | None = None  # patch: the step patched

    def line(self) -> dict[str, Any]:
        entry: dict[str, Any] = {"write": self.write, "op": self.op, "old_id": self.old_id}
        if self.op == "create":
            entry["key"] = self.key
            entry["seen"] = sorted(self.seen)
            entry["above"] = self.above
        else:
            entry["target_id"] = self.target_id
        entry.update({"body": self.body, "at": self.at, "state": INTENT})
        return entry


@dataclass
class JournalState:
    """What a journal's lines add up to."""

    account: Account | None = None  # the target it was written against (None: no line yet)
    unresolved: list[Intent] = field(default_factory=list)
    created: dict[int, int] = field(default_factory=dict)  # old id -> newest created id
    created_at: dict[int, float] = field(default_factory=dict)  # old id -> its intent's time
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

    def open(self, account: Account) -> JournalState:
        """Open, lock (one restore per journal: two would both create what is missing) and
        read the journal; refuse it if it was written against another account than
        `account`, and record `account` in a new one."""
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            new = not self.path.exists()
            handle = open_regular(self.path)
        except OSError as exc:
            raise OutputError(
                f"cannot open the restore journal {self.path}: {exc.strerror}"
            ) from None
        try:
            if new:  # the file's name must survive a crash as surely as its lines
                fsync_directory(self.path.parent)
        except OSError as exc:
            handle.close()
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
            _cut_torn_tail(handle)
            self.state = replay(self.path)
            check_account(self.path, self.state, account)
        except OSError as exc:
            handle.close()
            raise OutputError(
                f"cannot read the restore journal {self.path}: {exc.strerror}"
            ) from None
        except UsageError:
            handle.close()
            raise
        self._file = handle
        if self.state.account is None:
            self._append({"state": TARGET, "account": account.to_json(), "at": time.time()})
            self.state.account = account
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
        above: int | None = None,
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
            above=above,
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
            self.state.created_at[intent.old_id] = intent.at
        self._append(entry)
        self.state.failed.pop(intent.old_id, None)

    def failed(self, intent: Intent, status: int | None, detail: str) -> None:
        entry = self._outcome(intent, FAILED)
        entry.update({"status": status, "detail": detail})
        self._append(entry)
        self.state.failed[intent.old_id] = entry

    def absent(self, intent: Intent, how: str) -> None:
        self._append({**self._outcome(intent, ABSENT), "how": how})

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


def check_account(path: Path, state: JournalState, account: Account) -> None:
    """Refuse a journal written against another account than `account`."""
    if state.account is not None and not state.account.same_as(account):
        raise UsageError(
            f"the restore journal {path} was written against {state.account.label}, not "
            f"{account.label}; its ids mean nothing there: pass another --journal"
        )


def _cut_torn_tail(handle: BinaryIO) -> None:
    """Drop a last line without its newline: it was being written when the process died.
    (Read backwards from the end in blocks: a journal may be large.)"""
    fd = handle.fileno()
    end = os.fstat(fd).st_size
    if end == 0 or os.pread(fd, 1, end - 1) == b"\n":
        return
    keep = 0
    position = end
    while position > 0:
        start = max(0, position - _BLOCK)
        newline = os.pread(fd, position - start, start).rfind(b"\n")
        if newline >= 0:
            keep = start + newline + 1
            break
        position = start
    os.ftruncate(fd, keep)
    os.fsync(fd)


_BLOCK = 1 << 16
_NOT_REGULAR = "is not a regular file (a directory, a FIFO or a device)"


class NotRegularFile(OSError):
    """The journal's path names something that is not a regular file."""


def open_regular(path: Path, *, write: bool = True) -> BinaryIO:
    """The regular file at `path`, opened to append (created if missing) or to read, never
    blocking: `O_NONBLOCK` so a FIFO cannot hang the open, then `fstat` on the descriptor so
    what is read is what was checked. `NotRegularFile` (an OSError) for anything else."""
    flags = os.O_NONBLOCK | os.O_CLOEXEC | getattr(os, "O_NOCTTY", 0)
    flags |= (os.O_RDWR | os.O_APPEND | os.O_CREAT) if write else os.O_RDONLY
    fd = os.open(path, flags, 0o600)
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise NotRegularFile(errno.EINVAL, _NOT_REGULAR)
        os.set_blocking(fd, True)
        return os.fdopen(fd, "a+b" if write else "rb")
    except BaseException:
        os.close(fd)
        raise


class _Bad(Exception):
    """A journal line that is not well-formed or does not add up (the reason)."""


def _step_id(value: Any, what: str) -> int:
    if type(value) is not int or value < 1:
        raise _Bad(f"{what} is not a step id")
    return value


def _intent(entry: dict[str, Any]) -> Intent:
    write = entry.get("write")
    if not isinstance(write, str) or not _WRITE_ID.fullmatch(write):
        raise _Bad("its write id is not one this tool writes")
    op = entry.get("op")
    if op not in OPS:
        raise _Bad(f"op {op!r} is neither create nor patch")
    old_id = _step_id(entry.get("old_id"), "old_id")
    body = entry.get("body")
    data = body.get("data") if isinstance(body, dict) else None
    if (
        not isinstance(body, dict)
        or not isinstance(data, dict)
        or data.get("type") != "sequenceStep"
    ):
        raise _Bad("its body is not a sequenceStep document")
    at = entry.get("at")
    if not isinstance(at, int | float) or isinstance(at, bool) or not math.isfinite(at):
        raise _Bad("its time is not a number")
    intent = Intent(write=write, op=op, old_id=old_id, body=body, at=float(at))
    if op == "patch":
        intent.target_id = _step_id(entry.get("target_id"), "target_id")
        if data.get("id") != intent.target_id:
            raise _Bad("its body patches another step than its target_id")
        return intent
    key, seen, above = entry.get("key"), entry.get("seen", []), entry.get("above")
    if not isinstance(key, dict) or "id" in data:
        raise _Bad("a create without a lookup key, or with an id in its body")
    if not isinstance(seen, list) or not all(type(i) is int for i in seen):
        raise _Bad("its seen ids are not a list of ids")
    if above is not None and type(above) is not int:
        raise _Bad("its above is not an id")
    intent.key, intent.seen, intent.above = key, frozenset(seen), above
    return intent


def replay(path: Path) -> JournalState:
    """What the journal's lines add up to (read only; a torn last line is ignored); a
    `UsageError` naming the line when one is not well-formed or does not add up."""
    state = JournalState()
    try:
        handle = open_regular(path, write=False)
    except FileNotFoundError:
        return state
    except OSError as exc:
        raise UsageError(
            f"cannot read the restore journal {path}: {exc.strerror or exc}; pass --journal "
            "with the path of a journal file"
        ) from None
    pending: dict[str, Intent] = {}
    closed: set[str] = set()
    with handle:
        for number, raw in enumerate(handle, start=1):  # streamed: a journal may be large
            if not raw.endswith(b"\n"):
                break  # a torn last line (see `_cut_torn_tail`)
            try:
                if not raw.strip():
                    raise _Bad("it is empty")
                try:
                    entry = orjson.loads(raw)
                except orjson.JSONDecodeError:
                    raise _Bad("it is not JSON") from None
                if not isinstance(entry, dict):
                    raise _Bad("it is not a JSON object")
                _replay_line(entry, state, pending, closed)
            except _Bad as bad:
                raise UsageError(
                    f"the restore journal {path} does not add up at line {number}: {bad}; it "
                    "is the only record of writes in flight, so restore will not guess: restore "
                    "it from a copy, or move it aside and check the target by hand"
                ) from None
            state.lines += 1
    state.unresolved = list(pending.values())
    return state


def _replay_line(
    entry: dict[str, Any], state: JournalState, pending: dict[str, Intent], closed: set[str]
) -> None:
    status = entry.get("state")
    if status == TARGET:
        if state.account is not None:
            raise _Bad("a second target line")
        account = Account.from_json(entry.get("account"))
        if account is None:
            raise _Bad("its target account is not a canonical base URL and org")
        state.account = account
        return
    if status == INTENT:
        intent = _intent(entry)
        if intent.write in pending or intent.write in closed:
            raise _Bad(f"write id {intent.write} is used twice")
        if intent.op == "create" and any(
            p.op == "create" and p.old_id == intent.old_id for p in pending.values()
        ):
            raise _Bad(f"a second create of step {intent.old_id} while one is unresolved")
        pending[intent.write] = intent
        return
    if status not in OUTCOMES:
        raise _Bad(f"state {status!r} is not one this tool writes")
    write = entry.get("write")
    closing = pending.pop(write, None) if isinstance(write, str) else None
    if closing is None:
        raise _Bad("an outcome for no unresolved intent")
    intent = closing
    closed.add(intent.write)
    if entry.get("op") != intent.op or entry.get("old_id") != intent.old_id:
        raise _Bad(f"an outcome for another step than its intent's ({intent.old_id})")
    old_id = intent.old_id
    if status == DONE and intent.op == "create":
        new_id = _step_id(entry.get("new_id"), "new_id")
        if new_id in intent.seen:
            raise _Bad(f"step {new_id} was in the sequence before the create was sent")
        owner = next((o for o, n in state.created.items() if n == new_id and o != old_id), None)
        if owner is not None:
            raise _Bad(f"step {new_id} is recorded as created for steps {owner} and {old_id}")
        state.created[old_id] = new_id
        state.created_at[old_id] = intent.at
        state.failed.pop(old_id, None)
    elif status == DONE:
        state.failed.pop(old_id, None)
    elif status == FAILED:
        state.failed[old_id] = entry
    elif status == SUPERSEDED and intent.op != "patch":
        raise _Bad("a create cannot be superseded")
    elif status == ABSENT and intent.op != "create":
        raise _Bad("a patch cannot be absent")


def read_mapping(path: Path) -> dict[int, int]:
    """Old id -> created id, as a journal records it."""
    return dict(replay(path).created)
