"""`exporter restore DIR`: put sequence steps back from a backup: plan against the target, then create and patch them exactly once.

Order of a restore:
1. check the backup: the manifest's own `manifest_sha256`, and the sha256 of every file this
   restore reads (refused with exit 6, naming the file, on a mismatch; a recorded path that
   leaves the backup is refused too); then read the backup's state of the steps
   (`compact.current_table`: the newest version per id minus tombstones, or as of `--run`) and
   select them (`--ids`, `--sequence`, or all);
2. identify the target (`exporter.api.account.identify`: canonical base URL and the org its API
   states) and compare it with the account the backup came from (the manifest's `account`,
   else its canonical `source`): another account is refused unless `--into-another-account`,
   and then no step is patched because its id matches (ids of one account mean nothing in
   another): only steps this journal created there are compared and patched;
3. open the journal named after the target's identity (one journal per account, however its
   URL is spelled; a journal written against another account is refused), check that it adds
   up, and settle every write it left unresolved (a kill or a lost answer): a create is looked
   up on the target; a patch is simply planned again (PATCH is idempotent);
4. read the target's state of the selected steps in `filter[id]=a,b,c` batches (for steps an
   earlier restore re-created, the id it created, which must have been created after its
   intent), and plan: create what is gone, patch what differs in a writable field, leave what
   is equal, and leave alone a step whose earlier create is unresolved;
5. with `--apply`: every patch, then the creates, one at a time per sequence (a create's
   lookup candidates are the sequence's new steps, so two in flight in one sequence could be
   mistaken for each other); last, the creates whose answer was lost are looked up once more.

Exactly once without an idempotency key (the journal's rules are in `exporter.restore.journal`): before
a create is sent, the step ids its sequence holds (for a step without a sequence: the highest
step id on the target) are recorded with the intent; a create whose answer is lost (dropped
connection, unreadable 2xx, 5xx, kill) is looked up among the steps that were not there then,
are not created by this journal for another step, and are equal in every field sent. Found:
done. Not found: *not* sent again (it may still land); it stays unresolved, restore exits 1 and
says so, and every later run looks again. Only `--resend-lost`, the operator's word that it was
not applied, sends it again. So POSTs go through `ApiClient.send_document(max_attempts=1)`: the
same budgets and in-flight bound as every other request, a 429 or 401 waited out or refreshed,
but never a second POST after a lost answer.

Never sent is not lost: a POST whose connection could not even be opened (the client's
`NotSentError`: the TCP connect or TLS handshake failed, not one byte left this machine) was
provably not applied. It is recorded `absent` ("not sent"), reported as failed for this run, and
the next run plans and sends it again without a lookup or `--resend-lost`.

Stopping (SIGINT/SIGTERM): no new write is started; the writes in flight get `STOP_GRACE`
seconds to be answered so the journal records their outcome, then they are cancelled and the
restore ends with exit 130 (a second signal cancels at once). A bound, not an unbounded wait:
an API holding a write (or trickling its answer) must not keep a stop from stopping. A POST
cancelled in flight leaves its intent unresolved, which is safe: the next run looks it up
(found: done; not found: unresolved, never re-sent on a guess).

Writable fields come from the OpenAPI file (`schema.resource_type`): attributes and to-one
relationships not marked read-only. Counters, timestamps, displayName, creator/updater,
mailings, calls, tasks and sequenceTemplates are never sent.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import re
import time
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import date, datetime
from enum import StrEnum
from functools import cache
from pathlib import Path
from typing import Any

import orjson

from exporter.api.account import Account, canonical_base_url, identify
from exporter.api.auth import TokenSource
from exporter.api.client import ApiClient, ClientSettings, NotSentError
from exporter.api.documents import page_records
from exporter.api.pagination import collection_url, id_batches, paginate, wire_length
from exporter.backup import manifest
from exporter.backup.compact import current_table
from exporter.backup.storage import Storage
from exporter.core.config import RateLimit
from exporter.core.errors import (
    ApiError,
    AuthError,
    ExitCode,
    ExporterError,
    Interrupted,
    OutputError,
    StatusClass,
    UnreachableError,
    UsageError,
    classify_status,
    clean_text,
)
from exporter.core.times import epoch_or_none, iso_exact
from exporter.model.normalize import (
    EXTRA_COLUMN,
    TOMBSTONE_TYPE,
    check_type,
    record_id,
    table_layout,
)
from exporter.model.schema import Shape, resource_type
from exporter.restore.journal import Intent, Journal, JournalState, check_account, replay
from exporter.restore.modes import Mode

# Restore puts back sequence steps only, whatever root the export crawled (`root_type`): every
# plan, write and lookup below is of this one type.
STEP = "sequenceStep"
RESTORE_DIRECTORY = "_restore"
PAGE_SIZE = 1000


class Action(StrEnum):
    CREATE = "create"
    PATCH = "patch"
    EQUAL = "equal"
    SKIP = "skip"  # needs a write the --mode does not make
    UNRESOLVED = "unresolved"  # gone, but an earlier create of it may yet land: not sent again


# ---------------------------------------------------------------------------- writable fields


@dataclass(frozen=True)
class WritableFields:
    """The attributes and to-one relationships of a step that a write may set."""

    attributes: tuple[str, ...]
    relationships: tuple[tuple[str, str, str], ...]  # (relationship, target type, column)

    @property
    def names(self) -> tuple[str, ...]:
        return self.attributes + tuple(name for name, _t, _c in self.relationships)


@cache
def writable_fields() -> WritableFields:
    layout = table_layout(STEP)
    attributes = tuple(a.name for a in resource_type(STEP).attributes if not a.read_only)
    relationships = tuple(
        (c.relationship.name, c.relationship.target, c.column)
        for c in layout.to_one
        if not c.relationship.read_only and c.relationship.shape is Shape.TO_ONE
    )
    return WritableFields(attributes, relationships)


Values = dict[str, Any]  # writable field -> value as on the wire (relationships: the id or None)


def _wire(value: Any) -> Any:
    if isinstance(value, datetime):
        return iso_exact(value)  # a timestamp[us, UTC] column: always aware, in UTC
    if isinstance(value, date):
        return value.isoformat()
    return value


def values_of_row(row: dict[str, Any]) -> Values:
    """A backup row's writable fields; a value the column could not hold is taken from `_extra`."""
    fields = writable_fields()
    extra: dict[str, Any] = {}
    if row.get(EXTRA_COLUMN):
        with contextlib.suppress(orjson.JSONDecodeError):
            loaded = orjson.loads(row[EXTRA_COLUMN])
            extra = loaded if isinstance(loaded, dict) else {}
    values: Values = {}
    for name in fields.attributes:
        value = row.get(name)
        values[name] = extra[name] if value is None and name in extra else _wire(value)
    for name, _target, column in fields.relationships:
        values[name] = row.get(column)
    return values


def values_of_record(record: dict[str, Any]) -> Values:
    """A target record's writable fields, as the API sent them."""
    fields = writable_fields()
    attributes = record.get("attributes") or {}
    relationships = record.get("relationships") or {}
    values: Values = {name: attributes.get(name) for name in fields.attributes}
    for name, _target, _column in fields.relationships:
        data = (relationships.get(name) or {}).get("data")
        values[name] = _identifier(data)
    return values


def values_of_body(body: dict[str, Any]) -> Values:
    """The writable fields a create or patch body sets."""
    data = body.get("data") or {}
    values: Values = dict(data.get("attributes") or {})
    for name, relationship in (data.get("relationships") or {}).items():
        values[name] = _identifier(relationship.get("data"))
    return values


def _identifier(data: Any) -> int | None:
    if not isinstance(data, dict):
        return None
    raw = data.get("id")
    if type(raw) is int:
        return raw
    if isinstance(raw, str) and raw.isdigit():
        return int(raw)
    return None


def differences(backup: Values, target: Values) -> dict[str, tuple[Any, Any]]:
    """Field -> (target's value, backup's value) for every writable field that differs."""
    return {
        name: (target.get(name), backup.get(name))
        for name in writable_fields().names
        if target.get(name) != backup.get(name)
    }


def create_body(values: Values) -> dict[str, Any]:
    """A POST body: every writable attribute (nulls too) and relationship, as identifiers."""
    fields = writable_fields()
    relationships = {
        name: {"data": None if values.get(name) is None else {"type": t, "id": values[name]}}
        for name, t, _column in fields.relationships
    }
    attributes = {name: values.get(name) for name in fields.attributes}
    return {"data": {"type": STEP, "attributes": attributes, "relationships": relationships}}


def patch_body(target_id: int, changes: Values) -> dict[str, Any]:
    """A PATCH body setting only `changes` (the fields that differ)."""
    fields = writable_fields()
    targets = {name: t for name, t, _column in fields.relationships}
    data: dict[str, Any] = {"type": STEP, "id": target_id}
    attributes = {k: v for k, v in changes.items() if k not in targets}
    relationships = {
        k: {"data": None if v is None else {"type": targets[k], "id": v}}
        for k, v in changes.items()
        if k in targets
    }
    if attributes:
        data["attributes"] = attributes
    if relationships:
        data["relationships"] = relationships
    return {"data": data}


def lookup_key(values: Values) -> dict[str, Any]:
    return {
        "sequence": values.get("sequence"),
        "order": values.get("order"),
        "stepType": values.get("stepType"),
    }


# ---------------------------------------------------------------------------- the backup


def backup_steps(root: Path | str, run_id: str | None) -> dict[int, Values]:
    """The backup's steps (newest version per id, minus tombstones), as of `run_id` if given,
    read only after every file it reads matched the manifest (`check_backup`)."""
    _document, steps = read_backup(root, run_id)
    return steps


def read_backup(root: Path | str, run_id: str | None) -> tuple[dict[str, Any], dict[int, Values]]:
    """(manifest, steps) of a backup whose manifest and files check out."""
    storage = Storage.open(root, flag="DIR")
    document = manifest.load(storage)
    runs = [str(r.get("run_id")) for r in document.get("runs", []) if isinstance(r, dict)]
    if run_id is not None:
        if run_id not in runs:
            raise UsageError(
                f"{storage.display} holds no run {run_id!r}; its runs are: "
                f"{', '.join(runs) or 'none'}"
            )
        upto = set(runs[: runs.index(run_id) + 1])
        document = {
            **document,
            "files": [
                f
                for f in document.get("files") or []
                if isinstance(f, dict) and f.get("run_id") in upto
            ],
        }
    read = check_backup(storage, document)
    table = current_table(storage, {**document, "files": read}, STEP)
    return document, {int(row["id"]): values_of_row(row) for row in table.to_pylist()}


class BackupDamaged(ExporterError):
    """A file restore would read does not match the manifest (what `verify` reports)."""

    exit_code = ExitCode.VERIFY_MISMATCH


def check_backup(storage: Storage, document: dict[str, Any]) -> list[dict[str, Any]]:
    """The manifest's file entries a restore reads (steps and tombstones), each checked: a
    path inside the backup, and the file's sha256 equal to the manifest's; the manifest's own
    `manifest_sha256` first. `BackupDamaged` (exit 6) naming the first that does not match.

    (A file could still change between this check and its read; this guards a backup at rest,
    tampered or damaged, not one being rewritten while it is restored.)"""
    where = storage.path(manifest.MANIFEST_NAME)
    if document.get("manifest_sha256") != manifest.canonical_digest(document):
        # `document` may be narrowed to a run: check the manifest as it is on disk.
        whole = manifest.load(storage)
        if whole.get("manifest_sha256") != manifest.canonical_digest(whole):
            raise BackupDamaged(
                f"{where} does not match its manifest_sha256 (edited or damaged); restore reads "
                f"nothing from it: run `exporter verify {storage}`"
            )
    entries = document.get("files")
    if not isinstance(entries, list):
        raise BackupDamaged(f"{where} lists no files; run `exporter verify {storage}`")
    read: list[dict[str, Any]] = []
    for entry in entries:
        if not isinstance(entry, dict) or entry.get("type") not in (STEP, TOMBSTONE_TYPE):
            continue
        path, digest = entry.get("path"), entry.get("sha256")
        location = storage.inside(path) if isinstance(path, str) else None
        if location is None or not isinstance(digest, str):
            raise BackupDamaged(
                f"{where} lists a file {path!r} outside the backup or without a sha256; "
                "restore reads nothing from it"
            )
        try:
            actual = storage.sha256(location)
        except FileNotFoundError:
            raise BackupDamaged(
                f"{storage.path(location)} is missing (the manifest lists it): restore reads "
                f"nothing from this backup; run `exporter verify {storage}`"
            ) from None
        except OSError as exc:
            raise OutputError(
                f"cannot read {storage.path(location)}: {exc.strerror or exc}; nothing was restored"
            ) from None
        if actual != digest:
            raise BackupDamaged(
                f"{storage.path(location)} does not match the manifest's sha256 (tampered or "
                f"damaged): restore writes nothing from this backup; run `exporter verify "
                f"{storage}` and restore from an intact copy"
            )
        read.append({**entry, "path": location})
    return read


def backup_account(document: dict[str, Any]) -> Account | None:
    """The account a backup was exported from: its manifest's `account`, else its `source`."""
    recorded = Account.from_json(document.get("account"))
    if recorded is not None:
        return recorded
    source = document.get("source")
    if isinstance(source, str):
        with contextlib.suppress(ValueError):
            return Account(canonical_base_url(source))
    return None


def select_steps(
    backup: dict[int, Values], ids: Sequence[int] | None, sequence: int | None
) -> dict[int, Values]:
    if ids is not None:
        absent = [i for i in ids if i not in backup]
        if absent:
            shown = ", ".join(str(i) for i in absent[:10]) + (" ..." if len(absent) > 10 else "")
            raise UsageError(f"the backup holds no step with id {shown}")
        return {i: backup[i] for i in sorted(set(ids))}
    if sequence is not None:
        chosen = {i: v for i, v in sorted(backup.items()) if v.get("sequence") == sequence}
        if not chosen:
            raise UsageError(f"the backup holds no step of sequence {sequence}")
        return chosen
    return dict(sorted(backup.items()))


# ---------------------------------------------------------------------------- the plan


@dataclass
class PlanEntry:
    action: Action
    old_id: int
    target_id: int | None  # the step on the target (None: gone)
    values: Values  # the backup's
    changes: dict[str, tuple[Any, Any]] = field(default_factory=dict)  # target -> backup
    note: str = ""
    # After --apply:
    result: str = ""  # created | patched | failed | lost | stopped
    new_id: int | None = None
    status: int | None = None
    detail: str = ""


def make_plan(
    selected: dict[int, Values],
    target: dict[int, Values],
    created: dict[int, int],
    mode: Mode,
    *,
    unresolved: frozenset[int] = frozenset(),
    by_id: bool = True,
) -> list[PlanEntry]:
    """Pure: what to do for each selected backup step, given what the target holds now.

    A step gone from the target that this journal already re-created is compared with the
    step it created (so a finished restore, run again, creates nothing). A step with an
    unresolved create is left alone. `by_id=False` (a backup of another account): a target
    step with the backup step's id is not that step; only what this journal created is."""
    plan: list[PlanEntry] = []
    for old_id, values in selected.items():
        if old_id in unresolved:
            note = "an earlier create's answer was lost and it is not on the target (yet)"
            plan.append(PlanEntry(Action.UNRESOLVED, old_id, None, values, note=note))
            continue
        target_id: int | None = None
        if by_id and old_id in target:
            target_id = old_id
        elif created.get(old_id) in target:
            target_id = created[old_id]
        if target_id is None:
            if mode is Mode.ROLLBACK:
                plan.append(
                    PlanEntry(Action.SKIP, old_id, None, values, note="gone (--mode rollback)")
                )
            else:
                plan.append(PlanEntry(Action.CREATE, old_id, None, values))
            continue
        changes = differences(values, target[target_id])
        note = f"re-created as {target_id}" if target_id != old_id else ""
        if not changes:
            plan.append(PlanEntry(Action.EQUAL, old_id, target_id, values, note=note))
        elif mode is Mode.RECREATE:
            note = "differs (--mode recreate)"
            plan.append(PlanEntry(Action.SKIP, old_id, target_id, values, changes, note))
        else:
            plan.append(PlanEntry(Action.PATCH, old_id, target_id, values, changes, note))
    return plan


# ---------------------------------------------------------------------------- sending writes


def _refused(status: int | None) -> bool:
    """A definite answer that the write was not applied: a 4xx that the shared classification
    (`classify_status`) does not call passing (408 and 425 are retried). A 429 reaches here only
    once the client gave up waiting it out; a 401 is an AuthError, handled before."""
    return (
        status is not None
        and 400 <= status < 500
        and classify_status(status) is not StatusClass.RETRY
    )


def _error_text(document: Any) -> str:
    """Every error of a JSON:API errors document: detail (and where), joined, cleaned
    (`clean_text`: every secret this process holds scrubbed, one line, bounded)."""
    if not isinstance(document, dict) or not isinstance(document.get("errors"), list):
        return ""
    parts = []
    for error in document["errors"]:
        if not isinstance(error, dict):
            continue
        detail = error.get("detail", error.get("details", error.get("title", "")))
        pointer = (
            (error.get("source") or {}).get("pointer")
            if isinstance(error.get("source"), dict)
            else None
        )
        parts.append(f"{detail}" + (f" ({pointer})" if pointer else ""))
    # Server text, bound for the journal, the table and stderr: secrets scrubbed, one line.
    return clean_text("; ".join(parts))


# ---------------------------------------------------------------------------- the restore


@dataclass(frozen=True)
class RestoreSettings:
    directory: Path | str  # the backup: a directory, or a URI (s3://bucket/prefix, file://...)
    base_url: str
    run_id: str | None = None
    ids: tuple[int, ...] | None = None
    sequence: int | None = None
    mode: Mode = Mode.BOTH
    apply: bool = False
    journal: Path | None = None
    concurrency: int = 4
    rate_limit: RateLimit = field(default_factory=lambda: RateLimit(10_000, 3600.0))
    lookup_delay: float = 2.0  # wait after a lost answer before looking the write up
    backoff_base: float = 0.5  # seconds before a retried read (or patch), doubling after
    max_url_length: int = 8000
    # The operator's word that the creates left unresolved were not applied: after a last
    # lookup that does not find them, they are sent again.
    resend_lost: bool = False
    # Restore a backup of another account: only creates (and patches of steps created here).
    into_another_account: bool = False


# A step this journal created must have been created after its intent, less this much for the
# two clocks (ours, the API's) disagreeing.
CLOCK_SKEW = 600.0


def target_name(base_url: str) -> str:
    """A file-name-safe name of the target: its canonical base URL (one name however the URL
    is spelled), with a short digest of it, so two names never collide after sanitising."""
    origin = canonical_base_url(base_url)
    slug = re.sub(r"[^A-Za-z0-9.-]+", "_", origin.split("://", 1)[-1]).strip("._")[:60]
    digest = hashlib.sha256(origin.encode()).hexdigest()[:8]
    return f"{slug or 'target'}-{digest}"


def journal_location(directory: Path | str) -> tuple[Path, str]:
    """(folder, file-name prefix) of a backup's restore journals: `DIR/_restore/` for a local
    backup. A backup on an object store cannot hold one (it is appended to and fsynced before
    every write), so they live in this machine's state directory, named after the backup's URI."""
    storage = Storage.open(directory, flag="DIR")
    if storage.local:
        return Path(storage.base) / RESTORE_DIRECTORY, ""
    state = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    backup = re.sub(r"[^A-Za-z0-9._-]", "_", str(storage))
    return Path(state) / "outreach-exporter" / "restore", f"{backup}--"


def default_journal(directory: Path | str, base_url: str) -> Path:
    """`<folder>/<prefix><target>-journal.jsonl`, the target named by its canonical base URL;
    the account behind it (the org its API states) is recorded inside, and checked."""
    folder, prefix = journal_location(directory)
    return folder / f"{prefix}{target_name(base_url)}-journal.jsonl"


def choose_journal(directory: Path | str, base_url: str, account: Account) -> Path:
    """The journal of this backup for `account`: the one whose first line names the same
    account (reached through whatever URL spelling it was), else a new one named after the
    canonical base URL. Several for one account, or one that does not say whose it is
    (an older version's, named by how the host was spelled), are refused: two journals for
    one target would each re-create what the other already did."""
    folder, prefix = journal_location(directory)
    default = default_journal(directory, base_url)
    if not folder.is_dir():
        return default
    mine: list[Path] = []
    for path in sorted(folder.glob(f"{prefix}*-journal.jsonl")):
        if not path.is_file():
            continue
        try:
            state = replay(path)
        except UsageError:
            if path == default:
                raise
            continue  # another account's, or damaged: said so when it is used
        if state.account is None and state.lines:
            raise UsageError(
                f"the restore journal {path} does not say which account it is for (an older "
                "version's); if it is this target's, pass --journal with it; if not, move it "
                f"out of {folder}"
            )
        if state.account is not None and state.account.same_as(account):
            mine.append(path)
    if len(mine) > 1:
        raise UsageError(
            f"{len(mine)} restore journals are for {account.label}: "
            f"{', '.join(str(p) for p in mine)}; pass one with --journal"
        )
    return mine[0] if mine else default


def mapping_path(journal: Path) -> Path:
    return journal.with_name(
        journal.name.removesuffix("-journal.jsonl").removesuffix(".jsonl") + "-mapping.json"
    )


@dataclass
class RestoreReport:
    plan: list[PlanEntry]
    applied: bool
    mode: Mode
    created: dict[int, int]  # old id -> new id (every create the journal has recorded)
    recovered: list[str] = field(default_factory=list)  # unresolved writes settled at start
    warnings: list[str] = field(default_factory=list)
    journal: Path | None = None
    mapping: Path | None = None
    seconds: float = 0.0
    requests: int = 0
    writes: int = 0
    target: Account | None = None

    def count(self, action: Action) -> int:
        return sum(1 for e in self.plan if e.action is action)

    @property
    def failed(self) -> list[PlanEntry]:
        return [e for e in self.plan if e.result == "failed"]

    @property
    def unresolved(self) -> list[PlanEntry]:
        """Steps whose create was sent, its answer lost, and that are not on the target."""
        return [e for e in self.plan if e.result == "unresolved" or e.action is Action.UNRESOLVED]

    @property
    def exit_code(self) -> ExitCode:
        return ExitCode.FAILED if self.failed or self.unresolved else ExitCode.OK

    def error_line(self) -> str | None:
        """One line for stderr when the restore did not finish every step."""
        unresolved = self.unresolved
        if unresolved:
            shown = ", ".join(str(e.old_id) for e in unresolved[:10])
            more = f" and {len(unresolved) - 10} more" if len(unresolved) > 10 else ""
            return (
                f"{len(unresolved)} create(s) unresolved (steps {shown}{more}): each was sent, "
                "its answer was lost and it is not on the target (yet), so it was not sent "
                "again; run the same restore later to look again, or, once you have checked "
                "the target yourself, add --resend-lost to send them again"
            )
        if self.failed:
            return f"{len(self.failed)} step(s) failed (see the table above); fix and run again"
        return None


class Restore:
    """A run of `exporter restore`; `request_stop()` stops starting writes (SIGINT/SIGTERM)."""

    def __init__(self, settings: RestoreSettings, tokens: TokenSource) -> None:
        self.settings = settings
        self.tokens = tokens
        # One spelling of the target for every request (`HTTP://Host:80/api/./v2/` is
        # `http://host/api/v2`); a URL that is not http(s) was refused by the option already.
        self.base_url = canonical_base_url(settings.base_url)
        self.url = collection_url(self.base_url, resource_type(STEP).collection, [])
        self.journal: Journal | None = None
        self.state = JournalState()
        self._stop = False
        self._warnings: list[str] = []
        self._recovered: list[str] = []
        self._waiting: set[int] = set()  # old ids whose create is unresolved, not sent again
        self._lost: list[tuple[PlanEntry, Intent]] = []  # lost in this run: looked up again
        self._created_at: dict[int, float] = {}  # target step id -> its createdAt (epoch)

    def request_stop(self) -> None:
        self._stop = True

    async def run(self) -> RestoreReport:
        s = self.settings
        started = time.monotonic()
        document, backup = await asyncio.to_thread(read_backup, s.directory, s.run_id)
        selected = select_steps(backup, s.ids, s.sequence)
        client_settings = ClientSettings(
            base_url=self.base_url,
            concurrency=s.concurrency,
            rate_limit=s.rate_limit.requests,
            rate_period=s.rate_limit.seconds,
            backoff_base=s.backoff_base,
            give_up_hint="the journal is intact: run the same restore again to finish it",
        )
        async with ApiClient(client_settings, self.tokens) as client:
            self.client = client
            account = await identify(client, self.base_url)
            by_id = self._check_source(document, account)
            journal_path: Path = (
                s.journal
                if s.journal is not None
                else await asyncio.to_thread(choose_journal, s.directory, s.base_url, account)
            )
            if s.apply:
                self.journal = Journal(journal_path)
                self.state = await asyncio.to_thread(self.journal.open, account)
            else:
                # Plan only: read the journal (if any), write nothing (not even the journal).
                self.state = await asyncio.to_thread(replay, journal_path)
                check_account(journal_path, self.state, account)
            try:
                await self._settle_unresolved()
                created = {i: self.state.created[i] for i in selected if i in self.state.created}
                wanted = set(created.values()) | (set(selected) if by_id else set())
                target = await self._fetch_by_ids(sorted(wanted))
                self._check_created(created, target)
                plan = make_plan(
                    selected,
                    target,
                    self.state.created,
                    s.mode,
                    unresolved=frozenset(self._waiting),
                    by_id=by_id,
                )
                if s.apply:
                    await self._apply(plan)
                    await self._look_again()
            except BaseExceptionGroup as group:
                raise _first_error(group) from None
            finally:
                if self.journal is not None:
                    self.journal.close()
            requests = client.stats.requests
        report = RestoreReport(
            plan=plan,
            applied=s.apply,
            mode=s.mode,
            created=dict(self.state.created),
            recovered=self._recovered,
            warnings=self._warnings,
            journal=journal_path if s.apply else None,
            seconds=time.monotonic() - started,
            requests=requests,
            writes=sum(1 for e in plan if e.result in ("created", "patched")),
            target=account,
        )
        if s.apply:
            report.mapping = mapping_path(journal_path)
            await asyncio.to_thread(_write_mapping, report.mapping, account, self.state.created)
            if self._stop:
                done = sum(1 for e in plan if e.result)
                raise Interrupted(
                    f"stopped after {done} of {len(plan)} steps; every write sent is in the "
                    f"journal {journal_path}. Run the same command again to continue"
                )
        return report

    def _check_source(self, document: dict[str, Any], account: Account) -> bool:
        """Whether target steps may be matched by id: the backup is of this account. Another
        account is refused unless `--into-another-account`."""
        source = backup_account(document)
        if source is not None and source.same_as(account):
            return True
        whose = source.label if source is not None else "an account it does not name"
        if not self.settings.into_another_account:
            raise UsageError(
                f"the backup is of {whose}, the target is {account.label}: restoring it there "
                "would patch that account's steps that merely share an id; pass "
                "--into-another-account to only create its steps there"
            )
        self._warnings.append(
            f"backup of {whose} restored into {account.label}: steps are only created, "
            "never patched by id"
        )
        return False

    def _check_created(self, created: dict[int, int], target: dict[int, Values]) -> None:
        """A step the journal says it created must have been created after that intent; one
        created before is an unrelated step (a forged or misplaced journal): refuse."""
        for old_id, new_id in created.items():
            made = self._created_at.get(new_id)
            intent_at = self.state.created_at.get(old_id)
            known = new_id in target and made is not None and intent_at is not None
            if (
                known
                and made is not None
                and intent_at is not None
                and made < intent_at - CLOCK_SKEW
            ):
                raise UsageError(
                    f"the restore journal says step {new_id} was created for backup step "
                    f"{old_id}, but the target created it before that restore ran; the "
                    "journal does not belong to this target: pass another --journal"
                )

    # -- reading the target -------------------------------------------------------------

    def _fields_param(self) -> tuple[str, str]:
        return (f"fields[{STEP}]", ",".join((*writable_fields().names, "createdAt")))

    async def _fetch_pages(self, url: str) -> list[tuple[int, Values]]:
        found: list[tuple[int, Values]] = []
        ids: set[int] = set()
        async for page in paginate(self.client, url, base_url=self.base_url):
            known = len(ids)
            for raw in page_records(page.content, page.url):
                record = check_type(raw, STEP)
                step_id = record_id(record, STEP)
                ids.add(step_id)
                found.append((step_id, values_of_record(record)))
                made = epoch_or_none((record.get("attributes") or {}).get("createdAt"))
                if made is not None:
                    self._created_at[step_id] = made
            page.new_records = len(ids) - known
        return found

    async def _fetch_by_ids(self, ids: Sequence[int]) -> dict[int, Values]:
        """The target's current state of these steps, in `filter[id]=a,b,c` batches."""
        wanted = set(ids)
        batches = list(self._id_batches(ids))
        results: dict[int, Values] = {}
        async with asyncio.TaskGroup() as group:
            tasks = [group.create_task(self._fetch_pages(url)) for url in batches]
        for task in tasks:
            for step_id, values in task.result():
                if step_id in wanted:  # the API has been seen ignoring filters
                    results[step_id] = values
        return results

    def _id_batches(self, ids: Sequence[int]) -> Iterable[str]:
        def url_for(batch: list[int]) -> str:
            return collection_url(
                self.base_url,
                resource_type(STEP).collection,
                [
                    ("filter[id]", ",".join(str(i) for i in batch)),
                    ("page[size]", str(PAGE_SIZE)),
                    self._fields_param(),
                ],
            )

        # Each URL within max_url_length: `id_batches` counts a comma after every id, and the
        # last one has none.
        room = self.settings.max_url_length - wire_length(url_for([])) + 1
        for batch in id_batches(ids, room=room, most=PAGE_SIZE):
            yield url_for(batch)

    async def _sequence_steps(self, sequence: int) -> list[tuple[int, Values]]:
        url = collection_url(
            self.base_url,
            resource_type(STEP).collection,
            [
                ("filter[sequence][id]", str(sequence)),
                ("page[size]", str(PAGE_SIZE)),
                self._fields_param(),
            ],
        )
        seen: dict[int, Values] = {}
        for step_id, values in await self._fetch_pages(url):
            if values.get("sequence") == sequence:
                seen[step_id] = values
        return sorted(seen.items())

    async def _highest_id(self) -> int:
        """The highest step id on the target now (0: none). A page sorted by `-id`, its
        largest id (the API has been seen returning rows slightly out of order)."""
        url = collection_url(
            self.base_url,
            resource_type(STEP).collection,
            [("sort", "-id"), ("page[size]", "50"), (f"fields[{STEP}]", "order")],
        )
        document = await self.client.get_document(url)
        ids = [record_id(check_type(r, STEP), STEP) for r in page_records(document, url)]
        return max(ids, default=0)

    async def _steps_above(self, above: int) -> list[tuple[int, Values]]:
        """Every step with an id above `above` (the steps created since it was the highest)."""
        url = collection_url(
            self.base_url,
            resource_type(STEP).collection,
            [
                ("filter[id]", f"{above + 1}..inf"),
                ("page[size]", str(PAGE_SIZE)),
                self._fields_param(),
            ],
        )
        # (`i > above` again: the API has been seen ignoring filters.)
        return sorted({i: v for i, v in await self._fetch_pages(url) if i > above}.items())

    # -- settling lost answers ------------------------------------------------------------

    async def _settle_unresolved(self) -> None:
        for intent in list(self.state.unresolved):
            if intent.op != "create":
                self._recovered.append(
                    f"patch of step {intent.old_id} (as {intent.target_id}): answer lost; "
                    "read again and planned"
                )
                if self.journal is not None:
                    self.journal.superseded(intent)
                continue
            found = await self._lookup(intent)
            if found is not None:
                self._recovered.append(
                    f"create of step {intent.old_id}: answer lost; found on the target as {found}"
                )
                if self.journal is not None:
                    self.journal.done(intent, found, "lookup")
                else:
                    self.state.created[intent.old_id] = found  # plan only: not recorded
                    self.state.created_at[intent.old_id] = intent.at
            elif self.settings.resend_lost:
                self._recovered.append(
                    f"create of step {intent.old_id}: answer lost; not on the target, and "
                    "--resend-lost says it was not applied: planned again"
                )
                if self.journal is not None:
                    self.journal.absent(intent, "operator")
            else:
                self._recovered.append(
                    f"create of step {intent.old_id}: answer lost; not on the target (yet), "
                    "so it is not sent again (it may still land)"
                )
                self._waiting.add(intent.old_id)
        self.state.unresolved = []

    async def _lookup(self, intent: Intent) -> int | None:
        """The step a create whose answer was lost made, if it is on the target now.

        Candidates: steps that were not there before it was sent (for a step of a sequence:
        not among the sequence's steps then, `seen`; for one without: above the highest id
        then, `above`), that this journal has not recorded as created for another backup step,
        and that are equal in every field sent. Several: the lowest id (and a warning: the
        others may be duplicates made outside this journal). None: not found (which is not
        proof that it was not applied: it may still land)."""
        key = intent.key or {}
        sequence = key.get("sequence")
        wait = intent.at + self.settings.lookup_delay - time.time()
        if wait > 0:
            await asyncio.sleep(wait)  # let a write still in the API's hands land first
        if isinstance(sequence, int):
            steps = [
                (i, v) for i, v in await self._sequence_steps(sequence) if i not in intent.seen
            ]
        elif intent.above is not None:
            steps = await self._steps_above(intent.above)
        else:
            return None  # an older journal's intent: nothing to tell its step by
        claimed = self.state.claimed()
        sent = values_of_body(intent.body)
        exact = [
            step_id
            for step_id, values in steps
            if step_id not in claimed and all(values.get(k) == v for k, v in sent.items())
        ]
        if len(exact) > 1:
            others = ", ".join(str(i) for i in exact[1:])
            self._warnings.append(
                f"step {intent.old_id}: several new steps match its lost create; took "
                f"{exact[0]}, check {others}"
            )
        return exact[0] if exact else None

    async def _look_again(self) -> None:
        """The creates lost in this run that were not found at once: look once more, after
        everything else (a slow write may have landed meanwhile)."""
        for entry, intent in self._lost:
            found = await self._lookup(intent)
            if found is not None:
                assert self.journal is not None
                self.journal.done(intent, found, "lookup")
                entry.result, entry.new_id = "created", found
                entry.note = f"{entry.note}; found by a later lookup"

    # -- applying ---------------------------------------------------------------------------

    async def _apply(self, plan: list[PlanEntry]) -> None:
        slots = asyncio.Semaphore(self.settings.concurrency)

        async def bounded(coro: Any) -> None:
            async with slots:
                await coro

        # Patches first: a create's lookup must not see a step changed by this run after it.
        async with asyncio.TaskGroup() as group:
            for entry in plan:
                if entry.action is Action.PATCH:
                    group.create_task(bounded(self._patch(entry)))
        by_sequence: dict[Any, list[PlanEntry]] = {}
        for entry in plan:
            if entry.action is Action.CREATE:
                by_sequence.setdefault(entry.values.get("sequence"), []).append(entry)

        async def one_sequence(entries: list[PlanEntry]) -> None:
            for entry in sorted(entries, key=lambda e: (e.values.get("order") or 0, e.old_id)):
                await self._create(entry)

        async with asyncio.TaskGroup() as group:
            for entries in by_sequence.values():
                group.create_task(bounded(one_sequence(entries)))

    async def _patch(self, entry: PlanEntry) -> None:
        if self._stop:
            entry.result = "stopped"
            return
        assert self.journal is not None and entry.target_id is not None
        body = patch_body(entry.target_id, {k: new for k, (_old, new) in entry.changes.items()})
        intent = self.journal.new_intent("patch", entry.old_id, body, target_id=entry.target_id)
        url = f"{self.url}/{entry.target_id}"
        try:
            # PATCH is idempotent (the same body twice is the same step): the client may retry.
            status, document = await self.client.send_document("PATCH", url, body)
        except AuthError as exc:
            raise _write_refused(exc) from None
        except ApiError as exc:
            if not _refused(exc.status):
                raise  # the API is failing, not this step: stop; the journal settles it later
            self._fail(entry, intent, exc.status, str(exc).split("; status")[0])
            return
        if status == 422:
            self._fail(entry, intent, status, _error_text(document))
            return
        self.journal.done(intent, None, "answer")
        entry.result = "patched"

    async def _create(self, entry: PlanEntry) -> None:
        """Send one create, once. A lost answer is looked up; not found, it stays unresolved."""
        if self._stop:
            entry.result = "stopped"
            return
        assert self.journal is not None
        body = create_body(entry.values)
        key = lookup_key(entry.values)
        sequence = key["sequence"]
        seen: frozenset[int] = frozenset()
        above: int | None = None
        if isinstance(sequence, int):
            seen = frozenset(i for i, _v in await self._sequence_steps(sequence))
        else:
            above = await self._highest_id()
        intent = self.journal.new_intent(
            "create", entry.old_id, body, key=key, seen=seen, above=above
        )
        try:
            status, document = await self.client.send_document(
                "POST", self.url, body, max_attempts=1
            )
        except AuthError as exc:
            self.journal.failed(intent, exc.status, exc.message)  # refused: not applied
            raise _write_refused(exc) from None
        except NotSentError as exc:
            # The connection was never opened: nothing was sent, so it provably was not
            # applied: `absent`, and the next run sends it again (no lookup, no --resend-lost).
            self.journal.absent(intent, "not sent")
            entry.result, entry.status = "failed", None
            entry.detail = f"{exc.message}; the next run sends it again"
            return
        except ApiError as exc:
            if _refused(exc.status):
                self._fail(entry, intent, exc.status, exc.message)
                return
            lost = exc.message
        except UnreachableError as exc:
            lost = str(exc)
        else:
            if classify_status(status) is not StatusClass.OK:  # a 422: the API refused it
                self._fail(entry, intent, status, _error_text(document) or f"HTTP {status}")
                return
            new_id = _created_id(document)
            if new_id is not None and new_id not in seen and new_id not in self.state.claimed():
                self.journal.done(intent, new_id, "answer")
                entry.result, entry.new_id = "created", new_id
                return
            # An answer naming no step, or one that was there before: do not believe it.
            lost = f"HTTP {status} naming no new step"
        found = await self._lookup(intent)
        if found is not None:
            self.journal.done(intent, found, "lookup")
            entry.result, entry.new_id = "created", found
            entry.note = f"answer lost ({lost}); found by lookup"
            return
        entry.result = "unresolved"
        entry.note = f"answer lost ({lost}); not on the target (yet): not sent again"
        self._lost.append((entry, intent))

    def _fail(self, entry: PlanEntry, intent: Intent, status: int | None, detail: str) -> None:
        assert self.journal is not None
        self.journal.failed(intent, status, detail)
        entry.result, entry.status, entry.detail = "failed", status, detail


def _write_refused(exc: AuthError) -> AuthError:
    """A 401/403 on a write, said as what it means for a restore."""
    if exc.status != 403:
        return exc
    return AuthError(
        "the API refused the write (403): the app needs the sequenceSteps.write scope",
        url=exc.url,
        status=exc.status,
        error_id=exc.error_id,
    )


def _first_error(exc: BaseException) -> BaseException:
    """The first real error inside TaskGroup's ExceptionGroup (the others were cancellations)."""
    while isinstance(exc, BaseExceptionGroup):
        exc = exc.exceptions[0]
    return exc


def _created_id(document: dict[str, Any] | None) -> int | None:
    data = document.get("data") if isinstance(document, dict) else None
    if not isinstance(data, dict) or data.get("type") != STEP:
        return None
    try:
        return record_id(data, STEP)
    except ApiError:
        return None


def _write_mapping(path: Path, account: Account, created: dict[int, int]) -> None:
    """Old id -> new id of every create the journal records, replaced atomically."""
    document = {
        "target": account.to_json(),
        "created": [{"old_id": old, "new_id": new} for old, new in sorted(created.items())],
    }
    temporary = path.with_name("." + path.name + ".inprogress")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(temporary, "wb") as handle:
            handle.write(orjson.dumps(document, option=orjson.OPT_INDENT_2))
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, path)
    except OSError as exc:
        raise OutputError(f"cannot write the id mapping {path}: {exc.strerror}") from None


# ---------------------------------------------------------------------------- output


def _shown(value: Any, limit: int = 40) -> str:
    text = "null" if value is None else repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def render(report: RestoreReport) -> list[str]:
    """The plan (or what was done) as a table, then the summary line."""
    lines: list[str] = []
    rows = [e for e in report.plan if e.action is not Action.EQUAL or e.result == "failed"]
    if rows:
        lines.append(
            f"{'action':<8} {'step':>10} {'target':>10} {'sequence':>9} {'order':>5}  {'stepType':<12} detail"
        )
    for entry in rows:
        action = entry.result or entry.action.value
        target = entry.new_id or entry.target_id
        detail = entry.note
        if entry.result == "failed":
            detail = entry.detail if entry.status is None else f"{entry.status}: {entry.detail}"
        elif entry.changes and entry.action in (Action.PATCH, Action.SKIP):
            changed = "; ".join(
                f"{k}: {_shown(a)} -> {_shown(b)}" for k, (a, b) in entry.changes.items()
            )
            detail = f"{detail + ': ' if detail else ''}{changed}"
        v = entry.values
        lines.append(
            f"{action:<8} {entry.old_id:>10} {target or '-':>10} {v.get('sequence') or '-':>9} "
            f"{'-' if v.get('order') is None else v['order']:>5}  {v.get('stepType') or '-':<12} {detail}".rstrip()
        )
    for note in report.recovered:
        lines.append(f"journal: {note}")
    for warning in report.warnings:
        lines.append(f"warning: {warning}")
    lines.append(summary(report))
    return lines


def summary(report: RestoreReport) -> str:
    counts = Counter(e.result for e in report.plan)
    equal = report.count(Action.EQUAL)
    skipped = report.count(Action.SKIP)
    unresolved = len(report.unresolved)
    waiting = f", {unresolved} unresolved (not sent again)" if unresolved else ""
    if not report.applied:
        return (
            f"plan ({report.mode.value}): {report.count(Action.CREATE)} to create, "
            f"{report.count(Action.PATCH)} to patch, {equal} equal{waiting}"
            + (f", {skipped} outside --mode {report.mode.value}" if skipped else "")
            + f" of {len(report.plan)} steps; nothing written (pass --apply to write), "
            f"{report.requests} requests"
        )
    text = (
        f"restored ({report.mode.value}): {counts['created']} created, {counts['patched']} "
        f"patched, {equal} equal, {counts['failed']} failed{waiting}"
        + (f", {skipped} outside --mode {report.mode.value}" if skipped else "")
        + f" of {len(report.plan)} steps in {report.seconds:.1f}s, {report.requests} requests"
    )
    if report.created:
        pairs = sorted(report.created.items())
        shown = ", ".join(f"{old}->{new}" for old, new in pairs[:20])
        more = f" and {len(pairs) - 20} more" if len(pairs) > 20 else ""
        text += f"; created ids (old->new, all restores to this target) {shown}{more} in {report.mapping}"
    return text


__all__ = [
    "Action",
    "Mode",
    "PlanEntry",
    "Restore",
    "RestoreReport",
    "RestoreSettings",
    "backup_steps",
    "make_plan",
]
