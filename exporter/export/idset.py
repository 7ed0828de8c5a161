"""A set of int64 ids at about 8 bytes each (`IdSet`), and membership of sorted id arrays."""

from __future__ import annotations

import bisect
from array import array
from collections.abc import Iterable, Iterator

import numpy as np
import numpy.typing as npt

Ids = npt.NDArray[np.int64]
Mask = npt.NDArray[np.bool_]
NO_IDS: Ids = np.empty(0, np.int64)


class IdSet:
    """A set of int64 ids at about 8 bytes each: a sorted array holding most of them, plus two
    small tiers merged into it once they hold an eighth as many: ids added one at a time (`add`,
    a Python set) and ids added a page at a time (`add_new`, a sorted numpy array, so a page of
    ids costs a few binary searches in C rather than a Python call per id)."""

    def __init__(self, values: Iterable[int] = ()) -> None:
        self._sorted = array("q", sorted(set(values)))
        self._recent: set[int] = set()
        self._bulk: Ids = NO_IDS

    def __contains__(self, value: int) -> bool:
        if value in self._recent:
            return True
        index = bisect.bisect_left(self._sorted, value)
        if index < len(self._sorted) and self._sorted[index] == value:
            return True
        return bool(len(self._bulk) and members(self._bulk, np.array([value], np.int64))[0])

    def add(self, value: int) -> bool:
        """Add `value`; False when it was already there."""
        if value in self:
            return False
        self._recent.add(value)
        if len(self._recent) + len(self._bulk) >= self._merge_at():
            self._merge()
        return True

    def add_new(self, values: Ids) -> Mask:
        """Add a page of `values`; True where a value was new: not in the set before, and the
        first of its repeats within `values`."""
        if self._recent:
            self._merge()  # one tier of small additions to look in, not two
        unique, first = np.unique(values, return_index=True)
        known = self.holds(unique)
        fresh = unique[~known]
        if len(fresh):
            self._bulk = np.insert(self._bulk, np.searchsorted(self._bulk, fresh), fresh)
            if len(self._bulk) >= self._merge_at():
                self._merge()
        new: Mask = np.zeros(len(values), np.bool_)
        new[first[~known]] = True
        return new

    def holds(self, values: Ids) -> Mask:
        """Where each of `values` is in the set."""
        held = members(np.frombuffer(self._sorted, np.int64), values)
        if len(self._bulk):
            held |= members(self._bulk, values)
        if self._recent:
            held |= np.isin(values, np.fromiter(self._recent, np.int64, len(self._recent)))
        return held

    def _merge_at(self) -> int:
        return max(4096, len(self._sorted) // 8)

    def _merge(self) -> None:
        small = np.concatenate([self._bulk, np.fromiter(self._recent, np.int64, len(self._recent))])
        small.sort()
        merged = np.frombuffer(self._sorted, np.int64)
        merged = np.insert(merged, np.searchsorted(merged, small), small)  # one pass: O(n)
        self._sorted = array("q", merged.tobytes())
        self._recent.clear()
        self._bulk = NO_IDS

    def __len__(self) -> int:
        return len(self._sorted) + len(self._recent) + len(self._bulk)

    def __iter__(self) -> Iterator[int]:
        """Every id, ascending."""
        return iter(sorted([*self._sorted, *self._recent, *self._bulk.tolist()]))


def members(sorted_ids: Ids, values: Ids) -> Mask:
    """Where each of `values` is in `sorted_ids` (ascending, no repeats)."""
    if not len(sorted_ids):
        return np.zeros(len(values), np.bool_)
    index = np.searchsorted(sorted_ids, values)
    index[index == len(sorted_ids)] = 0
    found: Mask = sorted_ids[index] == values
    return found
