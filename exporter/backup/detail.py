"""A resource's `detail` in the checkpoint and the manifest: the relationship walk's progress and findings, the mark's basis, pending repairs, as one typed record.

What each part means and who writes it:
- `watermark` (related types): how far the relationship walk's batches are committed, and
  `file_needs` (the root): per committed root file, the position each related type must reach
  before that file's references are all exported. Kept by the walk's bookkeeping
  (`export.relationships`: `mark_batches_committed`, `resume_walk`); the checkpoint decodes them
  here because it sits below the export layer;
- `missing` and `unrequested` (related types): what the walk could not find, and what answers
  held that nobody asked for; `not_asked_by_step`: the API refused or ignored the by-root filter;
- `mark` (the root): what the run's incremental mark was taken from (`Export._mark_window`);
- `repairs` (any type): damaged files whose records are still to be fetched again (`repair`).

The record keeps the JSON object it is encoded to, key for key and in the order the keys were
first set, and any key this exporter does not know: a checkpoint or a manifest written from it is
byte for byte the one the plain dict it replaces gave. The manifest leaves out `needs`, which only
a resumed run reads.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Generic, TypedDict, TypeVar, cast

NOT_ASKED_BY_STEP = "not_asked_by_step"  # its JSON key, also the manifest's `stats` key

_WATERMARK = "positions_through"
_WAITING = "ranges_above"
_NEEDS = "needs"
_MISSING = "missing"
_UNREQUESTED = "unrequested"
_MARK = "mark"
_REPAIR = "repair"

T = TypeVar("T")


class IdSample(TypedDict):
    """How many ids, and the first thousand of them, ascending."""

    count: int
    ids: list[int]


class NotAsked(TypedDict):
    """The API refused or ignored `filter[<root>][id]` on a type: its records were not asked
    for by the root's ids (compaction then keeps the root's own lists of them)."""

    filter: str  # the filter, e.g. filter[sequenceStep][id]
    how: str  # refused | ignored
    why: str


class PendingRepair(TypedDict):
    """A damaged file set aside (`repair`) whose id range is still to be fetched again."""

    path: str
    low: int
    high: int
    rows: int
    by: str  # ids: the ids are missing (a full run's own file) | versions: versions may be
    needs: dict[str, int] | None  # a root file's `file_needs`, carried to the refetched rows


@dataclass(frozen=True)
class BatchWatermark:
    """How far one related type's relationship batches are committed: every position below
    `through`; committed ranges [start, end) above it wait in `waiting` until the gap below
    them closes."""

    through: int = 0
    waiting: tuple[tuple[int, int], ...] = ()


class _Entry(Generic[T]):
    """A key of the `detail` object whose value is a JSON object of type `T`, read (None when
    absent) and set as it is."""

    def __init__(self, key: str) -> None:
        self.key = key

    def __get__(self, detail: ResourceDetail, owner: type[ResourceDetail]) -> T | None:
        return cast("T | None", detail._encoded.get(self.key))

    def __set__(self, detail: ResourceDetail, value: T) -> None:
        detail._encoded[self.key] = value


class ResourceDetail:
    """The typed view of one resource's `detail` object (see the module docstring)."""

    __slots__ = ("_encoded",)

    def __init__(self, encoded: dict[str, Any] | None = None) -> None:
        self._encoded: dict[str, Any] = encoded if encoded is not None else {}

    @classmethod
    def from_json(cls, data: Any) -> ResourceDetail:
        """From a checkpoint: what it holds is taken as it is (not an object: ValueError or
        TypeError, which make the checkpoint unreadable)."""
        return cls(dict(data or {}))

    @classmethod
    def recorded(cls, data: object) -> ResourceDetail:
        """From a manifest someone may have edited: anything but an object reads as empty."""
        return cls(dict(data)) if isinstance(data, dict) else cls()

    def to_json(self) -> dict[str, Any]:
        """The JSON object, as the checkpoint writes it."""
        return self._encoded

    def in_manifest(self) -> dict[str, Any]:
        """The JSON object less what only a resumed run reads (`file_needs`)."""
        return {k: v for k, v in self._encoded.items() if k != _NEEDS}

    def __eq__(self, other: object) -> bool:
        return isinstance(other, ResourceDetail) and other._encoded == self._encoded

    def __repr__(self) -> str:
        return f"ResourceDetail({self._encoded!r})"

    # -- the relationship walk's progress (export.relationships) ----------------------------

    @property
    def watermark(self) -> BatchWatermark | None:
        """A related type's committed positions; None before its first batch is committed."""
        if _WATERMARK not in self._encoded:
            return None
        waiting = self._encoded.get(_WAITING) or []
        return BatchWatermark(
            int(self._encoded[_WATERMARK]), tuple((int(s), int(e)) for s, e in waiting)
        )

    @watermark.setter
    def watermark(self, value: BatchWatermark) -> None:
        self._encoded[_WATERMARK] = value.through
        self._encoded[_WAITING] = [[start, end] for start, end in value.waiting]

    def file_needs(self) -> dict[str, dict[str, int]]:
        """The root's committed files, each with the position per related type its references
        end at; recorded (empty) from this call on when there were none."""
        needs: dict[str, dict[str, int]] = self._encoded.setdefault(_NEEDS, {})
        return needs

    def take_file_needs(self, path: str) -> dict[str, int] | None:
        """Forget what the file `path` needs (it is gone: set aside by --repair), returning it."""
        needs = cast(dict[str, dict[str, int]], self._encoded.get(_NEEDS, {}))
        return needs.pop(path, None)

    # -- the relationship walk's findings, the run's mark (JSON objects, as recorded) ---------

    missing = _Entry[IdSample](_MISSING)  # referenced records the API did not return
    unrequested = _Entry[IdSample](_UNREQUESTED)  # answered without being asked for (dropped)
    not_asked_by_step = _Entry[NotAsked](NOT_ASKED_BY_STEP)
    mark = _Entry[dict[str, Any]](_MARK)  # what the mark was taken from: based_on, clocks, skew

    # -- pending repairs ---------------------------------------------------------------------

    @property
    def repairs(self) -> list[PendingRepair]:
        """Damaged files of this type whose records are still to be fetched again."""
        return cast(list[PendingRepair], self._encoded.get(_REPAIR) or [])

    def add_repair(self, repair: PendingRepair) -> None:
        self._encoded.setdefault(_REPAIR, []).append(repair)

    def clear_repairs(self) -> None:
        """The repairs are committed: nothing of this type is pending any more."""
        del self._encoded[_REPAIR]
