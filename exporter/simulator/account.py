"""The account beyond the step world: sizes per type, generation in to-one order, coherent links.

The nine step-world types are generated first (`data.Generator`, unchanged); then every other
readable collection of the OpenAPI file, parents before children (a prospect's account exists
before the prospect), and finally the to-ones of the step-world types that point into the
account (a mailing's prospect, a user's mailbox), which no step-world record had before.
Every type and every to-one draws from its own RNG stream, seeded by the data seed and its
name: adding a type or a relationship never shifts another's values.
"""

from __future__ import annotations

import graphlib
import random
from array import array
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cache

from exporter.model.schema import RESOURCE_TYPES, Shape, readable_types, resource_type

from .config import SimulatorConfig
from .data import (
    BASE_TIME,
    HISTORY_S,
    POOL_SIZE,
    VOCABULARY,
    Table,
    attribute_pool,
)

DEFAULT_PROSPECTS = 1000  # the scale when only `sizes` are given
AUDIT_LOG_DAYS = 90  # audit log entries are kept this long (the OpenAPI file says "usually")


@dataclass(frozen=True)
class Size:
    """How many records of a type an account has: `fixed` + `per_1000` per 1,000 prospects +
    `per_user` per user (users come from the step world)."""

    per_1000: float = 0.0
    fixed: int = 0
    per_user: float = 0.0

    def count(self, prospects: int, users: int) -> int:
        return self.fixed + round(self.per_1000 * prospects / 1000 + self.per_user * users)

    @property
    def scarce(self) -> bool:
        """A lookup table of a few records (stages, roles), whatever the account's size."""
        return not self.per_1000 and not self.per_user


# Default sizes. Realistic proportions for a B2B sales team: many prospects, their email
# addresses, phone numbers, sequence states and events; few stages, roles, personas, teams.
SIZES: dict[str, Size] = {
    "account": Size(per_1000=200),
    "accountNote": Size(per_1000=40),
    "auditLog": Size(per_1000=100, fixed=20),
    "batch": Size(per_1000=2, fixed=3),
    "batchItem": Size(per_1000=200),
    "callDisposition": Size(fixed=8),
    "complianceRequest": Size(per_1000=1, fixed=2),
    "contentCategory": Size(fixed=6),
    "contentCategoryMembership": Size(per_1000=5, fixed=10),
    "contentCategoryOwnership": Size(fixed=6),
    "duty": Size(fixed=len(VOCABULARY[("duty", "symbolicName")])),
    "emailAddress": Size(per_1000=1300),
    "event": Size(per_1000=2000),
    "favorite": Size(per_user=3),
    "kaiaRecording": Size(per_1000=30),
    "mailAlias": Size(per_user=0.3),
    "mailbox": Size(per_user=1),
    "opportunity": Size(per_1000=60),
    "opportunityProspectRole": Size(per_1000=90),
    "opportunityStage": Size(fixed=7),
    "persona": Size(fixed=8),
    "phoneNumber": Size(per_1000=900),
    "product": Size(fixed=25),
    "profile": Size(fixed=4),
    "prospect": Size(per_1000=1000),
    "prospectNote": Size(per_1000=150),
    "purchase": Size(per_1000=60),
    "recipient": Size(per_1000=300),
    "role": Size(fixed=10),
    "ruleset": Size(fixed=4),
    "sequenceState": Size(per_1000=1500),
    "snippet": Size(fixed=10, per_user=1),
    "stage": Size(fixed=9),
    "taskDisposition": Size(fixed=6),
    "taskPurpose": Size(fixed=6),
    "team": Size(fixed=5),
    "template": Size(fixed=20, per_user=4),
    "webhook": Size(fixed=3),
}


# -- how a to-one is filled -------------------------------------------------------------------


@dataclass(frozen=True)
class Pick:
    """A random record of the target (null with `null_share`); for a relationship to the same
    type, one generated earlier (a role's parentRole, as a user's creator)."""

    null_share: float = 0.2


@dataclass(frozen=True)
class Follow:
    """The record that this record's `via` points at points at through `fk`: a mailing's
    prospect is its sequence state's prospect. With `or_pick`, a null found that way becomes a
    random record (null with that share)."""

    via: str
    fk: str
    or_pick: float | None = None


@dataclass(frozen=True)
class Among:
    """A random record of the target whose `fk` equals this record's `own` to-one (`"id"`: this
    record's id): a sequence state's step is a step of its sequence; a user's mailbox is one
    whose user is that user. Null when there is none, or with `null_share`."""

    fk: str
    own: str
    null_share: float = 0.0


@dataclass(frozen=True)
class Same:
    """The same record as this record's `other` to-one (an opportunity's stage and
    opportunityStage)."""

    other: str


@dataclass(frozen=True)
class Nth:
    """The n-th record of the target for the n-th record (a mailbox per user)."""


Rule = Pick | Follow | Among | Same | Nth

# Coherence rules per type and to-one; any other populated to-one is `Pick()`. Listed rules are
# applied in order, after every `Pick`, so they may read the to-ones filled before them.
RULES: dict[str, tuple[tuple[str, Rule], ...]] = {
    "account": (("primaryRecordTeam", Pick(0.7)), ("owner", Pick(0.05))),
    "accountNote": (("account", Pick(0.0)), ("opportunity", Among("account", "account", 0.7))),
    "batchItem": (("batch", Pick(0.0)),),
    "call": (
        ("callDisposition", Pick(0.3)),
        ("opportunity", Pick(0.9)),
        ("task", Pick(0.9)),
        ("sequenceState", Among("sequence", "sequence", 0.2)),
        ("prospect", Follow("sequenceState", "prospect", or_pick=0.1)),
        ("associatedId", Follow("prospect", "account")),
        ("phoneNumber", Among("prospect", "prospect", 0.2)),
    ),
    "contentCategoryMembership": (("content", Pick(0.0)), ("contentCategory", Pick(0.0))),
    "contentCategoryOwnership": (("contentCategory", Pick(0.0)), ("owner", Pick(0.0))),
    "emailAddress": (("prospect", Pick(0.0)),),
    "event": (
        ("user", Pick(0.3)),
        ("call", Pick(0.95)),
        ("task", Pick(0.95)),
        ("opportunity", Pick(0.95)),
        ("prospect", Pick(0.2)),
        ("account", Follow("prospect", "account")),
        ("mailing", Among("prospect", "prospect", 0.6)),
        ("sequence", Follow("mailing", "sequence")),
        ("sequenceStep", Follow("mailing", "sequenceStep")),
    ),
    "favorite": (("target", Pick(0.0)), ("user", Pick(0.0)), ("creator", Same("user"))),
    "mailAlias": (("mailbox", Pick(0.0)),),
    "mailbox": (("user", Nth()),),
    "mailing": (
        ("opportunity", Pick(0.9)),
        ("task", Pick(0.9)),
        ("followUpSequence", Pick(0.95)),
        ("template", Pick(0.3)),
        ("sequenceState", Among("sequence", "sequence", 0.1)),
        ("prospect", Follow("sequenceState", "prospect", or_pick=0.02)),
        ("mailbox", Follow("sequenceState", "mailbox", or_pick=0.05)),
    ),
    "opportunity": (
        ("account", Pick(0.05)),
        ("externalCreator", Pick(0.8)),
        ("opportunityStage", Pick(0.0)),
        ("stage", Same("opportunityStage")),
        ("primaryProspect", Among("account", "account", 0.2)),
    ),
    "opportunityProspectRole": (("opportunity", Pick(0.0)), ("prospect", Pick(0.0))),
    "phoneNumber": (("prospect", Pick(0.0)),),
    "prospect": (
        ("account", Pick(0.15)),
        ("owner", Pick(0.05)),
        ("persona", Pick(0.4)),
        ("trashedByAccount", Pick(0.99)),
    ),
    "prospectNote": (("prospect", Pick(0.0)), ("opportunity", Pick(0.9))),
    "purchase": (("account", Pick(0.0)), ("product", Pick(0.0))),
    "recipient": (("prospect", Pick(0.3)), ("user", Pick(0.7))),
    "role": (("parentRole", Pick(0.3)),),
    "sequence": (("ruleset", Pick(0.3)),),
    "sequenceState": (
        ("prospect", Pick(0.0)),
        ("sequence", Pick(0.0)),
        ("mailbox", Pick(0.02)),
        ("opportunity", Pick(0.9)),
        ("batchItemCreator", Pick(0.9)),
        ("account", Follow("prospect", "account")),
        ("sequenceStep", Among("sequence", "sequence", 0.05)),
        ("user", Follow("mailbox", "user")),
    ),
    "sequenceTemplate": (("template", Pick(0.05)),),
    "task": (
        ("call", Pick(0.9)),
        ("mailing", Pick(0.9)),
        ("opportunity", Pick(0.9)),
        ("completer", Pick(0.6)),
        ("taskDisposition", Pick(0.6)),
        ("taskPurpose", Pick(0.5)),
        ("team", Pick(0.9)),
        ("template", Pick(0.8)),
        ("subject", Pick(0.9)),
        ("sequenceStateStartingTemplate", Pick(0.9)),
        ("sequenceState", Among("sequence", "sequence", 0.3)),
        ("prospect", Follow("sequenceState", "prospect", or_pick=0.2)),
        ("account", Follow("prospect", "account")),
        ("prospectAccount", Follow("prospect", "account")),
        ("prospectOwner", Follow("prospect", "owner")),
        ("prospectStage", Follow("prospect", "stage")),
        ("sequenceStateSequenceStep", Follow("sequenceState", "sequenceStep")),
        ("sequenceTemplate", Among("sequenceStep", "sequenceStep", 0.5)),
        ("sequenceTemplateTemplate", Follow("sequenceTemplate", "template")),
    ),
    "template": (("statsTarget", Pick(0.9)),),
    "user": (("mailbox", Among("user", "id")), ("role", Pick(0.2)), ("profile", Pick(0.0))),
}


@cache
def account_types() -> tuple[str, ...]:
    """The readable types beyond the step world, parents before children (to-one order)."""
    others = [name for name in readable_types() if name not in RESOURCE_TYPES]
    graph = {
        name: {
            r.target
            for r in resource_type(name).relationships
            if r.shape is Shape.TO_ONE and r.target in others and r.target != name
        }
        for name in others
    }
    # The OpenAPI file has no cycle of to-ones among these types (a self-reference, a role's
    # parentRole, is filled from earlier records); the to-ones that close a cycle through the
    # step world (a user's mailbox, a mailing's sequence state) are filled after the types they
    # point at (`_order`).
    return tuple(graphlib.TopologicalSorter(graph).static_order())


def populated(name: str, simulated: Sequence[str]) -> tuple[str, ...]:
    """The to-ones of a type that point at a simulated type (the others are always null)."""
    return tuple(
        r.name
        for r in resource_type(name).relationships
        if r.shape is Shape.TO_ONE and r.target in simulated
    )


def plan(name: str, fks: Sequence[str]) -> list[tuple[str, Rule]]:
    """The order in which a record's to-ones `fks` are filled, and how."""
    listed = RULES.get(name, ())
    rules = dict(listed)
    picks = [(fk, rules.get(fk) or Pick()) for fk in fks]
    picks = [(fk, rule) for fk, rule in picks if isinstance(rule, Pick)]
    return picks + [(fk, rule) for fk, rule in listed if fk in fks and not isinstance(rule, Pick)]


def sizes(cfg: SimulatorConfig, users: int) -> dict[str, int]:
    """Record counts of the types beyond the step world, for `cfg`."""
    unknown = sorted(set(cfg.sizes) - set(account_types()))
    if unknown:
        raise ValueError(
            f"--size names {', '.join(unknown)}: sizes are for the types beyond the step world "
            f"({', '.join(account_types())}); the step world follows --steps and its ratios"
        )
    if any(n < 0 for n in cfg.sizes.values()):
        raise ValueError("sizes must not be negative")
    scale = cfg.prospects or cfg.sizes.get("prospect") or DEFAULT_PROSPECTS
    return {name: cfg.sizes.get(name, SIZES[name].count(scale, users)) for name in account_types()}


# -- generation -------------------------------------------------------------------------------


class _Index:
    """The generated records by id and by a to-one's target, for the rules (while generating,
    every record is alive)."""

    def __init__(self, tables: dict[str, Table]) -> None:
        self.tables = tables
        self._rows: dict[str, dict[int, int]] = {}
        self._groups: dict[tuple[str, str], dict[int, list[int]]] = {}

    def rows(self, name: str) -> dict[int, int]:
        """id -> row of a type."""
        found = self._rows.get(name)
        if found is None:
            table = self.tables[name]
            found = self._rows[name] = dict(zip(table.ids, range(len(table)), strict=True))
        return found

    def members(self, target: str, fk: str) -> dict[int, list[int]]:
        """Target id -> ids of the records of `target` whose `fk` is it."""
        groups = self._groups.get((target, fk))
        if groups is None:
            table = self.tables[target]
            groups = {}
            for record_id, value in zip(table.ids, table.fks[fk], strict=True):
                groups.setdefault(value, []).append(record_id)
            self._groups[(target, fk)] = groups
        return groups


def fill(table: Table, fk: str, rule: Rule, rng: random.Random, index: _Index) -> None:
    """Fill the to-one `fk` of every record of `table` by `rule` (during generation)."""
    relationships = {r.name: r.target for r in table.rtype.relationships}
    target = relationships[fk]
    ids = index.tables[target].ids
    n = len(ids)
    random_ = rng.random
    values: list[int]
    if isinstance(rule, Pick):
        share = rule.null_share
        if target == table.name:  # one generated earlier
            values = [
                ids[int(random_() * row)] if row and random_() >= share else 0
                for row in range(len(table))
            ]
        else:
            values = [
                ids[int(random_() * n)] if n and random_() >= share else 0
                for _ in range(len(table))
            ]
    elif isinstance(rule, Follow):
        via_rows = index.rows(relationships[rule.via])
        through = index.tables[relationships[rule.via]].fks[rule.fk]
        values = [through[via_rows[v]] if v else 0 for v in table.fks[rule.via]]
        if rule.or_pick is not None and n:
            share = rule.or_pick
            values = [v or (ids[int(random_() * n)] if random_() >= share else 0) for v in values]
    elif isinstance(rule, Among):
        groups = index.members(target, rule.fk)
        owns = table.ids if rule.own == "id" else table.fks[rule.own]
        share = rule.null_share
        values = []
        for own in owns:
            found = groups.get(own) if own else None
            values.append(found[int(random_() * len(found))] if found and random_() >= share else 0)
    elif isinstance(rule, Same):
        values = list(table.fks[rule.other])
    else:
        values = [ids[row] if row < n else 0 for row in range(len(table))]
    table.fks[fk] = array("q", values)


def _stamps(
    name: str, rng: random.Random, n: int, append_only: bool
) -> tuple[list[int], list[int]]:
    """createdAt and updatedAt per record, in id order. createdAt roughly follows the id (with
    jitter), updatedAt does not; a log's createdAt grows with its id (it is written in that
    order) and is its updatedAt; audit log entries span their 90 days of retention."""
    random_ = rng.random
    if append_only:
        span = AUDIT_LOG_DAYS * 86_400 if name == "auditLog" else HISTORY_S
        start = BASE_TIME - span
        created = sorted(start + int(random_() * (span - 2)) for _ in range(n))
        return created, created
    step = (HISTORY_S - 86_400) / max(1, n)
    start = BASE_TIME - HISTORY_S
    created = [min(start + int(step * i + random_() * 6 * 3600), BASE_TIME - 2) for i in range(n)]
    updated = [
        c if random_() < 0.3 else c + int((BASE_TIME - 1 - c) * random_() ** 3) for c in created
    ]
    return created, updated


def _ids(rng: random.Random, n: int, first: int) -> list[int]:
    """`n` ascending ids from `first` with the gaps `Table.allocate_id` leaves."""
    random_ = rng.random
    ids = []
    record_id = first
    for _ in range(n):
        ids.append(record_id)
        draw = random_()
        record_id += 1
        if draw < 0.25:
            record_id += 1 + int(random_() * 4)
        elif draw < 0.26:
            record_id += 100 + int(random_() * 4901)
    return ids


def _reads(name: str, fks: Sequence[str]) -> set[tuple[str, str]]:
    """The (type, to-one) pairs the rules of `name` read on other records while filling `fks`."""
    rtype = resource_type(name)
    target = {r.name: r.target for r in rtype.relationships}
    out: set[tuple[str, str]] = set()
    for fk, rule in plan(name, fks):
        if isinstance(rule, Follow):
            out.add((target[rule.via], rule.fk))
        elif isinstance(rule, Among):
            out.add((target[fk], rule.fk))
    return out


def _order(tables: dict[str, Table], simulated: Sequence[str]) -> list[tuple[str, bool]]:
    """(type, whether it is a step-world type to link) in an order where every record a rule
    reads is filled first: parents before children, and a step-world type's new to-ones (a
    mailing's prospect, from its sequence state) before a type that reads them (an event's
    mailing is one of its prospect's)."""
    new = {
        name: [fk for fk in populated(name, simulated) if fk not in tables[name].fks]
        for name in RESOURCE_TYPES
    }
    step_world_targets = {(name, fk) for name, fks in new.items() for fk in fks}

    def node(name: str) -> str:
        return f"link:{name}" if name in RESOURCE_TYPES else name

    graph: dict[str, set[str]] = {}
    for name in [*account_types(), *RESOURCE_TYPES]:
        fks = new[name] if name in RESOURCE_TYPES else list(populated(name, simulated))
        targets = {r.target for r in resource_type(name).relationships if r.name in fks}
        needs = {t for t in targets if t not in RESOURCE_TYPES and t != name}
        needs |= {f"link:{t}" for t, fk in _reads(name, fks) if (t, fk) in step_world_targets}
        graph[node(name)] = needs - {node(name)}
    return [
        (n.removeprefix("link:"), n.startswith("link:"))
        for n in graphlib.TopologicalSorter(graph).static_order()
    ]


def _generate(name: str, tables: dict[str, Table], cfg: SimulatorConfig, count: int) -> Table:
    """The records of one type beyond the step world, without their to-ones yet."""
    rng = random.Random(f"{cfg.seed}:account:{name}")
    rtype = resource_type(name)
    columns = {"eventAt": "q"} if name == "event" else {}
    table = Table(rtype=rtype, columns={col: array(code) for col, code in columns.items()})
    created, updated = _stamps(name, rng, count, table.append_only)
    # Duties are a fixed list numbered from 1, as users' `duties` name them.
    ids = list(range(1, count + 1)) if name == "duty" else _ids(rng, count, rng.randint(1, 500))
    table.ids.extend(ids)
    table.created.extend(created)
    table.updated.extend(updated)
    table.alive.extend(bytes([1]) * count)
    table.next_id = ids[-1] + 1 + int(rng.random() * 4) if ids else 1
    if name == "event":
        random_ = rng.random
        table.columns["eventAt"].extend(c - int(random_() * 3600) for c in created)
    wide = len(rtype.attributes)
    # Variants enough for variety (a wide type gets fewer: its records vary in many places).
    size = min(POOL_SIZE, max(3, len(table)), max(64, 8_000 // max(1, wide)))
    table.pool = attribute_pool(rtype, cfg.seed, size, readable=cfg.readable_text)
    return table


def populate(tables: dict[str, Table], cfg: SimulatorConfig) -> None:
    """Add every type beyond the step world to `tables` and link the step world into it."""
    counts = sizes(cfg, len(tables["user"]))
    simulated = [*tables, *account_types()]
    index = _Index(tables)
    for name, step_world in _order(tables, simulated):
        if step_world:
            table = tables[name]
            fks = [fk for fk in populated(name, simulated) if fk not in table.fks]
        else:
            table = tables[name] = _generate(name, tables, cfg, counts[name])
            fks = list(populated(name, simulated))
        for fk in fks:
            table.fks[fk] = array("q", bytes(8 * len(table)))
        table.linked = fks
        for fk, rule in plan(name, fks):
            fill(table, fk, rule, random.Random(f"{cfg.seed}:{name}.{fk}"), index)
