"""Mutants of restore/journal.py that the suite let live, each killed by a test naming its one-line bug.

The journal is the only record of writes in flight (exactly-once creation rests on it), so
these tests write real journal files, reopen them and replay them, line by line."""

from __future__ import annotations

import errno
import os
import stat
from pathlib import Path
from typing import Any

import orjson
import pytest

from exporter.api.account import Account
from exporter.core.errors import BusyError, OutputError, UsageError
from exporter.restore import journal
from exporter.restore.journal import Journal, read_mapping, replay
from tests.helpers.durability import recorded_fsyncs

ACCOUNT = Account("http://127.0.0.1:9/api/v2", "org-1")
BODY = {"data": {"type": "sequenceStep", "attributes": {"order": 1}}}
KEY = {"sequence": 3, "order": 1, "stepType": "auto_email"}


def patch_body(target: int) -> dict[str, Any]:
    return {"data": {"type": "sequenceStep", "id": target, "attributes": {"order": 2}}}


def open_descriptors() -> set[str]:
    """This process's open file descriptors (Linux: /proc/self/fd)."""
    return set(os.listdir("/proc/self/fd"))


def reopened(path: Path, account: Account = ACCOUNT) -> journal.JournalState:
    again = Journal(path)
    try:
        return again.open(account)
    finally:
        again.close()


def test_every_outcome_survives_a_reopen(tmp_path: Path) -> None:
    """Bugs: an outcome not appended or not applied on replay (`state.created[...]` or
    `failed.pop` deleted, `status == DONE` flipped), an intent's key, seen ids or `above` not
    written, a failure not cleared by a later success, the line count off by one."""
    path = tmp_path / "j.jsonl"
    live = Journal(path)
    state = live.open(ACCOUNT)
    created = live.new_intent("create", 11, BODY, key=KEY, seen=frozenset({4, 5}), above=5)
    live.done(created, 9, "answer")
    refused = live.new_intent("create", 12, BODY, key=KEY, seen=frozenset(), above=None)
    live.failed(refused, 422, "bad order")
    assert state.failed[12]["status"] == 422
    retried = live.new_intent("create", 12, BODY, key=KEY, seen=frozenset({4, 5, 9}), above=9)
    live.done(retried, 10, "lookup")
    lost = live.new_intent("create", 13, BODY, key=KEY, seen=frozenset({4}), above=10)
    given_up = live.new_intent("create", 14, BODY, key=KEY, seen=frozenset(), above=None)
    live.absent(given_up, "operator")
    patched = live.new_intent("patch", 11, patch_body(9), target_id=9)
    live.superseded(patched)
    patch_failed = live.new_intent("patch", 15, patch_body(7), target_id=7)
    live.failed(patch_failed, 409, "conflict")
    patch_done = live.new_intent("patch", 15, patch_body(7), target_id=7)
    live.done(patch_done, None, "answer")
    live.close()
    assert (state.created, state.failed) == ({11: 9, 12: 10}, {})

    again = reopened(path)
    assert again.account == ACCOUNT and again.lines == 16
    assert again.created == {11: 9, 12: 10} and again.failed == {}
    assert again.created_at == {11: created.at, 12: retried.at}
    [unresolved] = again.unresolved
    assert (unresolved.write, unresolved.op, unresolved.old_id) == (lost.write, "create", 13)
    assert (unresolved.key, unresolved.seen, unresolved.above) == (KEY, frozenset({4}), 10)
    assert unresolved.body == BODY and unresolved.at == lost.at
    assert again.claimed() == {9, 10} and read_mapping(path) == {11: 9, 12: 10}


def test_a_failure_is_kept_until_a_success(tmp_path: Path) -> None:
    """Bug: `state.failed[old_id] = entry` lost on replay (`status == FAILED` flipped): a
    restore would forget why a step was refused."""
    path = tmp_path / "j.jsonl"
    live = Journal(path)
    live.open(ACCOUNT)
    live.failed(live.new_intent("patch", 3, patch_body(8), target_id=8), 422, "no")
    live.close()
    assert reopened(path).failed[3]["detail"] == "no"


def test_a_journal_of_another_account_is_refused(tmp_path: Path) -> None:
    """Bugs: the account check skipped (`not same_as` dropped) or the target line not written
    in a new journal (`account is None` flipped): its ids would be used on another org."""
    path = tmp_path / "j.jsonl"
    reopened(path)
    assert path.stat().st_mode & 0o777 == 0o600  # the user's alone (`0o600` changed)
    first = orjson.loads(path.read_bytes().splitlines()[0])
    assert first["state"] == "target" and first["account"] == ACCOUNT.to_json()
    reopened(path)  # the same account again: no second target line
    assert len(path.read_bytes().splitlines()) == 1
    with pytest.raises(UsageError, match=r"was written against .*org-1.*, not .*org-2"):
        reopened(path, Account("http://127.0.0.1:9/api/v2", "org-2"))


def test_a_second_restore_on_the_same_journal_is_busy(tmp_path: Path) -> None:
    """Bug: the lock not taken (`flock` deleted): two restores would both create the steps
    that are missing."""
    path = tmp_path / "j.jsonl"
    first = Journal(path)
    first.open(ACCOUNT)
    try:
        with pytest.raises(BusyError, match="in use by another restore"):
            reopened(path)
    finally:
        first.close()
    reopened(path)  # free again once closed


@pytest.mark.parametrize(
    "tail",
    [
        b'{"write": "ab", "op": "cre',
        b"x" * (3 * (1 << 16) + 7),
        # The last whole line's newline is then the first byte of the block read backwards:
        # `newline > 0` would miss it and cut the line before it too (journal.py:272).
        b"x" * ((1 << 16) - 1),
        # One byte: the byte before it is the last whole line's newline, which `end - 2` for
        # `end - 1` (journal.py:265) would take for the last byte, keeping the torn tail; the
        # next line appended would then be glued to it and the journal refused.
        b"x",
    ],
    ids=["short", "three blocks", "newline first in its block", "one byte"],
)
def test_a_torn_last_line_is_cut_when_opened(
    tmp_path: Path, tail: bytes, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Bugs: the torn tail kept or cut at the wrong place (`rfind` offset, `start + newline +
    1` as `- 1`, the block loop's `position > 0` or `newline >= 0` flipped), for a tail
    shorter and one longer than the block read backwards; the cut not fsynced (`os.fsync(fd)`
    left out of `_cut_torn_tail`, journal.py:277: after a power cut the torn bytes could come
    back under the lines appended next)."""
    path = tmp_path / "j.jsonl"
    live = Journal(path)
    live.open(ACCOUNT)
    intent = live.new_intent("create", 2, BODY, key=KEY, seen=frozenset(), above=None)
    live.close()
    whole = path.read_bytes()
    with path.open("ab") as handle:
        handle.write(tail)
    assert [i.write for i in replay(path).unresolved] == [intent.write]  # replay ignores it
    fsyncs = recorded_fsyncs(monkeypatch)
    state = reopened(path)
    assert path.read_bytes() == whole
    assert [i.write for i in state.unresolved] == [intent.write]
    assert ("file", path.stat().st_ino, len(whole)) in fsyncs  # the cut is on disk


def test_a_journal_that_is_only_a_torn_line_starts_again(tmp_path: Path) -> None:
    """Bug: a torn first line kept (`keep` not 0 when there is no newline at all; `keep = 1`,
    journal.py:267, keeps its first byte, `{`): the target line is glued to what is left and
    the journal can never be opened again. (The line count alone did not tell: the glued line
    is one line.)"""
    path = tmp_path / "j.jsonl"
    path.write_bytes(b'{"state": "tar')
    state = reopened(path)
    assert state.account == ACCOUNT and len(path.read_bytes().splitlines()) == 1
    assert orjson.loads(path.read_bytes())["state"] == "target"
    assert reopened(path).account == ACCOUNT  # and it opens again


def test_a_cut_keeps_a_whole_line_that_starts_the_file(tmp_path: Path) -> None:
    """Bug: `while position > 1` for `> 0` (journal.py:269): a newline at byte 0, found only
    once the blocks read backwards reach it, is never read, and the cut empties the file.
    Cutting a torn tail keeps every whole line, even one (here empty) that this tool would
    not write: the journal is refused, not silently started again."""
    path = tmp_path / "j.jsonl"
    path.write_bytes(b"\n" + b"x" * (1 << 16))  # byte 0 alone in the last block read
    with pytest.raises(UsageError, match="line 1: it is empty"):
        reopened(path)
    assert path.read_bytes() == b"\n"


def test_a_journal_path_that_is_not_a_file_is_refused(tmp_path: Path) -> None:
    """Bugs: `S_ISREG` not checked (a directory or FIFO opened as a journal), the error not
    an OutputError/UsageError naming the path; the descriptor of what was refused left open
    (`os.close(fd)` left out of `open_regular`, journal.py:301)."""
    (tmp_path / "dir").mkdir()
    before = open_descriptors()
    with pytest.raises(OutputError, match=r"cannot open the restore journal .*dir"):
        Journal(tmp_path / "dir").open(ACCOUNT)
    with pytest.raises(UsageError, match="cannot read the restore journal"):
        replay(tmp_path / "dir")
    os.mkfifo(tmp_path / "fifo")
    with pytest.raises(UsageError, match="not a regular file"):
        replay(tmp_path / "fifo")
    assert replay(tmp_path / "absent") == journal.JournalState()
    assert open_descriptors() == before
    with pytest.raises(RuntimeError, match="before open"):
        Journal(tmp_path / "x").superseded(
            journal.Intent(write="ab", op="patch", old_id=1, body=BODY, at=1.0)
        )


TARGET = {"state": "target", "account": ACCOUNT.to_json(), "at": 1}


def create(write: str = "a1", old_id: Any = 1, **changes: Any) -> dict[str, Any]:
    line = {"write": write, "op": "create", "old_id": old_id, "key": KEY, "seen": [4],
            "above": 4, "body": BODY, "at": 1.5, "state": "intent"}  # fmt: skip
    line.update(changes)
    return line


def patch(write: str = "b1", old_id: int = 1, target_id: Any = 7, **changes: Any) -> dict[str, Any]:
    line = {"write": write, "op": "patch", "old_id": old_id, "target_id": target_id,
            "body": patch_body(7), "at": 2, "state": "intent"}  # fmt: skip
    line.update(changes)
    return line


def outcome(state: str, write: str = "a1", op: str = "create", old_id: int = 1, **more: Any) -> dict[str, Any]:  # fmt: skip
    return {"write": write, "op": op, "old_id": old_id, "state": state, **more}


def write_lines(path: Path, *lines: Any) -> None:
    path.write_bytes(
        b"".join((x if isinstance(x, bytes) else orjson.dumps(x)) + b"\n" for x in lines)
    )


@pytest.mark.parametrize(
    ("lines", "reason"),
    [
        ([TARGET, b"   "], "line 2: it is empty"),
        ([TARGET, b"{nope"], "line 2: it is not JSON"),
        ([TARGET, b"[1]"], "line 2: it is not a JSON object"),
        ([TARGET, TARGET], "line 2: a second target line"),
        ([{"state": "target", "account": {"origin": 7}}], "line 1: its target account"),
        ([TARGET, create(write="XY")], "its write id is not one this tool writes"),
        ([TARGET, create(write=5)], "its write id is not one this tool writes"),
        ([TARGET, create(op="delete")], "op 'delete' is neither create nor patch"),
        ([TARGET, create(old_id=0)], "old_id is not a step id"),
        ([TARGET, create(old_id=True)], "old_id is not a step id"),
        ([TARGET, create(old_id="1")], "old_id is not a step id"),
        ([TARGET, create(body={"data": {"type": "user"}})], "its body is not a sequenceStep"),
        ([TARGET, create(body={"data": []})], "its body is not a sequenceStep"),
        ([TARGET, create(body=[])], "its body is not a sequenceStep"),
        ([TARGET, create(at="now")], "its time is not a number"),
        ([TARGET, create(at=True)], "its time is not a number"),
        ([TARGET, patch(target_id=8)], "its body patches another step than its target_id"),
        ([TARGET, patch(target_id=0)], "target_id is not a step id"),
        ([TARGET, create(key=None)], "a create without a lookup key"),
        ([TARGET, create(body=patch_body(7))], "a create without a lookup key, or with an id"),
        ([TARGET, create(seen=[1, "2"])], "its seen ids are not a list of ids"),
        ([TARGET, create(seen={"a": 1})], "its seen ids are not a list of ids"),
        ([TARGET, create(above="4")], "its above is not an id"),
        ([TARGET, create(), create()], "write id a1 is used twice"),
        ([TARGET, create(), outcome("done", new_id=9), create()], "write id a1 is used twice"),
        ([TARGET, create(), create(write="a2")], "a second create of step 1 while one is"),
        ([TARGET, create(), outcome("maybe")], "state 'maybe' is not one this tool writes"),
        ([TARGET, outcome("done", new_id=9)], "an outcome for no unresolved intent"),
        ([TARGET, create(), outcome("done", write=7)], "an outcome for no unresolved intent"),
        ([TARGET, create(), outcome("done", old_id=2, new_id=9)], "another step than its"),
        ([TARGET, create(), outcome("done", op="patch")], "another step than its intent's"),
        ([TARGET, create(), outcome("done", new_id=4)], "step 4 was in the sequence before"),
        ([TARGET, create(), outcome("done", new_id=0)], "new_id is not a step id"),
        (
            [
                TARGET,
                create(),
                outcome("done", new_id=9),
                create("a2", 2, seen=[]),
                outcome("done", "a2", old_id=2, new_id=9),
            ],
            "step 9 is recorded as created for steps 1 and 2",
        ),
        ([TARGET, create(), outcome("superseded")], "a create cannot be superseded"),
        ([TARGET, patch(), outcome("absent", "b1", "patch")], "a patch cannot be absent"),
    ],
)
def test_a_journal_that_does_not_add_up_is_refused(
    tmp_path: Path, lines: list[Any], reason: str
) -> None:
    """Bugs: each check of `_intent` and `_replay_line` weakened (a comparison flipped, `and`
    for `or`, a `not` dropped): a journal that does not add up would be trusted, and a step
    created twice or a lost create forgotten. The line number is the 1-based line."""
    path = tmp_path / "j.jsonl"
    write_lines(path, *lines)
    with pytest.raises(UsageError, match=reason.replace("(", r"\(")) as caught:
        replay(path)
    assert "does not add up at line" in str(caught.value)


def test_the_edges_of_a_well_formed_journal_are_accepted(tmp_path: Path) -> None:
    """Bugs: `value < 1` as `<= 1` (step 1 refused), a create after a closed create of the
    same step refused, a patch beside an unresolved create refused, `above` None or `seen`
    absent refused, an integer time refused, the same step re-created after a done (the newest
    id kept)."""
    path = tmp_path / "j.jsonl"
    bare = create("c3", 3)
    del bare["seen"]
    write_lines(
        path,
        TARGET,
        create(old_id=1, above=None, at=5),
        outcome("done", new_id=1),
        create("a2", 1, seen=[1]),
        patch("b2", 1, target_id=7),
        outcome("done", "a2", new_id=2),
        outcome("superseded", "b2", "patch"),
        bare,
        outcome("absent", "c3", old_id=3, how="operator"),
    )
    state = replay(path)
    assert state.created == {1: 2} and state.unresolved == [] and state.lines == 9


def test_an_intent_is_on_disk_before_the_journal_is_closed(tmp_path: Path) -> None:
    """Bug: `self._file.flush()` left out of `_append` (journal.py:233): the line stays in the
    process's buffer, so a crash (SIGKILL) after the request is sent loses the intent that
    should have announced it, and the next run creates the step a second time. Another reader
    must see the line while the journal is still open."""
    path = tmp_path / "j.jsonl"
    live = Journal(path)
    live.open(ACCOUNT)
    try:
        intent = live.new_intent("create", 2, BODY, key=KEY, seen=frozenset(), above=None)
        lines = [orjson.loads(line) for line in path.read_bytes().splitlines()]
        assert intent.write in {line.get("write") for line in lines}
        assert [i.write for i in replay(path).unresolved] == [intent.write]
    finally:
        live.close()


def test_an_empty_journal_file_opens(tmp_path: Path) -> None:
    """Bug: `end == 1` for `end == 0` in `_cut_torn_tail` (journal.py:265): an empty journal
    (created, then the process died before its first line) is read at offset -1, and the
    restore cannot start again."""
    path = tmp_path / "j.jsonl"
    path.write_bytes(b"")
    state = reopened(path)
    assert state.account == ACCOUNT and len(path.read_bytes().splitlines()) == 1


def test_every_line_is_fsynced_before_its_write_goes_on(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Rule 2 of the journal: an intent is on disk before its request is sent. Bugs:
    `os.fsync(self._file.fileno())` left out of `_append` (journal.py:234); a new journal's
    name not made durable (`fsync_directory` left out, 137; its `os.fsync` left out, now in
    core/files.py; `new = self.path.exists()` for `not ...`, 129, which syncs the folder of an existing journal
    instead); the folder's descriptor never closed (`os.close(directory)` left out, 257); a
    journal in a folder not made yet refused (`parents=False`, 128: the journals of a backup
    on S3 live under ~/.local/state/outreach-exporter/restore/); the live line count off
    (`lines += 2`, 240: it is replay's count, kept as lines are added)."""
    folder = tmp_path / "state" / "outreach-exporter" / "restore"
    path = folder / "j.jsonl"
    before = open_descriptors()
    fsyncs = recorded_fsyncs(monkeypatch)
    live = Journal(path)
    state = live.open(ACCOUNT)
    inode = path.stat().st_ino

    def synced_whole() -> bool:
        return [c for c in fsyncs if c[:2] == ("file", inode)][-1][2] == path.stat().st_size

    assert ("dir", folder.stat().st_ino, folder.stat().st_size) in fsyncs
    assert synced_whole()  # the target line
    intent = live.new_intent("create", 2, BODY, key=KEY, seen=frozenset(), above=None)
    assert synced_whole()  # the intent, before new_intent returns and the POST is sent
    live.done(intent, 9, "answer")
    assert synced_whole()
    assert state.lines == replay(path).lines == 3
    live.close()
    assert open_descriptors() == before


def test_a_journal_that_fails_to_open_leaves_no_descriptor_or_lock_behind(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Bugs: `handle.close()` left out where the folder cannot be synced (journal.py:139) or
    the journal cannot be read (156): the descriptor leaks and, once locked, keeps the journal
    locked, so trying again in the same process is refused as "in use by another restore"."""
    path = tmp_path / "j.jsonl"
    real_fsync = os.fsync

    def fsync_failing_on_folders(fd: int) -> None:
        if stat.S_ISDIR(os.fstat(fd).st_mode):
            raise OSError(errno.EIO, "Input/output error")
        real_fsync(fd)

    before = open_descriptors()
    with monkeypatch.context() as patched:
        patched.setattr(os, "fsync", fsync_failing_on_folders)
        with pytest.raises(OutputError, match=r"cannot open the restore journal .*Input/output"):
            Journal(path).open(ACCOUNT)
        assert open_descriptors() == before

    path.write_bytes(orjson.dumps(TARGET) + b"\n" + b'{"torn')

    def failing_truncate(fd: int, length: int) -> None:
        raise OSError(errno.EIO, "Input/output error")

    with monkeypatch.context() as patched:
        patched.setattr(os, "ftruncate", failing_truncate)
        with pytest.raises(OutputError, match=r"cannot read the restore journal .*Input/output"):
            Journal(path).open(ACCOUNT)
        assert open_descriptors() == before
    assert reopened(path).account == ACCOUNT  # not locked by the failed open
