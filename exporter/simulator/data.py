"""Deterministic generation of the simulated records into a compact columnar index (arrays, not dicts)."""

from __future__ import annotations

import random
import re
import uuid
from array import array
from bisect import bisect_left
from collections.abc import Callable
from contextvars import ContextVar
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import cache, lru_cache
from typing import Any

from exporter.model.schema import (
    RESOURCE_TYPES,
    Attribute,
    Kind,
    ResourceType,
    WireForm,
    resource_type,
)

from .config import SimulatorConfig

# Every generated timestamp lies before this instant (2025-01-01T00:00:00Z), so that live
# mutations, stamped with the simulator clock, are always newer than generated data.
BASE_TIME = 1_735_689_600
HISTORY_S = 5 * 365 * 86_400  # generated records were created over the five years before BASE_TIME

STEP_TYPES: tuple[str, ...] = ("auto_email", "manual_email", "call", "task")
EMAIL_STEP_CODES = frozenset({0, 1})
CALL_STEP_CODE = 2
SEQUENCE_TYPES: tuple[str, ...] = ("interval", "date")
# A step's `schedule` column holds an interval in seconds or a day number, as its sequence says.
SCHEDULE_NONE, SCHEDULE_INTERVAL, SCHEDULE_DATE = 0, 1, 2

# Time attributes served from a per-row column other than createdAt/updatedAt: (type, attribute)
# -> the column. An append-only log's own time attribute (an auditLog's `timestamp` is when it
# was written, its createdAt; an event's `eventAt`, shortly before its createdAt).
TIME_COLUMNS: dict[tuple[str, str], str] = {
    ("auditLog", "timestamp"): "created",
    ("event", "eventAt"): "eventAt",
}

# Attribute variants per type: rows take variant `row % POOL_SIZE`, so rows 0 and 1 of every
# type (the two lowest ids) carry the variants whose strings are exactly at their maxLength.
POOL_SIZE = 2048
MAX_LENGTH_VARIANTS = 2

# Realistic vocabularies for string attributes whose values clients filter on.
VOCABULARY: dict[tuple[str, str], tuple[str, ...]] = {
    ("mailing", "state"): (
        "bounced",
        "delivered",
        "delivering",
        "drafted",
        "failed",
        "opened",
        "placeholder",
        "queued",
        "replied",
        "scheduled",
    ),
    ("mailing", "mailingType"): ("sequence", "single", "campaign"),
    ("call", "direction"): ("inbound", "outbound"),
    ("call", "outcome"): ("Answered", "Not Answered"),
    ("call", "state"): ("completed", "in_progress", "no_answer"),
    ("task", "state"): ("complete", "incomplete", "pending"),
    ("task", "taskType"): ("action_item", "call", "email", "in_person", "linkedin"),
    ("task", "action"): ("action_item", "call", "email", "in_person"),
    ("sequence", "shareType"): ("private", "read_only", "shared"),
    ("taskPriority", "name"): ("High", "Medium", "Low"),
    # Types beyond the step world (the account world, `account.py`).
    ("sequenceState", "state"): ("active", "paused", "finished", "failed", "pending", "disabled"),
    ("sequenceState", "pauseReason"): ("ooto", "manual", "bounce", "unsubscribe", "reply"),
    ("emailAddress", "emailType"): ("work", "personal", "other"),
    ("emailAddress", "status"): ("pending", "bounced", "unsubscribed", "opted_out"),
    ("phoneNumber", "phoneType"): ("mobile", "work", "home", "voip", "other"),
    ("phoneNumber", "status"): ("pending", "bad", "opted_out"),
    ("event", "name"): (
        "prospect_created",
        "prospect_updated",
        "mailing_delivered",
        "mailing_opened",
        "mailing_clicked",
        "mailing_replied",
        "call_completed",
        "task_completed",
        "sequence_state_started",
        "sequence_state_finished",
    ),
    ("auditLog", "eventName"): (
        "login",
        "logout",
        "sequence_created",
        "sequence_step_created",
        "sequence_step_destroyed",
        "ruleset_updated",
        "export_created",
        "csv_downloaded",
        "permission_updated",
    ),
    ("auditLog", "action"): ("create", "update", "delete", "read", "download"),
    ("auditLog", "result"): ("success", "failure"),
    ("batch", "state"): ("pending", "processing", "finished", "failed", "canceled"),
    ("batch", "action"): ("prospectsAddTags", "prospectsAddToSequence", "accountsAssignOwner"),
    ("batchItem", "state"): ("pending", "success", "failure"),
    ("complianceRequest", "state"): ("pending", "running", "done", "failed"),
    ("complianceRequest", "requestType"): ("Delete",),
    ("complianceRequest", "objectType"): ("Prospect",),
    ("webhook", "resource"): ("*", "prospect", "account", "mailing", "sequenceState", "task"),
    ("webhook", "action"): ("*", "created", "updated", "destroyed"),
    ("duty", "dutyType"): ("duty",),
    ("duty", "symbolicName"): (
        "account_executive",
        "account_manager",
        "business_development_representative",
        "customer_success_manager",
        "engineering",
        "marketing",
        "operations",
        "recruiter",
        "sales_development_representative",
        "sales_engineer",
        "sales_leader",
        "other",
    ),
    ("opportunityProspectRole", "role"): (
        "Decision Maker",
        "Economic Buyer",
        "Champion",
        "Influencer",
        "Technical Buyer",
    ),
    ("snippet", "shareType"): ("private", "read_only", "shared"),
    ("template", "shareType"): ("private", "read_only", "shared"),
    ("kaiaRecording", "state"): ("processing", "ready", "failed"),
    ("callDisposition", "outcome"): ("Answered", "Not Answered"),
    ("taskDisposition", "taskType"): ("action_item", "call", "email", "in_person", "linkedin"),
    ("taskPurpose", "taskType"): ("action_item", "call", "email", "in_person", "linkedin"),
}

# Pieces strings are built from: ASCII, accents, CJK, right-to-left, combining marks, emoji
# (with ZWJ sequences and skin tones), JSON escapes, control characters and a lone RTL mark.
TEXT_PIECES: tuple[str, ...] = (
    "Follow up",
    " with ",
    "prospect",
    "Grüße aus Köln",
    "naïve café",
    "日本語のメモ",
    "中文字符",
    "한국어",
    "مرحبا بالعالم",
    "שלום עולם",
    "e\u0301",
    "a\u0308\u0323",
    "👩\u200d💻",
    "🚀",
    "👍🏽",
    "🇩🇪",
    'quote " and \\ backslash',
    "line\nbreak",
    "\ttab",
    "\u200f",
    "<b>html</b>",
    "   ",
    "Ω≈ç√∫",
    "emoji 😀 mid",
)


def iso_datetime(seconds: int) -> str:
    """`2019-08-24T14:15:22.000Z` for an epoch second."""
    days, rest = divmod(seconds, 86_400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{iso_date(days)}T{hours:02d}:{minutes:02d}:{secs:02d}.000Z"


_UUID_ID_BITS = 62


def log_uuid(record_id: int, created: int) -> str:
    """A UUID (version 7: the creation time in milliseconds first) whose last 62 bits are the
    record's integer id. An append-only log's createdAt grows with its id, so these UUIDs sort,
    as strings, in id order: a cursor, a sort and an id range on them behave as on integers."""
    value = (created * 1000) << 80 | 0x7 << 76 | 0b10 << 62 | record_id
    digits = f"{value:032x}"
    return f"{digits[:8]}-{digits[8:12]}-{digits[12:16]}-{digits[16:20]}-{digits[20:]}"


def uuid_record_id(text: str) -> int:
    """The integer id inside a `log_uuid`; ValueError for a string that is not a UUID."""
    return uuid.UUID(text).int & ((1 << _UUID_ID_BITS) - 1)


@lru_cache(maxsize=8192)
def iso_date(days: int) -> str:
    """`YYYY-MM-DD` for a day number since the epoch."""
    return datetime.fromtimestamp(days * 86_400, UTC).strftime("%Y-%m-%d")


# Plain words for `SimulatorConfig.readable_text` (the demo).
READABLE_PIECES: tuple[str, ...] = tuple(
    f"{word} "
    for word in [
        "Follow",
        "up",
        "with",
        "the",
        "prospect",
        "about",
        "pricing",
        "next",
        "week",
        "Intro",
        "call",
        "recap",
        "Quarterly",
        "review",
        "Onboarding",
        "check",
        "in",
        "Renewal",
        "reminder",
        "Product",
        "demo",
        "Thank",
        "you",
        "note",
        "Case",
        "study",
        "Meeting",
        "notes",
        "Budget",
        "approved",
        "Send",
        "proposal",
        "Welcome",
        "sequence",
        "Trial",
        "ending",
        "soon",
    ]
)
# Set while a readable pool is generated (`attribute_pool(..., readable=True)`): `text` then
# slices plain words. A context variable, so simulators built in other threads are unaffected.
_READABLE: ContextVar[bool] = ContextVar("readable_text", default=False)


@cache
def _text_source(readable: bool = False) -> str:
    """A long string of pieces in random order; `text` slices windows out of it (cheaply)."""
    rng = random.Random("text-source")
    pieces = READABLE_PIECES if readable else TEXT_PIECES
    return "".join(pieces[rng.randrange(len(pieces))] for _ in range(20_000))


def text(rng: random.Random, length: int) -> str:
    """A string of exactly `length` code points mixing every script and awkward character
    (plain words while a readable pool is generated)."""
    source = _text_source(_READABLE.get())
    while len(source) < length:
        source += source
    start = rng.randrange(len(source) - length + 1)
    return source[start : start + length]


@dataclass
class Table:
    """The records of one type as parallel arrays indexed by row; rows are in ascending id order.

    Rows are never removed: a delete clears `alive[row]`, an insert appends a row with an id above
    every id ever used (as an autoincrement column does), so a row number stays valid for good.
    """

    rtype: ResourceType
    ids: array[int] = field(default_factory=lambda: array("q"))
    created: array[int] = field(default_factory=lambda: array("q"))  # epoch seconds
    updated: array[int] = field(default_factory=lambda: array("q"))  # epoch seconds
    alive: bytearray = field(default_factory=bytearray)
    # To-one relationships we populate: name -> target id per row (0 = null).
    fks: dict[str, array[int]] = field(default_factory=dict)
    # Type-specific per-row values (stepType code, order, date or interval, sequenceType code).
    columns: dict[str, array[int]] = field(default_factory=dict)
    pool: list[dict[str, Any]] = field(default_factory=list)
    next_id: int = 1  # the next id an insert may use (above every id ever allocated)
    # To-ones filled by the account's coherence rules (`account.RULES`): all of a type beyond
    # the step world's, and those a step-world type gains in the account world.
    linked: list[str] = field(default_factory=list)
    # Time attributes served from columns, attribute -> epoch seconds per row: createdAt and
    # updatedAt where the type has them, and `TIME_COLUMNS`.
    times: dict[str, array[int]] = field(init=False)

    def __post_init__(self) -> None:
        names = {a.name for a in self.rtype.attributes}
        columns = {"created": self.created, "updated": self.updated, **self.columns}
        self.times = {
            name: columns[column]
            for (type_name, name), column in {
                (self.rtype.name, "createdAt"): "created",
                (self.rtype.name, "updatedAt"): "updated",
                **TIME_COLUMNS,
            }.items()
            if type_name == self.rtype.name and name in names
        }

    @property
    def name(self) -> str:
        return self.rtype.name

    @property
    def append_only(self) -> bool:
        """A log (no updatedAt and no update operation: an event, an audit log entry): its
        records never change once written (nothing would tell a reader they had); they are
        appended, and deleted."""
        return self.rtype.append_only

    def __len__(self) -> int:
        return len(self.ids)

    def row_of(self, record_id: int) -> int | None:
        """The row holding `record_id` (alive or not), by binary search."""
        row = bisect_left(self.ids, record_id)
        if row < len(self.ids) and self.ids[row] == record_id:
            return row
        return None

    def variant(self, row: int) -> dict[str, Any]:
        return self.pool[row % len(self.pool)]

    def allocate_id(self, rng: random.Random) -> int:
        """A new id above every id used so far, with realistic gaps (rolled-back inserts)."""
        record_id = self.next_id
        gap = 1
        draw = rng.random()
        if draw < 0.25:
            gap += rng.randint(1, 4)
        elif draw < 0.26:
            gap += rng.randint(100, 5000)
        self.next_id = record_id + gap
        return record_id

    def append(self, record_id: int, created: int, updated: int) -> int:
        row = len(self.ids)
        self.ids.append(record_id)
        self.created.append(created)
        self.updated.append(updated)
        self.alive.append(1)
        for column in self.fks.values():
            column.append(0)
        for column in self.columns.values():
            column.append(0)
        return row


def _value(rng: random.Random, rtype: str, attribute: Attribute, at_max: bool) -> Any:
    vocabulary = VOCABULARY.get((rtype, attribute.name))
    if vocabulary is not None:
        return vocabulary[rng.randrange(len(vocabulary))]
    if not at_max and rng.random() < 0.12:
        return None
    kind = attribute.kind
    if kind is Kind.INTEGER:
        return rng.choice((0, 0, 1, rng.randint(0, 500), rng.randint(0, 2_000_000_000)))
    if kind is Kind.NUMBER:
        return round(rng.random() * 100, 2)
    if kind is Kind.BOOLEAN:
        return rng.random() < 0.5
    if kind is Kind.DATETIME:
        return iso_datetime(BASE_TIME - rng.randint(1, HISTORY_S))
    if kind is Kind.DATE:
        return iso_date((BASE_TIME - rng.randint(1, HISTORY_S)) // 86_400)
    if kind is Kind.STRING_LIST:
        return [text(rng, rng.randint(1, 20)) for _ in range(rng.randint(0, 3))]
    if kind is Kind.OBJECT:
        return {"roles": [text(rng, rng.randint(1, 12)) for _ in range(rng.randint(0, 2))]}
    limit = attribute.max_length if attribute.max_length is not None else 2000
    if at_max and attribute.max_length is not None:
        return text(rng, attribute.max_length)
    draw = rng.random()
    if draw < 0.6:
        length = rng.randint(0, min(limit, 40))
    elif draw < 0.95:
        length = rng.randint(0, min(limit, 300))
    else:
        length = rng.randint(0, min(limit, 5000))
    return text(rng, length)


def _account_value(rng: random.Random, rtype: str, attribute: Attribute, at_max: bool) -> Any:
    """A value for a type beyond the step world: as `_value`, but shaped like a real account's
    wide records (prospects and accounts have ~200 attributes): mostly short strings, most
    attributes of a record null, custom fields nearly always null."""
    vocabulary = VOCABULARY.get((rtype, attribute.name))
    if vocabulary is not None:
        return vocabulary[rng.randrange(len(vocabulary))]
    if at_max:
        if attribute.kind is Kind.STRING and attribute.max_length is not None:
            # At their maxLength, but a MEDIUMTEXT's 16 MiB is no realistic record (65,535 is
            # a TEXT column's maximum); a custom field, at its 255 (150 of them, 32,000 each).
            cap = 255 if CUSTOM_FIELD.match(attribute.name) else 65_535
            return text(rng, min(attribute.max_length, cap))
        return _value(rng, rtype, attribute, at_max)
    null_share = 0.95 if CUSTOM_FIELD.match(attribute.name) else 0.45
    if rng.random() < null_share:
        return None
    if attribute.kind is Kind.STRING:
        limit = attribute.max_length if attribute.max_length is not None else 2000
        draw = rng.random()
        length = rng.randint(1, min(limit, 30 if draw < 0.85 else 300 if draw < 0.99 else 2000))
        return text(rng, length)
    if attribute.kind is Kind.OBJECT:
        return {"key": text(rng, rng.randint(1, 12)), "value": rng.randint(0, 1000)}
    if attribute.kind is Kind.INTEGER_LISTS:
        return []  # replaced by its shape (`shaped`)
    return _value(rng, rtype, attribute, True)  # not null: the null share is drawn above


CUSTOM_FIELD = re.compile(r"^custom\d+$")


def _email(rng: random.Random) -> str:
    return f"contact.{rng.randint(1, 10**7)}@example.com"


def _duties(rng: random.Random) -> list[dict[str, Any]]:
    """A user's duties: `duty` records as `{id, name, duty_type}` (the account's duties are
    numbered from 1 in the order of their symbolic names, `account.py`)."""
    names = VOCABULARY[("duty", "symbolicName")]
    chosen = sorted(rng.sample(range(len(names)), rng.randint(0, 2)))
    return [{"id": i + 1, "name": names[i], "duty_type": "duty"} for i in chosen]


def _member(rng: random.Random, kind: Kind) -> Any:
    if kind is Kind.INTEGER:
        return rng.randint(0, 100_000)
    return text(rng, rng.randint(1, 24))


def _members(rng: random.Random, fields: tuple[tuple[str, Kind], ...]) -> dict[str, Any]:
    return {name: _member(rng, kind) for name, kind in fields}


# Values of the attributes whose shape `schema.WIRE_SHAPES` names without members, or that need
# more than their members' kinds (a user's duties name real duties; a prospect's contact
# histogram is 12 months; its `emails` are addresses).
SHAPED: dict[tuple[str, str], Callable[[random.Random], Any]] = {
    ("user", "duties"): _duties,
    # The last 12 months of email contact, oldest first: [inbound, outbound] per month.
    ("prospect", "contactHistogram"): lambda rng: [
        [rng.randint(0, 3), rng.randint(0, 8)] for _ in range(12)
    ],
    ("prospect", "emails"): lambda rng: [_email(rng) for _ in range(rng.randint(0, 3))],
    ("auditLog", "agent"): lambda rng: {
        "id": rng.randint(1, 10**6),
        "type": "user",
        "email": _email(rng),
        "ipAddress": f"10.{rng.randrange(256)}.{rng.randrange(256)}.{rng.randrange(256)}",
    },
    ("batch", "payload"): lambda rng: {
        "ids": [rng.randint(1, 10**6) for _ in range(rng.randint(1, 5))],
        "tags": [text(rng, 8)],
    },
    ("batch", "summary"): lambda rng: {
        "total": (total := rng.randint(1, 500)),
        "succeeded": (done := rng.randint(0, total)),
        "failed": total - done,
    },
    ("complianceRequest", "pii"): lambda rng: {"email": _email(rng)},
    ("event", "payload"): lambda rng: {
        "id": rng.randint(1, 10**6),
        "source": ("outreach", "salesforce", "api")[rng.randrange(3)],
    },
}


def shaped(type_name: str, attribute: Attribute) -> Callable[[random.Random], Any] | None:
    """How to generate an attribute the OpenAPI file leaves vague, in the shape the live API
    sends (`schema.WIRE_SHAPES`, as connectors built against it read it); None: by its kind."""
    special = SHAPED.get((type_name, attribute.name))
    wire = attribute.wire
    if special is not None or wire is None or not wire.fields:
        return special
    fields = wire.fields
    if wire.form is WireForm.OBJECT_LIST:
        return lambda rng: [_members(rng, fields) for _ in range(rng.randint(0, 3))]
    return lambda rng: _members(rng, fields)


@cache
def attribute_pool(
    rtype: ResourceType,
    seed: int,
    size: int = POOL_SIZE,
    shaped_wire: bool = True,
    readable: bool = False,
) -> list[dict[str, Any]]:
    """`size` attribute dicts for `rtype`; the first MAX_LENGTH_VARIANTS fill strings to maxLength.

    `shaped_wire`: vague attributes take the shape the live API sends (`shaped`: a user's
    `duties` a list of `{id, name, duty_type}`, as the Singer tap and Airbyte read it), in the
    step world too; without it, the shape the simulator sent before (an object of `roles`).
    Every other attribute is the same either way (the shapes draw from their own stream).
    `readable`: text in plain words (`SimulatorConfig.readable_text`), drawn the same way.
    Cached and shared between simulators: never modify a variant (copy it first).
    """
    token = _READABLE.set(readable)
    try:
        return _pool(rtype, seed, size, shaped_wire)
    finally:
        _READABLE.reset(token)


def _pool(rtype: ResourceType, seed: int, size: int, shaped_wire: bool) -> list[dict[str, Any]]:
    rng = random.Random(f"{seed}:pool:{rtype.name}")
    value = _value if rtype.name in RESOURCE_TYPES else _account_value
    pool = [
        {a.name: value(rng, rtype.name, a, i < MAX_LENGTH_VARIANTS) for a in rtype.attributes}
        for i in range(size)
    ]
    makers = [(a.name, m) for a in rtype.attributes if (m := shaped(rtype.name, a)) is not None]
    if makers and shaped_wire:
        # Their own RNG stream: shaping an attribute never changes another attribute's values.
        shape_rng = random.Random(f"{seed}:shapes:{rtype.name}")
        for i, variant in enumerate(pool):
            for name, make in makers:
                # A null drawn above stays null (the attribute's null share is unchanged).
                if variant[name] is not None or i < MAX_LENGTH_VARIANTS:
                    variant[name] = make(shape_rng)
    return pool


def _count(rng: random.Random, mean: float) -> int:
    """A small non-negative integer with the given mean (uniform on 0..2*mean)."""
    if mean <= 0:
        return 0
    return int(rng.random() * (2 * mean + 1)) if mean >= 0.5 else int(rng.random() < mean)


class Generator:
    """Builds every table from a config; all randomness flows from `cfg.seed`."""

    def __init__(self, cfg: SimulatorConfig) -> None:
        self.cfg = cfg
        self.rng = random.Random(cfg.seed)
        self.tables: dict[str, Table] = {}

    def _table(self, name: str, fks: tuple[str, ...], columns: dict[str, str]) -> Table:
        rtype = resource_type(name)
        table = Table(
            rtype=rtype,
            fks={fk: array("q") for fk in fks},
            columns={col: array(code) for col, code in columns.items()},
            next_id=self.rng.randint(1, 500),
        )
        self.tables[name] = table
        return table

    def _child(self, table: Table, parent_created: int) -> int:
        """A new row of `table` created after its parent: stamps first, then its id (the order
        the random stream is drawn in, which fixes every generated byte)."""
        created, updated = self._stamp(parent_created)
        return table.append(table.allocate_id(self.rng), created, updated)

    def _stamp(self, after: int | None = None) -> tuple[int, int]:
        """createdAt (after `after` when given) and a later updatedAt, both before BASE_TIME."""
        rng = self.rng
        if after is None:
            created = BASE_TIME - HISTORY_S + rng.randint(0, HISTORY_S - 1)
        else:
            created = min(BASE_TIME - 2, after + rng.randint(0, 30 * 86_400))
        if rng.random() < 0.3:
            updated = created
        else:
            updated = created + int((BASE_TIME - 1 - created) * rng.random() ** 3)
        return created, updated

    def _sequential_stamps(self, n: int) -> list[tuple[int, int]]:
        """Stamps whose createdAt roughly follows id order (with jitter) and updatedAt does not."""
        stamps = []
        for i in range(n):
            created = BASE_TIME - HISTORY_S + (HISTORY_S - 86_400) * i // max(1, n)
            created += self.rng.randint(0, 6 * 3600)
            created = min(created, BASE_TIME - 2)
            if self.rng.random() < 0.3:
                upd = created
            else:
                upd = created + int((BASE_TIME - 1 - created) * self.rng.random() ** 3)
            stamps.append((created, upd))
        return stamps

    def _pick(self, table: Table, null_share: float) -> int:
        if not len(table) or self.rng.random() < null_share:
            return 0
        return table.ids[self.rng.randrange(len(table))]

    def build(self) -> dict[str, Table]:
        cfg = self.cfg
        rng = self.rng
        n_steps = cfg.steps
        users = self._table("user", ("creator", "updater"), {})
        for created, updated in self._sequential_stamps(
            max(cfg.min_users, round(n_steps * cfg.users_per_step))
        ):
            row = users.append(users.allocate_id(rng), created, updated)
            if row:
                users.fks["creator"][row] = users.ids[rng.randrange(row)]
            users.fks["updater"][row] = self._pick(users, 0.3) if row else 0

        purposes = self._table("callPurpose", ("creator",), {})
        for created, updated in self._sequential_stamps(cfg.call_purposes):
            row = purposes.append(purposes.allocate_id(rng), created, updated)
            purposes.fks["creator"][row] = self._pick(users, 0.2)

        priorities = self._table("taskPriority", (), {})
        for created, updated in self._sequential_stamps(cfg.task_priorities):
            priorities.append(priorities.allocate_id(rng), created, updated)

        sequences = self._table("sequence", ("creator", "owner", "updater"), {"sequenceType": "b"})
        for created, updated in self._sequential_stamps(
            max(1, round(n_steps * cfg.sequences_per_step))
        ):
            row = sequences.append(sequences.allocate_id(rng), created, updated)
            sequences.fks["creator"][row] = self._pick(users, 0.1)
            sequences.fks["owner"][row] = self._pick(users, 0.05)
            sequences.fks["updater"][row] = self._pick(users, 0.2)
            sequences.columns["sequenceType"][row] = int(rng.random() < 0.3)

        steps = self._table(
            "sequenceStep",
            ("sequence", "creator", "updater", "callPurpose", "taskPriority"),
            {"stepType": "b", "order": "l", "schedule": "q", "scheduleKind": "b"},
        )
        templates = self._table("sequenceTemplate", ("sequenceStep", "creator", "updater"), {})
        mailings = self._table("mailing", ("sequenceStep", "sequence", "user"), {})
        calls = self._table("call", ("sequenceStep", "sequence", "user", "callPurpose"), {})
        tasks = self._table(
            "task", ("sequenceStep", "sequence", "owner", "taskPriority", "creator"), {}
        )
        steps_in_sequence: dict[int, int] = {}
        for i, (created, updated) in enumerate(self._sequential_stamps(n_steps)):
            row = steps.append(steps.allocate_id(rng), created, updated)
            step_id = steps.ids[row]
            # The first four steps cover every stepType, whatever the size.
            code = i if i < len(STEP_TYPES) else rng.choices((0, 1, 2, 3), (40, 15, 25, 20))[0]
            steps.columns["stepType"][row] = code
            sequence_row = rng.randrange(len(sequences)) if rng.random() >= 0.03 else -1
            sequence_id = sequences.ids[sequence_row] if sequence_row >= 0 else 0
            steps.fks["sequence"][row] = sequence_id
            if sequence_id:
                order = steps_in_sequence.get(sequence_id, 0) + 1
                steps_in_sequence[sequence_id] = order
                steps.columns["order"][row] = order
                if sequences.columns["sequenceType"][sequence_row]:
                    steps.columns["scheduleKind"][row] = SCHEDULE_DATE
                    steps.columns["schedule"][row] = created // 86_400 + rng.randint(0, 400)
                else:
                    steps.columns["scheduleKind"][row] = SCHEDULE_INTERVAL
                    steps.columns["schedule"][row] = rng.choice((0, 3600, 86_400, 172_800, 604_800))
            steps.fks["creator"][row] = self._pick(users, 0.1)
            steps.fks["updater"][row] = self._pick(users, 0.25)
            steps.fks["callPurpose"][row] = self._pick(purposes, 0.3 if code == 2 else 0.9)
            steps.fks["taskPriority"][row] = self._pick(priorities, 0.2)

            if code in EMAIL_STEP_CODES:
                for _ in range(_count(rng, cfg.templates_per_email_step)):
                    t_row = self._child(templates, created)
                    templates.fks["sequenceStep"][t_row] = step_id
                    templates.fks["creator"][t_row] = self._pick(users, 0.1)
                    templates.fks["updater"][t_row] = self._pick(users, 0.3)
                for _ in range(_count(rng, cfg.mailings_per_email_step)):
                    m_row = self._child(mailings, created)
                    mailings.fks["sequenceStep"][m_row] = step_id
                    mailings.fks["sequence"][m_row] = sequence_id
                    mailings.fks["user"][m_row] = self._pick(users, 0.05)
            if code == CALL_STEP_CODE:
                for _ in range(_count(rng, cfg.calls_per_call_step)):
                    c_row = self._child(calls, created)
                    calls.fks["sequenceStep"][c_row] = step_id
                    calls.fks["sequence"][c_row] = sequence_id
                    calls.fks["user"][c_row] = self._pick(users, 0.05)
                    calls.fks["callPurpose"][c_row] = steps.fks["callPurpose"][row]
            for _ in range(_count(rng, cfg.tasks_per_step)):
                k_row = self._child(tasks, created)
                tasks.fks["sequenceStep"][k_row] = step_id
                tasks.fks["creator"][k_row] = step_id
                tasks.fks["sequence"][k_row] = sequence_id
                tasks.fks["owner"][k_row] = self._pick(users, 0.05)
                tasks.fks["taskPriority"][k_row] = steps.fks["taskPriority"][row]
        for table in self.tables.values():
            size = min(POOL_SIZE, max(MAX_LENGTH_VARIANTS + 1, len(table)))
            table.pool = attribute_pool(table.rtype, cfg.seed, size, readable=cfg.readable_text)
        return self.tables


def generate(cfg: SimulatorConfig) -> dict[str, Table]:
    """Every simulated table, deterministic in `cfg` (same config, same bytes)."""
    if cfg.steps < 1:
        raise ValueError("steps must be at least 1")
    return Generator(cfg).build()
