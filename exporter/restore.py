"""`exporter restore DIR`: put sequence steps back from a backup: plan against the target, then create and patch them exactly once.

Order of a restore:
1. read the backup's state of the steps (`compact.current_table`: the newest version per id minus
   tombstones, or as of `--run`), and select them (`--ids`, `--sequence`, or all);
2. with `--apply`, open the journal and resolve every write it left unresolved (a kill or a lost
   answer): a create is looked up on the target before anything else is sent; a patch is simply
   planned again (PATCH is idempotent);
3. read the target's state of the selected steps in `filter[id]=a,b,c` batches (for steps an
   earlier restore re-created, the id it created), and plan: create what is gone, patch what
   differs in a writable field, leave what is equal;
4. with `--apply`: every patch, then the creates, one at a time per sequence (a create's lookup
   key is its sequence, so two in flight in one sequence could be mistaken for each other).

Exactly once without an idempotency key (the journal's rules are in `exporter.journal`): before
a create is sent, the step ids its sequence holds are read and recorded with the intent; a create
whose answer is lost (dropped connection, unreadable 201, 5xx, kill) is looked up among the
sequence's steps that are *not* in that set and not created by this journal for another step,
by order and stepType (and, if several, by every field sent). Found: done. Not found: sent again
under a new intent. POSTs are therefore never retried by the HTTP client: `_WriteSender` sends
once and reports a lost answer instead.

Writable fields come from the OpenAPI file (`schema.resource_type`): attributes and to-one
relationships not marked read-only. Counters, timestamps, displayName, creator/updater,
mailings, calls, tasks and sequenceTemplates are never sent.
"""

from __future__ import annotations

import asyncio
import contextlib
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
from urllib.parse import urlsplit

import aiohttp
import click
import orjson

from exporter import manifest
from exporter.auth import Secret, TokenSource
from exporter.client import ApiClient, ClientSettings
from exporter.compact import current_table
from exporter.config import DEFAULT_BASE_URL, RateLimit
from exporter.errors import (
    ApiError,
    AuthError,
    ExitCode,
    ExporterError,
    Interrupted,
    OutputError,
    ResponseError,
    UsageError,
    redact_url,
)
from exporter.journal import Intent, Journal, JournalState, replay
from exporter.normalize import EXTRA_COLUMN, check_type, record_id, table_layout
from exporter.options import BaseUrlType, RateLimitType, credential_options
from exporter.pagination import ChainGuard, collection_url, next_link, page_records
from exporter.schema import Shape, resource_type
from exporter.storage import Storage

STEP = "sequenceStep"
RESTORE_DIRECTORY = "_restore"
PAGE_SIZE = 1000


class Mode(StrEnum):
    RECREATE = "recreate"  # only create missing steps
    ROLLBACK = "rollback"  # only patch differing ones
    BOTH = "both"


class Action(StrEnum):
    CREATE = "create"
    PATCH = "patch"
    EQUAL = "equal"
    SKIP = "skip"  # needs a write the --mode does not make


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
        return value.isoformat().replace("+00:00", "Z")
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
    """The backup's steps (newest version per id, minus tombstones), as of `run_id` if given."""
    document = manifest.load(root)
    runs = [str(r["run_id"]) for r in document.get("runs", [])]
    if run_id is not None:
        if run_id not in runs:
            raise UsageError(
                f"{root} holds no run {run_id!r}; its runs are: {', '.join(runs) or 'none'}"
            )
        upto = set(runs[: runs.index(run_id) + 1])
        document = {**document, "files": [f for f in document["files"] if f["run_id"] in upto]}
    table = current_table(root, document, STEP)
    return {int(row["id"]): values_of_row(row) for row in table.to_pylist()}


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
) -> list[PlanEntry]:
    """Pure: what to do for each selected backup step, given what the target holds now.

    A step gone from the target that this journal already re-created is compared with the
    step it created (so a finished restore, run again, creates nothing)."""
    plan: list[PlanEntry] = []
    for old_id, values in selected.items():
        target_id: int | None = None
        if old_id in target:
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


class LostAnswer(Exception):
    """A write was sent and no definite answer came back: it may or may not have been applied."""


class _WriteSender:
    """Sends one write exactly once: the client's limiter, token refresh on 401 and 429 waits
    (neither applied the write), but no retry after a transport failure, a 5xx or an unreadable
    2xx, which are reported as `LostAnswer` for the journal lookup to settle.

    (`ApiClient.send_document` retries transport failures, which for a POST could create a step
    twice; this is the "send once" mode it lacks.)"""

    def __init__(self, client: ApiClient, max_rate_limit_waits: int = 50) -> None:
        self.client = client
        self.max_rate_limit_waits = max_rate_limit_waits

    async def send(
        self, method: str, url: str, document: dict[str, Any]
    ) -> tuple[int, dict[str, Any] | None]:
        """(status, parsed body) of a definite answer: a 2xx with a readable body, or a 4xx."""
        client = self.client
        limiter = client._limiter  # the run's shared request budget (aiolimiter)
        assert limiter is not None, "ApiClient used outside `async with`"
        data = orjson.dumps(document)
        refreshed = False
        rate_waits = 0
        while True:
            await limiter.acquire()
            token = await client.tokens.token()
            client.stats.requests += 1
            try:
                async with client.session.request(
                    method, url, data=data, headers={"Authorization": f"Bearer {token}"}
                ) as response:
                    status = response.status
                    headers = response.headers
                    body = await response.read()
            except (aiohttp.ClientError, TimeoutError) as exc:
                raise LostAnswer(f"transport failure ({type(exc).__name__})") from None
            client.stats.statuses[status] += 1
            client.stats.bytes_received += len(body)
            parsed = _try_json(body)
            if status == 429:
                client.stats.rate_limited += 1
                rate_waits += 1
                if rate_waits > self.max_rate_limit_waits:
                    raise ApiError("still rate limited after many waits", url=url, status=429)
                await asyncio.sleep(_rate_limit_delay(headers, client.settings.rate_period))
                continue  # a 429 was not applied: the same request again
            if status == 401:
                if refreshed:
                    raise AuthError("the API refused a freshly refreshed access token", url=url)
                refreshed = True
                client.stats.token_refreshes += 1
                await client.tokens.refresh(token)
                continue
            if status == 403:
                raise AuthError(
                    "the API refused the write (403): the app needs the sequenceSteps.write scope"
                    + (f": {_error_text(parsed)}" if _error_text(parsed) else ""),
                    url=url,
                    status=status,
                )
            if 200 <= status < 300:
                if not isinstance(parsed, dict):
                    raise LostAnswer(f"HTTP {status} with an unreadable body")
                return status, parsed
            if 400 <= status < 500 and status != 408:
                return status, parsed if isinstance(parsed, dict) else None
            # 5xx, 408 or anything else: a gateway may have passed the write on; look it up.
            raise LostAnswer(f"HTTP {status}")


def _try_json(body: bytes) -> Any:
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError:
        return None


def _rate_limit_delay(headers: Any, period: float) -> float:
    """How long a 429 says to wait: Retry-After, else until X-RateLimit-Reset, else a minute."""
    with contextlib.suppress(TypeError, ValueError):
        return max(0.05, min(float(headers.get("Retry-After")), period))
    with contextlib.suppress(TypeError, ValueError):
        return max(0.05, min(float(headers.get("X-RateLimit-Reset")) - time.time() + 0.05, period))
    return min(60.0, period)


def _error_text(document: Any) -> str:
    """Every error of a JSON:API errors document: detail (and where), joined."""
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
    return "; ".join(parts)


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
    max_attempts: int = 6  # creates sent per step (each after a lookup proved the last absent)
    backoff_base: float = 0.5  # seconds before the second attempt, doubling after
    max_url_length: int = 8000


def target_name(base_url: str) -> str:
    """A file-name-safe name of the target: host, and port when one is given."""
    parts = urlsplit(base_url)
    name = (parts.hostname or "target") + (f"_{parts.port}" if parts.port else "")
    return re.sub(r"[^A-Za-z0-9._-]", "_", name)


def default_journal(directory: Path | str, base_url: str) -> Path:
    """`DIR/_restore/<target>-journal.jsonl` for a local backup. A backup on an object store
    cannot hold it (the journal is appended to and fsynced before every write), so it lives in
    this machine's state directory, named after the backup's URI."""
    name = f"{target_name(base_url)}-journal.jsonl"
    storage = Storage.open(directory, flag="DIR")
    if storage.local:
        return Path(storage.base) / RESTORE_DIRECTORY / name
    state = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    backup = re.sub(r"[^A-Za-z0-9._-]", "_", str(storage))
    return Path(state) / "outreach-exporter" / "restore" / f"{backup}--{name}"


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

    def count(self, action: Action) -> int:
        return sum(1 for e in self.plan if e.action is action)

    @property
    def failed(self) -> list[PlanEntry]:
        return [e for e in self.plan if e.result == "failed"]

    @property
    def exit_code(self) -> ExitCode:
        return ExitCode.FAILED if self.failed else ExitCode.OK


class Restore:
    """A run of `exporter restore`; `request_stop()` stops starting writes (SIGINT/SIGTERM)."""

    def __init__(self, settings: RestoreSettings, tokens: TokenSource) -> None:
        self.settings = settings
        self.tokens = tokens
        self.url = collection_url(settings.base_url, resource_type(STEP).collection, [])
        self.journal: Journal | None = None
        self.state = JournalState()
        self._stop = False
        self._warnings: list[str] = []
        self._recovered: list[str] = []

    def request_stop(self) -> None:
        self._stop = True

    async def run(self) -> RestoreReport:
        s = self.settings
        started = time.monotonic()
        backup = await asyncio.to_thread(backup_steps, s.directory, s.run_id)
        selected = select_steps(backup, s.ids, s.sequence)
        journal_path = s.journal or default_journal(s.directory, s.base_url)
        client_settings = ClientSettings(
            base_url=s.base_url,
            concurrency=s.concurrency,
            rate_limit=s.rate_limit.requests,
            rate_period=s.rate_limit.seconds,
            backoff_base=s.backoff_base,
            give_up_hint="the journal is intact: run the same restore again to finish it",
        )
        async with ApiClient(client_settings, self.tokens) as client:
            self.client = client
            self.sender = _WriteSender(client)
            if s.apply:
                self.journal = Journal(journal_path)
                self.state = self.journal.open()
            elif journal_path.exists():
                # Plan only: read the journal, write nothing (not even the journal).
                self.state = await asyncio.to_thread(replay, journal_path)
            try:
                await self._settle_unresolved()
                target_ids = set(selected) | {
                    self.state.created[i] for i in selected if i in self.state.created
                }
                target = await self._fetch_by_ids(sorted(target_ids))
                plan = make_plan(selected, target, self.state.created, s.mode)
                if s.apply:
                    await self._apply(plan)
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
        )
        if s.apply:
            report.mapping = mapping_path(journal_path)
            await asyncio.to_thread(_write_mapping, report.mapping, s.base_url, self.state.created)
            if self._stop:
                done = sum(1 for e in plan if e.result)
                raise Interrupted(
                    f"stopped after {done} of {len(plan)} steps; every write sent is in the "
                    f"journal {journal_path}. Run the same command again to continue"
                )
        return report

    # -- reading the target -------------------------------------------------------------

    def _fields_param(self) -> tuple[str, str]:
        return (f"fields[{STEP}]", ",".join(writable_fields().names))

    async def _fetch_pages(self, url: str) -> list[tuple[int, Values]]:
        found: list[tuple[int, Values]] = []
        ids: set[int] = set()
        guard = ChainGuard(url)
        next_url: str | None = url
        while next_url is not None:
            document = await self.client.get_document(next_url)
            known = len(ids)
            for raw in page_records(document, next_url):
                record = check_type(raw, STEP)
                step_id = record_id(record, STEP)
                ids.add(step_id)
                found.append((step_id, values_of_record(record)))
            following = next_link(document, next_url, self.settings.base_url)
            if following is not None:
                guard.follow(next_url, following, len(ids) - known)
            next_url = following
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
                self.settings.base_url,
                resource_type(STEP).collection,
                [
                    ("filter[id]", ",".join(str(i) for i in batch)),
                    ("page[size]", str(PAGE_SIZE)),
                    self._fields_param(),
                ],
            )

        batch: list[int] = []
        for step_id in ids:
            candidate = [*batch, step_id]
            if batch and (
                len(candidate) > PAGE_SIZE or len(url_for(candidate)) > self.settings.max_url_length
            ):
                yield url_for(batch)
                candidate = [step_id]
            batch = candidate
        if batch:
            yield url_for(batch)

    async def _sequence_steps(self, sequence: int) -> list[tuple[int, Values]]:
        url = collection_url(
            self.settings.base_url,
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
            else:
                self._recovered.append(
                    f"create of step {intent.old_id}: answer lost; not on the target, so it is "
                    "created again"
                )
                if self.journal is not None:
                    self.journal.absent(intent)
        self.state.unresolved = []

    async def _lookup(self, intent: Intent) -> int | None:
        """The step a create whose answer was lost made, if it made one.

        Candidates: steps of the intent's sequence that were not there before it was sent
        (`seen`) and that this journal has not recorded as created for another backup step,
        with the key's order and stepType. Several: those equal in every field sent win, then
        the lowest id (and a warning: the others may be duplicates made outside this journal)."""
        key = intent.key or {}
        sequence = key.get("sequence")
        if not isinstance(sequence, int):
            return None  # the API refuses a step without a sequence: nothing was created
        wait = intent.at + self.settings.lookup_delay - time.time()
        if wait > 0:
            await asyncio.sleep(wait)  # let a write still in the API's hands land first
        claimed = self.state.claimed()
        sent = values_of_body(intent.body)
        candidates = [
            (step_id, values)
            for step_id, values in await self._sequence_steps(sequence)
            if step_id not in intent.seen
            and step_id not in claimed
            and values.get("order") == key.get("order")
            and values.get("stepType") == key.get("stepType")
        ]
        if not candidates:
            return None
        exact = [c for c in candidates if all(c[1].get(k) == v for k, v in sent.items())]
        chosen = exact or candidates
        if len(chosen) > 1:
            others = ", ".join(str(c[0]) for c in chosen[1:])
            self._warnings.append(
                f"step {intent.old_id}: several new steps match its lost create; took "
                f"{chosen[0][0]}, check {others}"
            )
        return chosen[0][0]

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
        except AuthError:
            raise
        except ApiError as exc:
            if exc.status is None or not 400 <= exc.status < 500 or exc.status == 429:
                raise  # the API is failing, not this step: stop; the journal settles it later
            self._fail(entry, intent, exc.status, str(exc).split("; status")[0])
            return
        if status == 422:
            self._fail(entry, intent, status, _error_text(document))
            return
        self.journal.done(intent, None, "answer")
        entry.result = "patched"

    async def _create(self, entry: PlanEntry) -> None:
        assert self.journal is not None
        body = create_body(entry.values)
        key = lookup_key(entry.values)
        sequence = key["sequence"]
        attempts = 0
        while True:
            if self._stop:
                entry.result = "stopped"
                return
            attempts += 1
            seen: frozenset[int] = frozenset()
            if isinstance(sequence, int):
                seen = frozenset(i for i, _v in await self._sequence_steps(sequence))
            intent = self.journal.new_intent("create", entry.old_id, body, key=key, seen=seen)
            try:
                status, document = await self.sender.send("POST", self.url, body)
            except LostAnswer as lost:
                found = await self._lookup(intent)
                if found is not None:
                    self.journal.done(intent, found, "lookup")
                    entry.result, entry.new_id = "created", found
                    entry.note = f"answer lost ({lost}); found by lookup"
                    return
                self.journal.absent(intent)
                if attempts >= self.settings.max_attempts:
                    raise ApiError(
                        f"giving up on re-creating step {entry.old_id} after {attempts} "
                        f"attempts: {lost}",
                        url=self.url,
                    ) from None
                await asyncio.sleep(min(30.0, self.settings.backoff_base * 2 ** (attempts - 1)))
                continue
            if 200 <= status < 300:
                new_id = _created_id(document)
                if new_id is None:
                    # A 2xx that does not say what it made: settle it as a lost answer.
                    found = await self._lookup(intent)
                    if found is None:
                        raise ResponseError(
                            f"the API accepted step {entry.old_id} but its answer names no "
                            "step, and none was found; run again to retry",
                            url=self.url,
                        )
                    new_id = found
                self.journal.done(intent, new_id, "answer")
                entry.result, entry.new_id = "created", new_id
                return
            self._fail(entry, intent, status, _error_text(document) or f"HTTP {status}")
            return

    def _fail(self, entry: PlanEntry, intent: Intent, status: int | None, detail: str) -> None:
        assert self.journal is not None
        self.journal.failed(intent, status, detail)
        entry.result, entry.status, entry.detail = "failed", status, detail


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
    except ResponseError:
        return None


def _write_mapping(path: Path, base_url: str, created: dict[int, int]) -> None:
    """Old id -> new id of every create the journal records, replaced atomically."""
    document = {
        "target": redact_url(base_url),
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
            detail = f"{entry.status}: {entry.detail}"
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
    if not report.applied:
        return (
            f"plan ({report.mode.value}): {report.count(Action.CREATE)} to create, "
            f"{report.count(Action.PATCH)} to patch, {equal} equal"
            + (f", {skipped} outside --mode {report.mode.value}" if skipped else "")
            + f" of {len(report.plan)} steps; nothing written (pass --apply to write), "
            f"{report.requests} requests"
        )
    text = (
        f"restored ({report.mode.value}): {counts['created']} created, {counts['patched']} "
        f"patched, {equal} equal, {counts['failed']} failed"
        + (f", {skipped} outside --mode {report.mode.value}" if skipped else "")
        + f" of {len(report.plan)} steps in {report.seconds:.1f}s, {report.requests} requests"
    )
    if report.created:
        pairs = sorted(report.created.items())
        shown = ", ".join(f"{old}->{new}" for old, new in pairs[:20])
        more = f" and {len(pairs) - 20} more" if len(pairs) > 20 else ""
        text += f"; created ids (old->new, all restores to this target) {shown}{more} in {report.mapping}"
    return text


# ---------------------------------------------------------------------------- command


class _IdList(click.ParamType[tuple[int, ...]]):
    name = "ID,ID,..."

    def convert(
        self, value: Any, param: click.Parameter | None, ctx: click.Context | None
    ) -> tuple[int, ...]:
        if isinstance(value, tuple):
            return value
        parts = [p.strip() for p in str(value).split(",") if p.strip()]
        if not parts or not all(p.isdigit() for p in parts):
            self.fail(f"{value!r} is not a comma list of step ids, e.g. 1,2,3", param, ctx)
        return tuple(int(p) for p in parts)


@click.command("restore")
@click.argument("directory", metavar="DIR")
@click.option("--run", "run_id", help="Restore the state as of this run id.  [default: newest]")
@click.option("--ids", type=_IdList(), help="Only these backed-up step ids (comma list).")
@click.option(
    "--sequence", type=click.IntRange(min=1), help="Only the backed-up steps of this sequence."
)
@click.option(
    "--mode",
    type=click.Choice([m.value for m in Mode]),
    default=Mode.BOTH.value,
    show_default=True,
    help="recreate: only create gone steps; rollback: only patch changed ones; both.",
)
@click.option(
    "--apply", is_flag=True, help="Write. Without it restore only reads and prints its plan."
)
@click.option(
    "--journal",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Write journal.  [default: DIR/_restore/<target-host>-journal.jsonl; for a backup "
    "on an object store, $XDG_STATE_HOME/outreach-exporter/restore/]",
)
@click.option(
    "--base-url",
    type=BaseUrlType(),
    default=DEFAULT_BASE_URL,
    show_default=True,
    envvar="OUTREACH_BASE_URL",
    help="API base URL.  [env: OUTREACH_BASE_URL]",
)
@credential_options
@click.option(
    "--concurrency",
    type=click.IntRange(1, 64),
    default=4,
    show_default=True,
    help="Requests in flight at once.",
)
@click.option(
    "--rate-limit",
    type=RateLimitType(),
    default="10000/3600",
    show_default=True,
    envvar="OUTREACH_RATE_LIMIT",
    help="Request budget as N/SECONDS.",
)
@click.option(
    "--lookup-delay",
    type=click.FloatRange(min=0),
    default=2.0,
    show_default=True,
    help="Seconds to wait after a write whose answer was lost before looking it up.",
)
def restore_command(
    directory: str,
    run_id: str | None,
    ids: tuple[int, ...] | None,
    sequence: int | None,
    mode: str,
    apply: bool,
    journal: Path | None,
    base_url: str,
    token: str | None,
    client_id: str | None,
    client_secret: str | None,
    refresh_token: str | None,
    redirect_uri: str | None,
    token_file: Path | None,
    concurrency: int,
    rate_limit: RateLimit,
    lookup_delay: float,
) -> None:
    """Put sequence steps back from a backup: plan (default), or --apply the creates and patches."""
    from exporter.cli import _run, _token_source, fail
    from exporter.config import ExportSettings

    try:
        if ids is not None and sequence is not None:
            raise UsageError("--ids and --sequence select steps in two ways; pass one of them")
        if not Storage.open(directory, flag="DIR").exists(manifest.MANIFEST_NAME):
            raise UsageError(f"{directory} holds no finished export to restore from")
        auth = ExportSettings(
            out=directory,
            base_url=base_url,
            token=Secret(token) if token else None,
            client_id=client_id,
            client_secret=Secret(client_secret) if client_secret else None,
            refresh_token=Secret(refresh_token) if refresh_token else None,
            redirect_uri=redirect_uri,
            token_file=token_file,
        )
        settings = RestoreSettings(
            directory=directory,
            base_url=base_url,
            run_id=run_id,
            ids=ids,
            sequence=sequence,
            mode=Mode(mode),
            apply=apply,
            journal=journal,
            concurrency=concurrency,
            rate_limit=rate_limit,
            lookup_delay=lookup_delay,
        )
        job = Restore(settings, _token_source(auth))
        report: RestoreReport = _run(job.run, job.request_stop)
    except ExporterError as exc:
        fail(exc)
        return
    for line in render(report):
        click.echo(line)
    raise SystemExit(int(report.exit_code))


__all__ = [
    "Action",
    "Mode",
    "PlanEntry",
    "Restore",
    "RestoreReport",
    "RestoreSettings",
    "backup_steps",
    "make_plan",
    "restore_command",
]
