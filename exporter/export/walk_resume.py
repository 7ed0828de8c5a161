"""What a relationship walk has committed (batch watermarks), and where a resumed run's walk starts again (`resume_walk`)."""

from __future__ import annotations

from collections.abc import Iterator

import pyarrow as pa

from exporter.backup.checkpoint import ResourceState, RunState
from exporter.backup.damage import read_failure
from exporter.backup.detail import BatchWatermark
from exporter.backup.reader import part_reader
from exporter.backup.storage import Storage
from exporter.export.relationships import RelationshipWalk


def mark_batches_committed(resource: ResourceState, ranges: list[tuple[int, int]]) -> None:
    """Advance the related type's watermark (`advance`) past the batches just committed."""
    resource.detail.watermark = advance(resource.detail.watermark or BatchWatermark(), ranges)


def advance(watermark: BatchWatermark, ranges: list[tuple[int, int]]) -> BatchWatermark:
    """The watermark once `ranges` [start, end) are committed too: every position below
    `through` is committed. Batches finish out of order; ranges above the watermark wait in
    `waiting` until the gap below them closes."""
    through = watermark.through
    waiting: list[tuple[int, int]] = []
    for start, end in sorted([*watermark.waiting, *ranges]):
        if start <= through:
            through = max(through, end)
        else:
            waiting.append((start, end))
    return BatchWatermark(through, tuple(waiting))


def resume_walk(storage: Storage, state: RunState, walk: RelationshipWalk) -> None:
    """Resume the relationship walk from what the checkpoint proves.

    1. Related records already committed are neither fetched nor written again (their ids are
       read from the committed files).
    2. A committed step file whose references end above a type's committed watermark
       (`file_needs` > `watermark.through`) is announced again for that type, and its needs
       rewritten to the new positions, so a second kill loses nothing either.
    """
    root = state.resources[walk.root]
    needs_by_file = root.detail.file_needs()
    watermark: dict[str, int] = {}
    for target in walk.targets:
        resource = state.resources[target]
        ids: list[int] = []
        for data_file in resource.files:
            ids.extend(read_column(storage, data_file.path, "id"))
        committed = resource.detail.watermark or BatchWatermark()
        watermark[target] = committed.through
        highest = max(
            [
                watermark[target],
                *(end for _start, end in committed.waiting),
                *(needs.get(target, 0) for needs in needs_by_file.values()),
            ]
        )
        walk.seed(target, ids, highest)
        # Every earlier position is now either committed or announced again below.
        resource.detail.watermark = BatchWatermark(highest)
    for data_file in root.files:
        needs = needs_by_file.get(data_file.path, {})
        lagging = {t for t in walk.targets if needs.get(t, 0) > watermark[t]}
        if not lagging:
            continue
        renewed = dict(needs)
        for table in read_batches(storage, data_file.path):
            renewed.update(walk.announce(table, only=lagging))
        needs_by_file[data_file.path] = renewed


def read_column(storage: Storage, relative: str, column: str) -> list[int]:
    try:
        table = part_reader(storage).table(relative, [column])
    except (OSError, ValueError, pa.ArrowException) as exc:
        raise read_failure(storage, relative, exc, None) from None
    values: list[int] = table.column(column).to_pylist()
    return values


def read_batches(storage: Storage, relative: str) -> Iterator[pa.Table]:
    try:
        yield from part_reader(storage).batches(relative)
    except (OSError, ValueError, pa.ArrowException) as exc:
        raise read_failure(storage, relative, exc, None) from None
