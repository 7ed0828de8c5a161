"""Records straight to JSON bytes: one format string per attribute variant, spliced with per-row values."""

from __future__ import annotations

from array import array
from bisect import bisect_left, bisect_right
from collections.abc import Callable, Collection
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import orjson

from exporter.model.schema import RESOURCE_TYPES, Kind, Shape, resource_type

from .data import (
    SCHEDULE_DATE,
    SCHEDULE_INTERVAL,
    SEQUENCE_TYPES,
    STEP_TYPES,
    VOCABULARY,
    Table,
    log_uuid,
)

if TYPE_CHECKING:
    from .store import Store

# Sentinels dumped in place of per-row values, then replaced by `%s` / `%d` in the serialized
# bytes. The data generator never produces U+FFFF, so a sentinel cannot collide with a value.
_VALUE = "\uffffvalue\uffff"
_VALUE_JSON = orjson.dumps(_VALUE)
_ID = "\uffffid\uffff"
_ID_BYTES = _ID.encode()

NULL = b"null"
EMPTY = b"[]"


def collection_of(target: str, simulated: Collection[str]) -> str:
    """The URL segment of a type in a links-only relationship's URL. A type not simulated gets
    its name plus "s", as links to it always had (`batchs`) in the step world, whose bytes
    stay as they were; in the account world every readable type is simulated."""
    if target in RESOURCE_TYPES or target in simulated:
        return resource_type(target).collection
    return target if target.endswith("s") else target + "s"


# The slots of a sequenceStep record, in document order, that `TypeRenderer._step_values` fills.
STEP_SLOTS = (
    "id",
    "createdAt",
    "date",
    "displayName",
    "interval",
    "order",
    "stepType",
    "updatedAt",
    "callPurpose",
    "id",
    "creator",
    "id",
    "sequence",
    "sequenceTemplates",
    "taskPriority",
    "id",
    "updater",
)

# A slot value: bytes already in JSON (for `%s`) or an integer (for `%d`).
Producer = Callable[[int], bytes | int]


class Stamps:
    """`"2019-08-24T14:15:22.000Z"` (quoted JSON) for epoch seconds, from two lookup tables."""

    def __init__(self) -> None:
        self.cached_days: dict[int, bytes] = {}
        self.times = [
            b"T%02d:%02d:%02d.000Z" % (s // 3600, s // 60 % 60, s % 60) + b'"'
            for s in range(86_400)
        ]

    def day(self, days: int) -> bytes:
        """`"YYYY-MM-DD` (opening quote, no closing one) for a day number since the epoch."""
        found = self.cached_days.get(days)
        if found is None:
            text = datetime.fromtimestamp(days * 86_400, UTC).strftime("%Y-%m-%d")
            found = self.cached_days[days] = b'"' + text.encode()
        return found

    def datetime(self, seconds: int) -> bytes:
        days, rest = divmod(seconds, 86_400)
        return self.day(days) + self.times[rest]

    def date(self, days: int) -> bytes:
        return self.day(days) + b'"'


class TypeRenderer:
    """Renders the rows of one table that have no attribute overrides.

    A record is `format % (id, *attribute slots, *relationship slots)`, where the format comes
    from the row's attribute variant (`row % len(pool)`) and holds every value the variant fixes
    and every relationship that never varies, already serialized. Per row only the values that
    come from columns (timestamps, stepType, foreign keys, ...) are formatted: no dict, no dumps.
    """

    def __init__(self, store: Store, table: Table, stamps: Stamps) -> None:
        self.store = store
        self.table = table
        self.stamps = stamps
        self._formats: list[bytes] = []
        self._producers: tuple[Producer, ...] = ()
        self._values: Callable[[int], tuple[bytes | int, ...]] = self._generic_values
        self._base_url: str | None = None
        self.specialized = True  # tests turn it off to check the generic path

    def render(self, row: int) -> bytes:
        if self._base_url != self.store.base_url:
            self._build(self.store.base_url)
        formats = self._formats
        return formats[row % len(formats)] % self._values(row)

    def _generic_values(self, row: int) -> tuple[bytes | int, ...]:
        return tuple([p(row) for p in self._producers])

    # ------------------------------------------------------------------------------ building

    def _build(self, base_url: str) -> None:
        store = self.store
        table = self.table
        name = table.name
        computed = self._computed_attributes()
        names = [a.name for a in table.rtype.attributes]
        producers: list[Producer] = [self._id()]
        producers += [computed[n] for n in names if n in computed]
        slots = ["id", *(n for n in names if n in computed)]
        relationships: dict[str, Any] = {}
        extra_ids: list[int] = []  # slots of the ids only `wire_extras` adds (a to-many's links)
        for rel_name, shape, target, static in store.plans[name]:
            linked = store.wire_extras and shape is Shape.TO_MANY
            if static is not None:
                relationships[rel_name] = static
            elif shape is Shape.LINKS:
                relationships[rel_name] = {"links": store.related(name, target, _ID)}
                producers.append(table.ids.__getitem__)
                slots.append("id")
            else:
                relationships[rel_name] = {"data": _VALUE}
                producers.append(
                    self._to_one(rel_name, target)
                    if shape is Shape.TO_ONE
                    else self._to_many(rel_name, target)
                )
                slots.append(rel_name)
            if linked:
                relationships[rel_name] = {
                    **relationships[rel_name],
                    "links": store.related(name, target, _ID),
                }
                extra_ids.append(len(slots))
                producers.append(table.ids.__getitem__)
                slots.append("id")
        id_slot = b"%s" if table.rtype.id_kind is Kind.STRING else b"%d"
        head = b'{"type":' + orjson.dumps(name) + b',"id":' + id_slot + b',"attributes":'
        middle = b',"relationships":' + _template(orjson.dumps(relationships)) + b"}"
        formats = []
        for variant in table.pool:
            if list(variant) != names:
                raise AssertionError(f"{name} variant keys are not in schema order")
            attributes = {k: _VALUE if k in computed else v for k, v in variant.items()}
            formats.append(head + _template(orjson.dumps(attributes)) + middle)
        self._formats = formats
        self._producers = tuple(producers)
        self._values = self._generic_values
        base_slots = tuple(s for i, s in enumerate(slots) if i not in extra_ids)
        if self.specialized and name == "sequenceStep" and base_slots == STEP_SLOTS:
            self._values = _with_ids(self._step_values(), extra_ids)
        self._base_url = base_url

    def _step_values(self) -> Callable[[int], tuple[bytes | int, ...]]:
        """The slot values of a step in one function (the hot path: no call per slot).

        Same values as the generic producers, in STEP_SLOTS order (checked against the schema).
        """
        table = self.table
        store = self.store
        ids, created, updated = table.ids, table.created, table.updated
        codes, orders = table.columns["stepType"], table.columns["order"]
        kinds, schedules = table.columns["scheduleKind"], table.columns["schedule"]
        fks = table.fks
        sequences, creators, updaters = fks["sequence"], fks["creator"], fks["updater"]
        purposes, priorities = fks["callPurpose"], fks["taskPriority"]
        alive_row = store.alive_row
        deleted = store.deleted
        gone_sequences, gone_users = deleted["sequence"], deleted["user"]
        gone_purposes, gone_priorities = deleted["callPurpose"], deleted["taskPriority"]
        stamps = self.stamps
        day_of, day = stamps.cached_days.get, stamps.day
        times = stamps.times
        labels: dict[tuple[int, int], tuple[bytes, bytes, bytes]] = {}
        templates = self._to_many("sequenceTemplates", "sequenceTemplate")
        sequence_ref = b'{"type":"sequence","id":%d}'
        user_ref = b'{"type":"user","id":%d}'
        purpose_ref = b'{"type":"callPurpose","id":%d}'
        priority_ref = b'{"type":"taskPriority","id":%d}'

        def values(row: int) -> tuple[bytes | int, ...]:
            record_id = ids[row]
            seconds = created[row]
            days = seconds // 86_400
            created_json = (day_of(days) or day(days)) + times[seconds - days * 86_400]
            seconds = updated[row]
            days = seconds // 86_400
            updated_json = (day_of(days) or day(days)) + times[seconds - days * 86_400]
            key = (codes[row], orders[row])
            label = labels.get(key)
            if label is None:
                label = labels[key] = _step_label(*key)
            kind = kinds[row]
            date_json = interval_json = NULL
            if kind == SCHEDULE_DATE:
                date_json = stamps.date(schedules[row])
            elif kind == SCHEDULE_INTERVAL:
                interval_json = b"%d" % schedules[row]
            target = sequences[row]
            sequence = (
                NULL
                if not target or (gone_sequences and alive_row("sequence", target) is None)
                else sequence_ref % target
            )
            target = creators[row]
            creator = (
                NULL
                if not target or (gone_users and alive_row("user", target) is None)
                else user_ref % target
            )
            target = updaters[row]
            updater = (
                NULL
                if not target or (gone_users and alive_row("user", target) is None)
                else user_ref % target
            )
            target = purposes[row]
            purpose = (
                NULL
                if not target or (gone_purposes and alive_row("callPurpose", target) is None)
                else purpose_ref % target
            )
            target = priorities[row]
            priority = (
                NULL
                if not target or (gone_priorities and alive_row("taskPriority", target) is None)
                else priority_ref % target
            )
            return (
                record_id,
                created_json,
                date_json,
                label[2],
                interval_json,
                label[1],
                label[0],
                updated_json,
                purpose,
                record_id,
                creator,
                record_id,
                sequence,
                templates(row),
                priority,
                record_id,
                updater,
            )

        return values

    def _id(self) -> Producer:
        """The record's id as served: an integer, or a quoted UUID (`Store.wire_id`)."""
        table = self.table
        if table.rtype.id_kind is not Kind.STRING:
            return table.ids.__getitem__
        ids, created = table.ids, table.created
        return lambda row: orjson.dumps(log_uuid(ids[row], created[row]))

    def _computed_attributes(self) -> dict[str, Producer]:
        """Producers of the attributes `Store.computed` derives from columns (same values)."""
        table = self.table
        stamps = self.stamps
        ids = table.ids
        out: dict[str, Producer] = {
            attribute: _stamp(stamps, column) for attribute, column in table.times.items()
        }
        name = table.name
        if name == "sequenceStep":
            codes = table.columns["stepType"]
            orders = table.columns["order"]
            kinds = table.columns["scheduleKind"]
            schedules = table.columns["schedule"]
            labels: dict[tuple[int, int], tuple[bytes, bytes, bytes]] = {}

            def label(row: int) -> tuple[bytes, bytes, bytes]:
                key = (codes[row], orders[row])
                found = labels.get(key)
                if found is None:
                    found = labels[key] = _step_label(*key)
                return found

            def date(row: int) -> bytes:
                return stamps.date(schedules[row]) if kinds[row] == SCHEDULE_DATE else NULL

            def interval(row: int) -> bytes:
                return b"%d" % schedules[row] if kinds[row] == SCHEDULE_INTERVAL else NULL

            out["stepType"] = lambda row: label(row)[0]
            out["order"] = lambda row: label(row)[1]
            out["displayName"] = lambda row: label(row)[2]
            out["date"] = date
            out["interval"] = interval
        elif name == "sequence":
            kinds = table.columns["sequenceType"]
            pool = table.pool
            kind_json = [orjson.dumps(kind) for kind in SEQUENCE_TYPES]
            out["sequenceType"] = lambda row: kind_json[kinds[row]]
            out["name"] = lambda row: orjson.dumps(
                f"{pool[row % len(pool)]['name'] or 'Sequence'} #{ids[row]}"[:255]
            )
        elif name == "user":
            out["email"] = lambda row: b'"user.%d@example.com"' % ids[row]
            out["username"] = lambda row: b'"user%d"' % ids[row]
        elif name == "callPurpose":
            out["order"] = lambda row: b"%d" % (row + 1)
        elif name == "emailAddress":
            out["email"] = lambda row: b'"contact.%d@example.com"' % ids[row]
        elif name == "duty":
            duty_names = [orjson.dumps(n) for n in VOCABULARY[("duty", "symbolicName")]]
            out["symbolicName"] = lambda row: duty_names[(ids[row] - 1) % len(duty_names)]
        return out

    def _to_one(self, relationship: str, target: str) -> Producer:
        column = self.table.fks[relationship]
        identifier = b'{"type":' + orjson.dumps(target) + b',"id":%d}'
        deleted = self.store.deleted[target]  # the same set object for good: mutated in place
        alive_row = self.store.alive_row

        def produce(row: int) -> bytes:
            target_id = column[row]
            if not target_id or (deleted and alive_row(target, target_id) is None):
                return NULL  # a reference to a deleted record reads as null
            return identifier % target_id

        return produce

    def _to_many(self, relationship: str, target: str) -> Callable[[int], bytes]:
        """A to-many `data` array derived from the children's to-one (see `store.reverse`)."""
        identifier = b'{"type":' + orjson.dumps(target) + b',"id":%d}'
        ids = self.table.ids
        store = self.store
        child, fk = store.reverse[(self.table.name, relationship)]
        # The index arrays are updated in place, never replaced, so holding them is safe.
        index, keys = store.fk_index[(child, fk)], store.fk_keys[(child, fk)]
        child_table = store.tables[child]
        child_ids, child_alive = child_table.ids, child_table.alive

        def produce(row: int) -> bytes:
            record_id = ids[row]
            lo = bisect_left(keys, record_id)
            if lo == len(keys) or keys[lo] != record_id:
                return EMPTY
            found = [
                identifier % child_ids[r]
                for r in index[lo : bisect_right(keys, record_id, lo)]
                if child_alive[r]
            ]
            return b"[" + b",".join(found) + b"]" if found else EMPTY

        return produce


def _with_ids(
    values: Callable[[int], tuple[bytes | int, ...]], positions: list[int]
) -> Callable[[int], tuple[bytes | int, ...]]:
    """`values` with the record's id (its first slot) inserted at `positions` (ascending)."""
    if not positions:
        return values

    def with_ids(row: int) -> tuple[bytes | int, ...]:
        out = list(values(row))
        for position in positions:
            out.insert(position, out[0])
        return tuple(out)

    return with_ids


def _stamp(stamps: Stamps, column: array[int]) -> Producer:
    return lambda row: stamps.datetime(column[row])


def _template(encoded: bytes) -> bytes:
    """Serialized JSON with sentinels turned into format slots (and literal `%` escaped)."""
    return encoded.replace(b"%", b"%%").replace(_VALUE_JSON, b"%s").replace(_ID_BYTES, b"%d")


def _step_label(code: int, order: int) -> tuple[bytes, bytes, bytes]:
    """stepType, order and displayName of a step, serialized (as `Store.computed` has them)."""
    step_type = STEP_TYPES[code]
    label = step_type.replace("_", " ").title()
    display = f"Step #{order} ({label})" if order else label
    return orjson.dumps(step_type), b"%d" % order if order else NULL, orjson.dumps(display)
