"""`exporter restore DIR`: put sequence steps back from a backup: plan against the target, then create and patch them exactly once.

The parts live beside this module: `source` reads and checks the backup, `fields` says what a
step's writable fields are and builds write bodies, `plan` decides, `journal` records every write,
`report` says what happened; this module identifies the target, settles lost answers and sends.

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

Writable fields come from the OpenAPI file (`fields.writable_fields`): attributes and to-one
relationships not marked read-only. Counters, timestamps, displayName, creator/updater,
mailings, calls, tasks and sequenceTemplates are never sent.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import re
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

from exporter.api.account import Account, canonical_base_url, identify
from exporter.api.auth import TokenSource
from exporter.api.client import ApiClient, ClientSettings, NotSentError
from exporter.api.documents import page_records
from exporter.api.pagination import collection_url, id_batches, paginate, wire_length
from exporter.backup.storage import Storage
from exporter.core.config import RateLimit
from exporter.core.errors import (
    ApiError,
    AuthError,
    Interrupted,
    OutputError,
    StatusClass,
    UnreachableError,
    UsageError,
    classify_status,
    clean_text,
)
from exporter.core.times import epoch_or_none
from exporter.model.normalize import (
    check_type,
    record_id,
)
from exporter.model.schema import resource_type
from exporter.restore.fields import (
    STEP,
    Values,
    create_body,
    lookup_key,
    patch_body,
    values_of_body,
    values_of_record,
    writable_fields,
)
from exporter.restore.journal import Intent, Journal, JournalState, check_account, replay
from exporter.restore.modes import Mode
from exporter.restore.plan import Action, PlanEntry, make_plan
from exporter.restore.report import RestoreReport
from exporter.restore.source import backup_account, read_backup, select_steps

RESTORE_DIRECTORY = "_restore"
PAGE_SIZE = 1000

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


__all__ = ["Mode", "Restore", "RestoreSettings"]
