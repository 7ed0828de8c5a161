"""The simulated database: tables, their indexes, record rendering with a byte cache, mutations, truth."""

from __future__ import annotations

import random
from array import array
from bisect import bisect_left, bisect_right
from collections.abc import Callable, Iterator
from typing import Any

import orjson

from exporter.model.schema import Attribute, Kind, Shape

from .account import SIZES, Follow, Nth, Pick, Rule, Same, plan
from .data import (
    CALL_STEP_CODE,
    EMAIL_STEP_CODES,
    SCHEDULE_DATE,
    SCHEDULE_INTERVAL,
    SCHEDULE_NONE,
    SEQUENCE_TYPES,
    STEP_TYPES,
    VOCABULARY,
    Table,
    iso_date,
    iso_datetime,
    log_uuid,
    text,
    uuid_record_id,
)
from .paging import KeyValue
from .query import normalize
from .render import Stamps, TypeRenderer, collection_of
from .writes import StepChange

# To-one relationships with a reverse index (rows sorted by target id): the relationship filters
# the exporter relies on for its bulk fetches, answered in O(result).
INDEXED: dict[str, tuple[str, ...]] = {
    "sequenceStep": ("sequence", "creator", "updater", "callPurpose", "taskPriority"),
    "sequenceTemplate": ("sequenceStep",),
    "mailing": ("sequenceStep",),
    "call": ("sequenceStep",),
    "task": ("sequenceStep",),
}
# Attributes a live update never changes: they would break the data's invariants.
FROZEN_ATTRIBUTES = frozenset({"stepType", "date", "interval", "createdAt", "updatedAt"})
MUTATION_KINDS = (Kind.STRING, Kind.INTEGER, Kind.BOOLEAN)
# Lookup types that keep at least three records through random mutations: deleting every
# call purpose of an account is not realistic. (The account's fixed-size types join them.)
SCARCE = ("callPurpose", "taskPriority", "user")
# To-ones a to-many `data` array never derives from: a user's `favorites` are the favorites
# that name it as their user, not the ones it created.
AUTHORSHIP = frozenset({"creator", "updater"})
RecordId = int | str  # as on the wire: an integer, or a UUID string (auditLog)


def derive_to_many(tables: dict[str, Table]) -> dict[tuple[str, str], tuple[str, str]]:
    """(parent type, to-many) -> (child type, child's to-one): the to-many `data` arrays derived
    from the other side's populated to-one (a sequence's `sequenceSteps` are the steps whose
    `sequence` is it). A to-many with no such to-one, or with several and none named after the
    parent, is always empty."""
    out: dict[tuple[str, str], tuple[str, str]] = {}
    for name, table in tables.items():
        for rel in table.rtype.relationships:
            child = tables.get(rel.target)
            if rel.shape is not Shape.TO_MANY or child is None:
                continue
            candidates = [
                r.name
                for r in child.rtype.relationships
                if r.target == name and r.name in child.fks and r.name not in AUTHORSHIP
            ]
            if len(candidates) > 1:
                candidates = [c for c in candidates if c == name]
            if len(candidates) == 1:
                out[(name, rel.name)] = (rel.target, candidates[0])
    return out


class Store:
    """Owns every table; every read the API serves and every mutation goes through here.

    Not thread-safe: use it from the event loop that serves it.
    """

    def __init__(
        self,
        tables: dict[str, Table],
        *,
        clock: Callable[[], float],
        seed: int,
        cache_bytes: int,
        base_url: str = "http://127.0.0.1/api/v2",
        wire_extras: bool = False,
    ) -> None:
        self.tables = tables
        # To-many relationships carry `links` beside `data` (`SimulatorConfig.wire_extras`).
        self.wire_extras = wire_extras
        self.clock = clock
        self.base_url = base_url
        self.cache_limit = cache_bytes
        self.rng = random.Random(f"{seed}:mutations")
        self.overrides: dict[str, dict[int, dict[str, Any]]] = {name: {} for name in tables}
        self.deleted: dict[str, set[int]] = {name: set() for name in tables}
        self.epoch: dict[str, int] = dict.fromkeys(tables, 0)  # bumped by every mutation of a type
        self._cache: dict[str, dict[int, bytes]] = {name: {} for name in tables}
        self._cache_size = 0
        self.by_updated: dict[str, array[int]] = {}
        # Per indexed to-one: the rows sorted by (target id, row), and their target ids beside
        # them (so a lookup is a plain bisect on integers, without a key function).
        self.fk_index: dict[tuple[str, str], array[int]] = {}
        self.fk_keys: dict[tuple[str, str], array[int]] = {}
        self._latest = 0  # the newest updatedAt handed out by a mutation
        self._indexed: dict[str, list[str]] = {}  # type -> its to-ones with an index
        self._inserting: tuple[str, int] | None = None  # (type, row) of an insert under way
        self.reverse = derive_to_many(tables)
        self._created_sorted = {
            name: all(a <= b for a, b in zip(t.created, t.created[1:], strict=False))
            for name, t in tables.items()
            if t.append_only
        }
        for name, table in tables.items():
            updated = table.updated
            self.by_updated[name] = array("q", sorted(range(len(table)), key=updated.__getitem__))
            for fk in INDEXED.get(name, ()):
                self._build_fk_index(name, fk)
        for child, fk in self.reverse.values():
            if (child, fk) not in self.fk_index:
                self._build_fk_index(child, fk)
        # Per type: the populated to-ones (type, name) that point at it.
        self._referrers: dict[str, list[tuple[str, str]]] = {name: [] for name in tables}
        for other, table in tables.items():
            for rel in table.rtype.relationships:
                if rel.name in table.fks and rel.target in tables:
                    self._referrers[rel.target].append((other, rel.name))
        self.scarce = frozenset(SCARCE) | {n for n in tables if n in SIZES and SIZES[n].scarce}
        self._static_relationships = {name: self._static_parts(name) for name in tables}
        # Per type, in schema order: (name, shape, target type, fixed value or None).
        self.plans = {
            name: [
                (r.name, r.shape, r.target, self._static_relationships[name].get(r.name))
                for r in table.rtype.relationships
            ]
            for name, table in tables.items()
        }
        stamps = Stamps()
        self._renderers = {
            name: TypeRenderer(self, table, stamps) for name, table in tables.items()
        }
        self._mutable = {
            name: tuple(
                a
                for a in table.rtype.attributes
                if not a.read_only
                and a.kind in MUTATION_KINDS
                and a.name not in FROZEN_ATTRIBUTES
                and len(VOCABULARY.get((name, a.name), "ab")) > 1  # a one-word vocabulary stays
            )
            for name, table in tables.items()
        }

    # ----------------------------------------------------------------------------- lookups

    def table(self, name: str) -> Table:
        return self.tables[name]

    def alive_row(self, name: str, record_id: int) -> int | None:
        table = self.tables.get(name)
        if table is None:
            return None
        row = table.row_of(record_id)
        if row is None or not table.alive[row]:
            return None
        return row

    def _build_fk_index(self, name: str, fk: str) -> array[int]:
        column = self.tables[name].fks[fk]
        rows = range(len(column))
        if self._inserting is not None and self._inserting[0] == name:
            rows = range(self._inserting[1])  # the row being inserted is indexed when complete
        index = array("q", sorted(rows, key=column.__getitem__))
        self.fk_index[(name, fk)] = index
        self.fk_keys[(name, fk)] = array("q", map(column.__getitem__, index))
        self._indexed.setdefault(name, []).append(fk)
        return index

    def rows_pointing_at(self, name: str, fk: str, target_id: int) -> list[int]:
        """Rows of `name` whose to-one `fk` is `target_id` (alive or not), ascending id.

        The first lookup of a to-one builds its index (kept up to date from then on)."""
        index = self.fk_index.get((name, fk))
        if index is None:
            index = self._build_fk_index(name, fk)
        keys = self.fk_keys[(name, fk)]
        lo = bisect_left(keys, target_id)
        hi = bisect_right(keys, target_id, lo)
        return index[lo:hi].tolist()

    def set_base_url(self, base_url: str) -> None:
        if base_url != self.base_url:
            self.base_url = base_url
            self.clear_cache()

    # ----------------------------------------------------------------------------- values

    def computed(self, table: Table, row: int) -> dict[str, Any]:
        """The attributes that come from per-row columns rather than the shared variant pool."""
        values: dict[str, Any] = {
            attribute: iso_datetime(column[row]) for attribute, column in table.times.items()
        }
        name = table.name
        record_id = table.ids[row]
        if name == "sequenceStep":
            columns = table.columns
            step_type = STEP_TYPES[columns["stepType"][row]]
            order = columns["order"][row] or None
            kind = columns["scheduleKind"][row]
            schedule = columns["schedule"][row]
            values["stepType"] = step_type
            values["order"] = order
            values["date"] = iso_date(schedule) if kind == SCHEDULE_DATE else None
            values["interval"] = schedule if kind == SCHEDULE_INTERVAL else None
            label = step_type.replace("_", " ").title()
            values["displayName"] = f"Step #{order} ({label})" if order else label
        elif name == "sequence":
            values["sequenceType"] = SEQUENCE_TYPES[table.columns["sequenceType"][row]]
            values["name"] = f"{table.variant(row)['name'] or 'Sequence'} #{record_id}"[:255]
        elif name == "user":
            values["email"] = f"user.{record_id}@example.com"
            values["username"] = f"user{record_id}"
        elif name == "callPurpose":
            values["order"] = row + 1
        elif name == "emailAddress":
            values["email"] = f"contact.{record_id}@example.com"
        elif name == "duty":
            names = VOCABULARY[("duty", "symbolicName")]
            values["symbolicName"] = names[(record_id - 1) % len(names)]
        return values

    def attributes(self, table: Table, row: int) -> dict[str, Any]:
        values = dict(table.variant(row))
        values.update(self.computed(table, row))
        override = self.overrides[table.name].get(row)
        if override:
            values.update(override)
        return values

    def value(self, table: Table, row: int, attribute: str) -> KeyValue:
        """The comparable value of one attribute (for filters and sort keys)."""
        if attribute == "id":
            return table.ids[row]
        times = table.times.get(attribute)
        if times is not None:
            return times[row]
        override = self.overrides[table.name].get(row)
        if override and attribute in override:
            raw = override[attribute]
        else:
            computed = self.computed(table, row)
            raw = (
                computed[attribute] if attribute in computed else table.variant(row).get(attribute)
            )
        found = table.rtype.attribute(attribute)
        return normalize(found.kind if found else None, raw)

    def creation_order(self, name: str) -> str | None:
        """The attribute of a log's creation time (an event's createdAt, an auditLog's
        timestamp) while it grows with the id, as it does in a log written in id order (a clock
        set before the generated data would break it); None for other types."""
        table = self.tables[name]
        if not table.append_only or not self._created_sorted.get(name):
            return None
        return next((a for a, column in table.times.items() if column is table.created), None)

    def list_getter(self, table: Table, attribute: Attribute) -> Callable[[int], list[KeyValue]]:
        """The comparable items of a list attribute per row (for filters on it)."""

        def items(row: int) -> list[KeyValue]:
            raw = self.attributes(table, row).get(attribute.name) or []
            return [normalize(None, item) for item in raw]

        return items

    def value_getter(self, name: str, attribute: str) -> Callable[[int], KeyValue]:
        table = self.tables[name]
        if attribute == "id":
            return table.ids.__getitem__
        times = table.times.get(attribute)
        if times is not None:
            return times.__getitem__
        return lambda row: self.value(table, row, attribute)

    # ----------------------------------------------------------------------------- rendering

    def _static_parts(self, name: str) -> dict[str, Any]:
        """Relationships that never vary for a type: to types we do not simulate."""
        table = self.tables[name]
        parts: dict[str, Any] = {}
        for rel in table.rtype.relationships:
            if rel.shape is Shape.TO_ONE and rel.name not in table.fks:
                parts[rel.name] = {"data": None}
            elif rel.shape is Shape.TO_MANY and (name, rel.name) not in self.reverse:
                parts[rel.name] = {"data": []}
        return parts

    def to_many_ids(self, name: str, relationship: str, record_id: int) -> list[int]:
        reverse = self.reverse.get((name, relationship))
        if reverse is None:
            return []
        child, fk = reverse
        child_table = self.tables[child]
        alive = child_table.alive
        ids = child_table.ids
        return [ids[r] for r in self.rows_pointing_at(child, fk, record_id) if alive[r]]

    def to_one_id(self, table: Table, row: int, relationship: str, target: str) -> int | None:
        column = table.fks.get(relationship)
        if column is None:
            return None
        target_id = column[row]
        if not target_id:
            return None
        if self.deleted[target] and self.alive_row(target, target_id) is None:
            return None  # a reference to a deleted record reads as null
        return target_id

    def relationships(self, table: Table, row: int) -> dict[str, Any]:
        name = table.name
        record_id = table.ids[row]
        out: dict[str, Any] = {}
        for rel_name, shape, target, static in self.plans[name]:
            if static is not None:
                out[rel_name] = static
                if self.wire_extras and shape is Shape.TO_MANY:
                    out[rel_name] = {**static, "links": self.related(name, target, record_id)}
            elif shape is Shape.TO_ONE:
                target_id = self.to_one_id(table, row, rel_name, target)
                out[rel_name] = {
                    "data": None if target_id is None else {"type": target, "id": target_id}
                }
            elif shape is Shape.TO_MANY:
                out[rel_name] = {
                    "data": [
                        {"type": target, "id": i}
                        for i in self.to_many_ids(name, rel_name, record_id)
                    ]
                }
                if self.wire_extras:
                    out[rel_name]["links"] = self.related(name, target, record_id)
            else:
                out[rel_name] = {"links": self.related(name, target, record_id)}
        return out

    def related(self, name: str, target: str, record_id: int | str) -> dict[str, str]:
        """A relationship's `links` object: the URL listing the `target` records of a `name`
        record (`record_id` may be the renderer's id sentinel)."""
        collection = collection_of(target, self.tables)
        return {"related": f"{self.base_url}/{collection}?filter[{name}][id]={record_id}"}

    def wire_id(self, table: Table, row: int) -> RecordId:
        """A record's id as served: its integer id, or for a type whose ids the OpenAPI file says
        are UUIDs (auditLog), a UUID that sorts as the integer id does (`data.log_uuid`)."""
        if table.rtype.id_kind is Kind.STRING:
            return log_uuid(table.ids[row], table.created[row])
        return table.ids[row]

    def resource(self, table: Table, row: int) -> dict[str, Any]:
        """The full JSON:API resource object of one row."""
        return {
            "type": table.name,
            "id": self.wire_id(table, row),
            "attributes": self.attributes(table, row),
            "relationships": self.relationships(table, row),
        }

    def record_bytes(self, name: str, row: int) -> bytes:
        """The serialized full resource object, cached until the record or a neighbour changes.

        Rows without overrides are spliced from bytes (`render.py`); rows with overrides (rare:
        updated by a mutation or a write) go through `resource`, the dict reference rendering.
        The cache admits records until it is full, then admits nothing more until mutations
        free room: a walk over more records than fit re-renders the uncached ones but never
        evicts the cached ones, so repeated walks keep a constant hit rate instead of none.
        """
        cache = self._cache[name]
        cached = cache.get(row)
        if cached is not None:
            return cached
        if row in self.overrides[name]:
            # A copy: orjson's own buffer keeps its growth headroom, several times the length.
            encoded = memoryview(orjson.dumps(self.resource(self.tables[name], row))).tobytes()
        else:
            encoded = self._renderers[name].render(row)
        if self._cache_size + len(encoded) <= self.cache_limit:
            cache[row] = encoded
            self._cache_size += len(encoded)
        return encoded

    def reference_bytes(self, name: str, row: int) -> bytes:
        """The record rendered through dicts and orjson, bypassing the cache (for tests)."""
        return orjson.dumps(self.resource(self.tables[name], row))

    def sparse_bytes(self, name: str, row: int, fields: frozenset[str]) -> bytes:
        table = self.tables[name]
        attributes = self.attributes(table, row)
        relationships = self.relationships(table, row)
        return orjson.dumps(
            {
                "type": name,
                "id": self.wire_id(table, row),
                "attributes": {k: v for k, v in attributes.items() if k in fields},
                "relationships": {k: v for k, v in relationships.items() if k in fields},
            }
        )

    def clear_cache(self) -> None:
        for cache in self._cache.values():
            cache.clear()
        self._cache_size = 0

    def _forget(self, name: str, row: int) -> None:
        encoded = self._cache[name].pop(row, None)
        if encoded is not None:
            self._cache_size -= len(encoded)

    def _forget_neighbours(self, name: str, row: int) -> None:
        """Drop cached bytes that show this record: its own and those of records that name it."""
        table = self.tables[name]
        record_id = table.ids[row]
        self._forget(name, row)
        for (parent, _), (child, fk) in self.reverse.items():
            if child == name:  # the parent lists this record in a to-many `data` array
                parent_row = self.tables[parent].row_of(table.fks[fk][row])
                if parent_row is not None:
                    self._forget(parent, parent_row)
        for other, fk in self._referrers[name]:
            # In the account world, a to-one without an index gets one (kept from then on)
            # rather than costing the whole cache of its type.
            if (other, fk) in self.fk_index or self.tables[other].linked:
                for r in self.rows_pointing_at(other, fk, record_id):
                    self._forget(other, r)
            else:
                self._cache_size -= sum(len(b) for b in self._cache[other].values())
                self._cache[other].clear()

    # ----------------------------------------------------------------------------- truth

    def records(self, name: str) -> Iterator[dict[str, Any]]:
        table = self.tables[name]
        for row in range(len(table)):
            if table.alive[row]:
                yield orjson.loads(self.record_bytes(name, row))

    def get(self, name: str, record_id: int) -> dict[str, Any] | None:
        row = self.alive_row(name, record_id)
        if row is None:
            return None
        loaded: dict[str, Any] = orjson.loads(self.record_bytes(name, row))
        return loaded

    def ids(self, name: str) -> list[int]:
        table = self.tables[name]
        alive = table.alive
        return [i for row, i in enumerate(table.ids) if alive[row]]

    def deleted_ids(self, name: str) -> set[int]:
        return set(self.deleted[name])

    def wire_ids(self, name: str, record_ids: list[int]) -> list[RecordId]:
        """Integer ids as served (a UUID for a type whose ids are UUIDs)."""
        table = self.tables[name]
        if table.rtype.id_kind is not Kind.STRING:
            return list(record_ids)
        out: list[RecordId] = []
        for record_id in record_ids:
            row = table.row_of(record_id)
            assert row is not None, "an id the table allocated"
            out.append(self.wire_id(table, row))
        return out

    def record_id(self, name: str, wire_id: RecordId) -> int:
        """The integer id of a served id (-1 for a string that is not one of ours)."""
        if isinstance(wire_id, int):
            return wire_id
        try:
            return uuid_record_id(wire_id)
        except ValueError:
            return -1

    # ----------------------------------------------------------------------------- mutations

    def _now(self, at_least: int = 0) -> int:
        """An updatedAt for a mutation: the clock, never before an earlier mutation's stamp.

        Monotonic stamps keep an updatedAt-sorted walk complete: whatever a mutation touches
        sorts after every record served so far, so it is still ahead of the walk's cursor.
        """
        self._latest = max(int(self.clock()), self._latest, at_least)
        return self._latest

    def _random_alive_row(
        self, name: str, accept: Callable[[int], bool] | None = None
    ) -> int | None:
        table = self.tables[name]
        if not len(table):
            return None
        for _ in range(64):
            row = self.rng.randrange(len(table))
            if table.alive[row] and (accept is None or accept(row)):
                return row
        return None

    def _random_alive_id(self, name: str, null_share: float = 0.0) -> int:
        if self.rng.random() < null_share:
            return 0
        row = self._random_alive_row(name)
        return 0 if row is None else self.tables[name].ids[row]

    def _index_insert(self, name: str, row: int) -> None:
        table = self.tables[name]
        updated = table.updated
        order = self.by_updated[name]
        order.insert(bisect_right(order, (updated[row], row), key=lambda r: (updated[r], r)), row)
        for fk in self._indexed.get(name, ()):
            self._fk_index_add(name, fk, row)

    def _fk_index_add(self, name: str, fk: str, row: int) -> None:
        key = self.tables[name].fks[fk][row]
        index, keys = self.fk_index[(name, fk)], self.fk_keys[(name, fk)]
        lo = bisect_left(keys, key)
        position = bisect_left(index, row, lo, bisect_right(keys, key, lo))
        index.insert(position, row)
        keys.insert(position, key)

    def _fk_index_remove(self, name: str, fk: str, row: int) -> None:
        """Take `row` out of the index while the column still holds its old target id."""
        key = self.tables[name].fks[fk][row]
        index, keys = self.fk_index[(name, fk)], self.fk_keys[(name, fk)]
        lo = bisect_left(keys, key)
        position = bisect_left(index, row, lo, bisect_right(keys, key, lo))
        assert index[position] == row, "fk index out of step with the table"
        del index[position]
        del keys[position]

    def insert(self, name: str) -> int:
        """Insert a record of type `name` (id above every id used so far); returns its id."""
        table = self.tables[name]
        now = self._now()
        record_id = table.allocate_id(self.rng)
        row = table.append(record_id, now, now)
        self._inserting = (name, row)
        if "eventAt" in table.columns:
            table.columns["eventAt"][row] = now
        fks = table.fks
        step_row: int | None = None
        steps = self.tables["sequenceStep"]
        if name == "user":
            fks["creator"][row] = self._random_alive_id("user", 0.2)
            fks["updater"][row] = self._random_alive_id("user", 0.3)
        elif name == "callPurpose":
            fks["creator"][row] = self._random_alive_id("user", 0.2)
        elif name == "sequence":
            for fk in ("creator", "owner", "updater"):
                fks[fk][row] = self._random_alive_id("user", 0.1)
            table.columns["sequenceType"][row] = int(self.rng.random() < 0.3)
        elif name == "sequenceStep":
            self._fill_step(table, row, now)
        elif name == "sequenceTemplate" or name == "mailing":
            step_row = self._random_alive_row(
                "sequenceStep", lambda r: steps.columns["stepType"][r] in EMAIL_STEP_CODES
            )
        elif name == "call":
            step_row = self._random_alive_row(
                "sequenceStep", lambda r: steps.columns["stepType"][r] == CALL_STEP_CODE
            )
        elif name == "task":
            step_row = self._random_alive_row("sequenceStep")
        if name in ("sequenceTemplate", "mailing", "call", "task"):
            step_id = 0 if step_row is None else steps.ids[step_row]
            fks["sequenceStep"][row] = step_id
            sequence_id = 0 if step_row is None else steps.fks["sequence"][step_row]
            if name == "sequenceTemplate":
                fks["creator"][row] = self._random_alive_id("user", 0.1)
                fks["updater"][row] = self._random_alive_id("user", 0.3)
            else:
                fks["sequence"][row] = sequence_id
            if name in ("mailing", "call"):
                fks["user"][row] = self._random_alive_id("user", 0.05)
            if name == "call":
                fks["callPurpose"][row] = (
                    0 if step_row is None else steps.fks["callPurpose"][step_row]
                )
            if name == "task":
                fks["creator"][row] = step_id
                fks["owner"][row] = self._random_alive_id("user", 0.05)
                fks["taskPriority"][row] = (
                    0 if step_row is None else steps.fks["taskPriority"][step_row]
                )
        self._link(table, row, table.linked)
        if row and table.created[row] < table.created[row - 1]:
            self._created_sorted[name] = False
        self._inserting = None
        self._index_insert(name, row)
        self.epoch[name] += 1
        self._forget_neighbours(name, row)
        return record_id

    def _link(self, table: Table, row: int, fks: list[str]) -> None:
        """Fill the to-ones of a new record that the account's rules own (`account.RULES`)."""
        for fk, rule in plan(table.name, fks):
            table.fks[fk][row] = self._linked(table, row, fk, rule)

    def _linked(self, table: Table, row: int, fk: str, rule: Rule) -> int:
        """The target id `rule` gives the to-one `fk` of a new record, among live records."""
        target = self.fk_target(table.name, fk)
        if isinstance(rule, Same):
            return table.fks[rule.other][row]
        if isinstance(rule, Pick | Nth):
            found = self._random_alive_id(target, rule.null_share if isinstance(rule, Pick) else 0)
            return 0 if target == table.name and found == table.ids[row] else found
        if isinstance(rule, Follow):
            via = self.fk_target(table.name, rule.via)
            via_row = self.alive_row(via, table.fks[rule.via][row])
            value = 0 if via_row is None else self.tables[via].fks[rule.fk][via_row]
            if value and self.alive_row(target, value) is None:
                value = 0
            if not value and rule.or_pick is not None:
                value = self._random_alive_id(target, rule.or_pick)
            return value
        key = table.ids[row] if rule.own == "id" else table.fks[rule.own][row]
        if not key or self.rng.random() < rule.null_share:
            return 0
        targets = self.tables[target]
        members = [r for r in self.rows_pointing_at(target, rule.fk, key) if targets.alive[r]]
        return targets.ids[members[self.rng.randrange(len(members))]] if members else 0

    def _fill_step(self, table: Table, row: int, now: int) -> None:
        rng = self.rng
        code = rng.choices((0, 1, 2, 3), (40, 15, 25, 20))[0]
        table.columns["stepType"][row] = code
        sequence_id = self._random_alive_id("sequence", 0.03)
        table.fks["sequence"][row] = sequence_id
        sequence_row = self.alive_row("sequence", sequence_id) if sequence_id else None
        kind = SCHEDULE_NONE
        if sequence_row is not None:
            siblings = self.rows_pointing_at("sequenceStep", "sequence", sequence_id)
            table.columns["order"][row] = 1 + max(
                (table.columns["order"][r] for r in siblings if r != row), default=0
            )
            date_based = self.tables["sequence"].columns["sequenceType"][sequence_row]
            kind = SCHEDULE_DATE if date_based else SCHEDULE_INTERVAL
            table.columns["schedule"][row] = (
                now // 86_400 + rng.randint(0, 60) if date_based else rng.choice((0, 3600, 86_400))
            )
        table.columns["scheduleKind"][row] = kind
        table.fks["creator"][row] = self._random_alive_id("user", 0.1)
        table.fks["updater"][row] = self._random_alive_id("user", 0.25)
        table.fks["callPurpose"][row] = self._random_alive_id(
            "callPurpose", 0.3 if code == 2 else 0.9
        )
        table.fks["taskPriority"][row] = self._random_alive_id("taskPriority", 0.2)

    def update(self, name: str, record_id: int) -> str:
        """Change one writable attribute of a record and bump its updatedAt; returns the attribute."""
        table = self.tables[name]
        row = self.alive_row(name, record_id)
        if row is None:
            raise KeyError(f"{name} {record_id} does not exist")
        if table.append_only:
            raise ValueError(f"{name} records never change (the type has no updatedAt)")
        candidates = self._mutable[name]
        if not candidates:  # nothing writable to change: a relationship, else updatedAt alone
            moved = self.move(name, record_id)
            if moved is None:
                self._changed(name, row)
            return moved or "updatedAt"
        attribute = candidates[self.rng.randrange(len(candidates))]
        old = self.attributes(table, row).get(attribute.name)
        new: Any = old
        while new == old:
            vocabulary = VOCABULARY.get((name, attribute.name))
            if vocabulary is not None and len(vocabulary) > 1:
                new = vocabulary[self.rng.randrange(len(vocabulary))]
            elif attribute.kind is Kind.BOOLEAN:
                new = not old
            elif attribute.kind is Kind.INTEGER:
                new = self.rng.randint(0, 10_000)
            else:
                limit = min(attribute.max_length or 200, 200)
                new = text(self.rng, self.rng.randint(1, limit))
        self.overrides[name].setdefault(row, {})[attribute.name] = new
        self._touch(name, row)
        self.epoch[name] += 1
        self._forget_neighbours(name, row)
        return attribute.name

    def _touch(self, name: str, row: int) -> None:
        """Bump a record's updatedAt to now (monotonic) and move it in the updatedAt index."""
        table = self.tables[name]
        order = self.by_updated[name]
        updated = table.updated
        position = bisect_left(order, (updated[row], row), key=lambda r: (updated[r], r))
        assert order[position] == row, "by_updated index out of step with the table"
        del order[position]
        updated[row] = self._now(at_least=updated[row] + 1)
        order.insert(bisect_right(order, (updated[row], row), key=lambda r: (updated[r], r)), row)

    # ----------------------------------------------------------------------------- writes

    def create(self, name: str, change: StepChange) -> int:
        """Insert a record from a validated API write; returns its id (above every id used).

        What the write does not set is what a fresh record has: counters 0, other attributes
        null, creator and updater null (the simulator's token stands for no user).
        """
        table = self.tables[name]
        now = self._now()
        record_id = table.allocate_id(self.rng)
        row = table.append(record_id, now, now)
        computed = self.computed(table, row)
        self.overrides[name][row] = {
            a.name: 0 if a.read_only and a.kind is Kind.INTEGER else None
            for a in table.rtype.attributes
            if a.name not in computed
        }
        for fk, target_id in change.relationships.items():
            table.fks[fk][row] = target_id
        self._write_attributes(table, row, change.attributes)
        self._index_insert(name, row)
        self.epoch[name] += 1
        self._forget_neighbours(name, row)
        return record_id

    def patch(self, name: str, record_id: int, change: StepChange) -> None:
        """Apply a validated API write to a live record and bump its updatedAt."""
        table = self.tables[name]
        row = self.alive_row(name, record_id)
        if row is None:
            raise KeyError(f"{name} {record_id} does not exist")
        self._forget_neighbours(name, row)  # while the to-ones still name the old targets
        indexed = self._indexed.get(name, ())
        for fk, target_id in change.relationships.items():
            column = table.fks[fk]
            if column[row] == target_id:
                continue
            if fk in indexed:
                self._fk_index_remove(name, fk, row)
            column[row] = target_id
            if fk in indexed:
                self._fk_index_add(name, fk, row)
        self._write_attributes(table, row, change.attributes)
        self._touch(name, row)
        self.epoch[name] += 1
        self._forget_neighbours(name, row)

    def _write_attributes(self, table: Table, row: int, attributes: dict[str, Any]) -> None:
        """Store written values: in the step columns where they derive from, else as overrides."""
        override = self.overrides[table.name].setdefault(row, {})
        for name, value in attributes.items():
            if table.name == "sequenceStep" and name == "stepType":
                table.columns["stepType"][row] = STEP_TYPES.index(value)
            elif table.name == "sequenceStep" and name == "order":
                # The column reads 0 as null; an explicit 0 is kept as an override.
                table.columns["order"][row] = value or 0
                if value == 0:
                    override["order"] = 0
                else:
                    override.pop("order", None)
            else:
                override[name] = value
        if not override:
            del self.overrides[table.name][row]

    def _set_fk(self, name: str, row: int, fk: str, target_id: int) -> bool:
        """Point a to-one of a row at `target_id` (0 = null), keeping the indexes and the cache
        in step; False when it already pointed there. The caller bumps updatedAt."""
        table = self.tables[name]
        column = table.fks[fk]
        if column[row] == target_id:
            return False
        self._forget_neighbours(name, row)  # while the to-one still names the old target
        indexed = (name, fk) in self.fk_index
        if indexed:
            self._fk_index_remove(name, fk, row)
        column[row] = target_id
        if indexed:
            self._fk_index_add(name, fk, row)
        return True

    def _changed(self, name: str, row: int) -> None:
        """A live change of a record: bump its updatedAt, its type's epoch, drop stale bytes."""
        self._touch(name, row)
        self.epoch[name] += 1
        self._forget_neighbours(name, row)

    def fk_target(self, name: str, fk: str) -> str:
        """The type a populated to-one of `name` points at."""
        return next(r.target for r in self.tables[name].rtype.relationships if r.name == fk)

    def delete(self, name: str, record_id: int) -> None:
        """Remove a record. As the API does when a step goes (its mailings, calls and tasks then
        read `sequenceStep: null` with a newer updatedAt), every live record whose to-one names
        it is changed to null and its updatedAt bumped. A record of a type that never changes
        (no updatedAt: an event, a note) goes with the record it names instead: a change
        nothing would announce cannot happen to it."""
        row = self.alive_row(name, record_id)
        if row is None:
            raise KeyError(f"{name} {record_id} does not exist")
        self._forget_neighbours(name, row)
        self.tables[name].alive[row] = 0
        self.deleted[name].add(record_id)
        self.epoch[name] += 1
        for other, other_table in self.tables.items():
            for fk in other_table.fks:
                if self.fk_target(other, fk) != name:
                    continue
                for referrer in self.rows_pointing_at(other, fk, record_id):
                    if not other_table.alive[referrer]:
                        continue
                    if other_table.append_only:
                        self.delete(other, other_table.ids[referrer])
                    elif self._set_fk(other, referrer, fk, 0):
                        self._changed(other, referrer)
        self._forget_neighbours(name, row)

    def move(self, name: str, record_id: int) -> str | None:
        """Point one populated to-one of a record at another live record (sometimes at none) and
        bump its updatedAt: a mailing to another step, a step to another sequence, a new
        updater, ... Returns the relationship moved; None for a type without one."""
        table = self.tables[name]
        row = self.alive_row(name, record_id)
        if row is None:
            raise KeyError(f"{name} {record_id} does not exist")
        if not table.fks or table.append_only:
            return None
        fk = self.rng.choice(sorted(table.fks))
        target = self.fk_target(name, fk)
        old = table.fks[fk][row]
        new = old
        for _ in range(8):
            new = self._random_alive_id(target, 0.1)
            if new != old and not (target == name and new == record_id):
                break
        if new == old or (target == name and new == record_id):
            new = 0 if old else old
        if not self._set_fk(name, row, fk, new):
            return None
        self._changed(name, row)
        return fk

    def mutate(self, count: int) -> None:
        """Apply `count` random operations spread over every type: 40% inserts, 30% updates,
        15% relationship moves, 15% deletes (a type that never changes: 85% inserts)."""
        names = list(self.tables)
        weights = [len(self.tables[n]) + 50 for n in names]
        for _ in range(count):
            name = self.rng.choices(names, weights)[0]
            draw = self.rng.random()
            alive = self._random_alive_row(name)
            if draw < 0.4 or alive is None:
                self.insert(name)
                continue
            record_id = self.tables[name].ids[alive]
            # Small lookup tables keep at least three records: deleting them all is not realistic.
            scarce = name in self.scarce and len(self.ids(name)) <= 3
            if self.tables[name].append_only:  # never changed: appended or deleted
                if draw < 0.85 or scarce:
                    self.insert(name)
                else:
                    self.delete(name, record_id)
                continue
            if draw < 0.7 or (draw < 0.85 and self.move(name, record_id) is None):
                self.update(name, record_id)
            elif draw >= 0.85:
                if scarce:
                    self.update(name, record_id)
                else:
                    self.delete(name, record_id)
