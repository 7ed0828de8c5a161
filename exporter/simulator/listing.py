"""Answering a parsed query from the store's indexes: which rows make up a page, in keyset order."""

from __future__ import annotations

from array import array
from bisect import bisect_left, bisect_right
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from exporter.model.schema import Kind

from .paging import KeyValue, compare_keys
from .query import COUNT_LIMIT, Condition, Query
from .store import Store

SortKeyOf = Callable[[int], tuple[KeyValue, ...]]


@dataclass(frozen=True)
class Page:
    rows: list[int]
    last_key: tuple[KeyValue, ...] | None  # the sort key of the last row, when there is a next page
    count: int | None  # matching records (truncated at COUNT_LIMIT), when asked for
    count_truncated: bool = False


class Lister:
    """Pages through one type. Plans, cheapest first:

    1. `filter[id]=a,b,c`: look each id up by binary search, O(k log n).
    2. An indexed relationship filter: the reverse index gives the rows, O(result).
    3. Sorted by id, or by updatedAt (then id): walk the id order or the updatedAt index from the
       cursor (found by binary search) within the range filter on that attribute, O(page + log n).
    4. Anything else: filter every row, sort, and cache the result until the type next changes.
    """

    def __init__(self, store: Store) -> None:
        self.store = store
        self._scan_cache: dict[
            tuple[object, ...], tuple[list[int], list[tuple[KeyValue, ...]]]
        ] = {}

    def page(self, query: Query) -> Page:
        store = self.store
        table = store.table(query.rtype)
        descending = tuple(k.descending for k in query.sort)
        key_of = self._key_function(query)
        predicates = self._predicates(query)
        id_condition = query.condition("id")
        if id_condition is not None and id_condition.values is not None:
            rows = [
                row
                for record_id in sorted(v for v in id_condition.values if isinstance(v, int))
                if (row := table.row_of(record_id)) is not None
            ]
            return self._from_candidates(query, rows, key_of, descending, predicates)
        indexed = [
            f for f in query.relation_filters if (query.rtype, f.relationship) in store.fk_index
        ]
        if indexed:
            first = indexed[0]
            rows = sorted(
                {
                    row
                    for target in first.ids
                    for row in store.rows_pointing_at(query.rtype, first.relationship, target)
                }
            )
            return self._from_candidates(query, rows, key_of, descending, predicates)
        attributes = tuple(k.attribute for k in query.sort)
        same_direction = len(set(descending)) == 1
        walked = ("updatedAt", store.creation_order(query.rtype))
        if attributes == ("id",) or (
            len(attributes) == 2 and attributes[0] in walked and same_direction
        ):
            # The walk's bounds enforce a range filter on the walked attribute: do not test it
            # again per row (a page of an id-range walk then checks only that rows are alive).
            primary = query.condition(attributes[0])
            if primary is not None and primary.values is None:
                predicates = self._predicates(query, skip=primary)
            return self._walk_index(query, key_of, predicates)
        return self._scan(query, key_of, descending, predicates)

    # ------------------------------------------------------------------------------- pieces

    def _key_function(self, query: Query) -> SortKeyOf:
        getters = [self.store.value_getter(query.rtype, k.attribute) for k in query.sort]
        if len(getters) == 1:
            only = getters[0]
            return lambda row: (only(row),)
        if len(getters) == 2:
            first, second = getters
            return lambda row: (first(row), second(row))
        return lambda row: tuple(g(row) for g in getters)

    def _predicates(
        self, query: Query, skip: Condition | None = None
    ) -> list[Callable[[int], bool]]:
        store = self.store
        table = store.table(query.rtype)
        alive = table.alive
        predicates: list[Callable[[int], bool]] = [lambda row: alive[row] == 1]
        for condition in query.conditions:
            if condition is skip:
                continue
            attribute = table.rtype.attribute(condition.attribute)
            if attribute is not None and attribute.kind is Kind.STRING_LIST:
                # A list attribute (a prospect's `emails`) matches when one of its items does.
                predicates.append(_list_predicate(condition, store.list_getter(table, attribute)))
                continue
            predicates.append(
                _condition_predicate(
                    condition, store.value_getter(query.rtype, condition.attribute)
                )
            )
        for relation in query.relation_filters:
            column = table.fks[relation.relationship]
            target = table.rtype.relationship(relation.relationship)
            target_type = target.target if target else ""
            # A reference to a deleted record reads as null, so it matches no id.
            live_ids = frozenset(
                i for i in relation.ids if store.alive_row(target_type, i) is not None
            )
            predicates.append(_relation_predicate(column, live_ids))
        return predicates

    def _count(self, rows: Sequence[int] | range, predicates: list[Callable[[int], bool]]) -> int:
        return sum(1 for row in rows if all(p(row) for p in predicates))

    def _from_candidates(
        self,
        query: Query,
        rows: list[int],
        key_of: SortKeyOf,
        descending: tuple[bool, ...],
        predicates: list[Callable[[int], bool]],
    ) -> Page:
        matching = [row for row in rows if all(p(row) for p in predicates)]
        keys = {row: key_of(row) for row in matching}
        _sort_rows(matching, keys, descending)
        ordered_keys = [keys[row] for row in matching]
        return self._slice(query, matching, ordered_keys, descending, len(matching))

    def _slice(
        self,
        query: Query,
        rows: list[int],
        keys: list[tuple[KeyValue, ...]],
        descending: tuple[bool, ...],
        total: int,
    ) -> Page:
        start = 0
        if query.after is not None:
            cursor = query.after.key
            lo, hi = 0, len(rows)
            while lo < hi:  # first position strictly after the cursor in sort order
                mid = (lo + hi) // 2
                if compare_keys(keys[mid], cursor, descending) <= 0:
                    lo = mid + 1
                else:
                    hi = mid
            start = lo
        chosen = rows[start : start + query.page_size]
        more = start + query.page_size < len(rows)
        last = keys[start + len(chosen) - 1] if more and chosen else None
        if not query.count:
            return Page(chosen, last, None)
        return Page(chosen, last, min(total, COUNT_LIMIT), total > COUNT_LIMIT)

    def _scan(
        self,
        query: Query,
        key_of: SortKeyOf,
        descending: tuple[bool, ...],
        predicates: list[Callable[[int], bool]],
    ) -> Page:
        cache_key = (
            query.rtype,
            query.conditions,
            query.relation_filters,
            query.sort,
            self.store.epoch[query.rtype],
        )
        cached = self._scan_cache.get(cache_key)
        if cached is None:
            table = self.store.table(query.rtype)
            rows = [row for row in range(len(table)) if all(p(row) for p in predicates)]
            key_by_row = {row: key_of(row) for row in rows}
            _sort_rows(rows, key_by_row, descending)
            cached = (rows, [key_by_row[r] for r in rows])
            if len(self._scan_cache) >= 16:
                self._scan_cache.pop(next(iter(self._scan_cache)))
            self._scan_cache[cache_key] = cached
        rows, keys = cached
        return self._slice(query, rows, keys, descending, len(rows))

    def _walk_index(
        self, query: Query, key_of: SortKeyOf, predicates: list[Callable[[int], bool]]
    ) -> Page:
        """Plan 3: a walk along the id order or the updatedAt index, bounded by binary search.
        (A log's creation time grows with its id: sorted by it, the walk follows the id order.)"""
        store = self.store
        table = store.table(query.rtype)
        primary = query.sort[0].attribute
        descending = query.sort[0].descending
        order: Sequence[int] | range
        times = table.updated
        if primary == "id":
            order = range(len(table))
            primary_of: Callable[[int], int] = table.ids.__getitem__
        elif primary == "updatedAt":
            order = store.by_updated[query.rtype]
            primary_of = table.updated.__getitem__
        else:
            order = range(len(table))
            times = table.created
            primary_of = times.__getitem__
        lo, hi = 0, len(order)
        condition = query.condition(primary)
        if condition is not None and condition.values is None:
            if condition.lower is not None:
                low = condition.lower.value
                assert isinstance(low, int | float), "id and time bounds are numbers"
                search = bisect_left if condition.lower.inclusive else bisect_right
                lo = search(order, low, key=primary_of)
            if condition.upper is not None:
                high = condition.upper.value
                assert isinstance(high, int | float), "id and time bounds are numbers"
                search = bisect_right if condition.upper.inclusive else bisect_left
                hi = search(order, high, lo, key=primary_of)
        bounds = (lo, hi)
        if query.after is not None:
            cursor = query.after.key
            if primary == "id":
                full_key: Callable[[int], tuple[KeyValue, ...]] = lambda r: (table.ids[r],)  # noqa: E731
            else:
                full_key = lambda r: (times[r], table.ids[r])  # noqa: E731
            if descending:
                hi = max(lo, min(hi, bisect_left(order, cursor, lo, hi, key=full_key)))
            else:
                lo = max(lo, bisect_right(order, cursor, lo, hi, key=full_key))
        positions = range(hi - 1, lo - 1, -1) if descending else range(lo, hi)
        chosen: list[int] = []
        more = False
        accept = predicates[0] if len(predicates) == 1 else lambda r: all(p(r) for p in predicates)
        for position in positions:
            row = order[position]
            if accept(row):
                if len(chosen) == query.page_size:
                    more = True
                    break
                chosen.append(row)
        last = key_of(chosen[-1]) if more and chosen else None
        count = None
        if query.count:  # every match within the range filter, wherever the cursor is
            count = self._count([order[p] for p in range(*bounds)], predicates)
            return Page(chosen, last, min(count, COUNT_LIMIT), count > COUNT_LIMIT)
        return Page(chosen, last, count)


def _condition_predicate(
    condition: Condition, getter: Callable[[int], KeyValue]
) -> Callable[[int], bool]:
    accepts = condition.accepts
    return lambda row: accepts(getter(row))


def _list_predicate(
    condition: Condition, getter: Callable[[int], list[KeyValue]]
) -> Callable[[int], bool]:
    accepts = condition.accepts
    return lambda row: any(accepts(item) for item in getter(row))


def _relation_predicate(column: array[int], ids: frozenset[int]) -> Callable[[int], bool]:
    return lambda row: column[row] in ids


def _sort_rows(
    rows: list[int], keys: dict[int, tuple[KeyValue, ...]], descending: tuple[bool, ...]
) -> None:
    """Sort in place by the keys; stable passes from the last key to the first mix directions."""
    for position in reversed(range(len(descending))):

        def sort_key(row: int, i: int = position) -> tuple[bool, KeyValue]:
            return _nulls_first(keys[row][i])

        rows.sort(key=sort_key, reverse=descending[position])


def _nulls_first(value: KeyValue) -> tuple[bool, KeyValue]:
    return (value is not None, value)
