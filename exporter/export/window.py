"""An incremental run's window: its mark, taken before any data is read, and each root's filter and row selector within it.

`mark_window` sets where the window ends (and, with the last run's mark less the overlap, where
it starts) from the API's clock and this machine's (`plan.take_mark`, `plan.window_at`);
`root_window` says how one root collection is read within it, by its type's
`incremental_strategy`. `Export` (`run`) calls both; a full run reads every root whole.
"""

from __future__ import annotations

import logging
import time

import pyarrow as pa

from exporter.api.client import ApiClient
from exporter.api.pagination import collection_url
from exporter.backup.checkpoint import RunState
from exporter.core.events import event
from exporter.core.times import iso
from exporter.export.crawl import RowSelector
from exporter.export.history import BackupIndex, SkipKnownVersions
from exporter.export.idset import IdSet
from exporter.export.plan import take_mark, window_at
from exporter.model.schema import Incremental, Kind, incremental_strategy, resource_type

Filter = list[tuple[str, str]]  # query parameters a root's crawl adds (`filter[...]`)


async def mark_window(
    state: RunState, client: ApiClient, *, base_url: str, root_type: str, overlap: float
) -> None:
    """Take the run's mark, the end of its window (the next window starts there, less the
    overlap), before any data is read; say in the root type's `detail.mark` what it is
    based on.

    1. The API's clock (its Date header at its first answer; a first small request when
       there was none yet) and this machine's clock (`plan.take_mark`).
    2. When they disagree by more than `MAX_CLOCK_SKEW`, the earlier of the two, with a
       warning.
    3. A window that would start after its end is moved back to where the previous run
       began, with a warning, or the run stops with a usage error (`plan.window_at`).
    """
    if client.stats.server_time is None:
        await client.get_document(
            collection_url(
                base_url,
                resource_type(root_type).collection,
                [("page[size]", "1"), (f"fields[{root_type}]", "")],
            )
        )
    mark = take_mark(client.stats.server_time, time.time())
    if mark.skewed:
        assert mark.server is not None
        skew = mark.server - mark.local
        event(
            "clock.skew",
            f"the API's clock ({iso(mark.server)}, its Date header) is "
            f"{abs(skew):,.0f} s {'ahead of' if skew > 0 else 'behind'} this machine's "
            f"({iso(mark.local)}); the run's mark is the earlier, {iso(mark.at)}",
            logging.WARNING,
            server_clock=iso(mark.server),
            local_clock=iso(mark.local),
            skew_seconds=round(skew, 3),
        )
    began = state.history[-1].get("started_at") if state.history else None
    window = window_at(state.window_start, mark.at, began, overlap)
    basis = mark.basis.copy()
    if window.clamped_from is not None:
        event(
            "window.clamped",
            f"the incremental window would start at {window.clamped_from} (the last run's "
            f"mark less the overlap), after its end {window.end}: that mark came from a "
            f"wrong clock. Starting instead where the last run began, {window.start}",
            logging.WARNING,
            window_start=window.clamped_from,
            window_end=window.end,
            clamped_to=window.start,
        )
        basis["window_start_clamped_from"] = window.clamped_from
    state.window_start = window.start
    state.resources[root_type].detail.mark = dict(basis)
    state.window_end = window.end


def root_window(
    type_name: str,
    state: RunState,
    index: BackupIndex | None,
    *,
    root_type: str,
    default_selection: bool,
) -> tuple[Filter, RowSelector | None]:
    """The filter and row selector of one root's crawl. A full run: all of it. An
    incremental one, by the type's `incremental_strategy`: UPDATED_AT, the window on
    `updatedAt`, versions held skipped; APPEND_ONLY, the window on its creation time, ids
    held skipped; RELIST, the whole collection, versions (ids, for a type without
    `updatedAt`) held skipped. A root the backup holds no record of (refused for a scope
    last time, or new to the selection) is read whole."""
    if state.kind != "incremental" or index is None:
        return [], None
    versions = index.versions.get(type_name, {})
    integer = integer_ids(type_name)
    held: IdSet | set[str] = (
        index.ids.get(type_name, IdSet()) if integer else index.text_ids.get(type_name, set())
    )
    start = f"{state.window_start}..inf"
    if type_name == root_type and default_selection:
        return [("filter[updatedAt]", start)], SkipKnownVersions(versions)
    if not len(held):
        return [], SkipKnownVersions(versions) if integer else None
    strategy = incremental_strategy(type_name)
    if strategy.mode is Incremental.UPDATED_AT:
        return [("filter[updatedAt]", start)], SkipKnownVersions(versions)
    if strategy.mode is Incremental.APPEND_ONLY:
        assert strategy.attribute is not None
        return [(f"filter[{strategy.attribute}]", start)], SkipHeldIds(held)
    if "updatedAt" in {a.name for a in resource_type(type_name).attributes}:
        return [], SkipKnownVersions(versions)
    if resource_type(type_name).append_only:
        return [], SkipHeldIds(held)  # a log's records never change: the new ones only
    # Records that can change but carry no `updatedAt` (notes): every one is written again,
    # and compaction keeps the newest run's version. Skipping held ids would miss an edit.
    return [], None


class SkipHeldIds:
    """Row selector: drop records whose id the backup holds (a log's records never change):
    integer ids in an `IdSet`, string ids (an auditLog's UUIDs) in a set."""

    def __init__(self, held: IdSet | set[str]) -> None:
        self.held = held

    def __call__(self, table: pa.Table) -> list[bool]:
        return [value not in self.held for value in table.column("id").to_pylist()]


def integer_ids(type_name: str) -> bool:
    """Whether `type_name`'s ids are integers (every type but the string-id logs)."""
    return resource_type(type_name).id_kind is not Kind.STRING
