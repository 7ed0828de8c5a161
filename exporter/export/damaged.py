"""A backup's damaged files: checked before a run writes anything; with `--repair`, set aside and what they held fetched again.

The steps are `repair`'s (its docstring says why each is safe): `check_files` looks at every
committed file (with `--repair`, its sha256 too) and stops the run on damage, or with
`--repair` sets each damaged file aside, drops it from the checkpoint and records a pending
repair; `refetch_damaged` then walks each pending id range again (steps first: related records
are chosen by what the steps reach), keeping what `keep_for` says the file held, and clears the
pending repairs once those rows are committed. `Export` (`run`) calls both.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterable

import pyarrow as pa

from exporter.api.client import ApiClient
from exporter.backup import checkpoint
from exporter.backup.checkpoint import RunState
from exporter.backup.damage import damaged_error, inspect, shown
from exporter.backup.detail import PendingRepair
from exporter.backup.layout import safe_named
from exporter.backup.storage import Storage
from exporter.core.errors import UsageError
from exporter.core.events import event
from exporter.export.crawl import Message, flush
from exporter.export.history import BackupIndex, _micros, load_index
from exporter.export.idset import IdSet
from exporter.export.links import Link, owner_column
from exporter.export.repair import Keep, covered, drop_file, refetch_range, set_aside
from exporter.model.fastpage import PagePaths
from exporter.model.normalize import TOMBSTONE_TYPE
from exporter.model.schema import RESOURCE_TYPES


def check_files(
    storage: Storage,
    state: RunState,
    *,
    repair: bool,
    root_type: str,
    check_lock: Callable[[], None],
) -> None:
    """Every committed file is where the checkpoint says, at its size (with `repair`: and
    its sha256). Damaged ones stop the run, named; with `repair` they are set aside,
    dropped from the checkpoint and recorded to be fetched again (`refetch_damaged`), and the
    checkpoint is saved (`check_lock` first: raises when the run no longer holds the folder)."""
    damage = inspect(storage, state.committed_files(), thorough=repair)
    if not damage:
        return
    if not repair:
        raise damaged_error(storage, damage)
    root = storage.display
    for item in damage:
        data_file = item.file
        if not safe_named(data_file.path):
            raise UsageError(
                f"{root}: the checkpoint names {data_file.path!r}, which is not a part file "
                "of this tool where it writes them; nothing was changed"
            )
        if data_file.type_name == TOMBSTONE_TYPE:
            if TOMBSTONE_TYPE not in state.resources:
                raise UsageError(
                    f"{shown(storage, data_file.path)} holds tombstones ({item.reason}); "
                    "pass --detect-deletes with --repair, so their ids are checked again "
                    "(an unfinished run without it: let it finish first)"
                )
        elif data_file.type_name not in state.resources:
            raise UsageError(
                f"{shown(storage, data_file.path)} holds {data_file.type_name} records "
                f"({item.reason}), which this run does not export; repair it with the "
                "--relationships of the run that wrote it"
            )
    for item in damage:
        data_file = item.file
        current = any(data_file in r.files for r in state.resources.values())
        moved = set_aside(storage, data_file.path, state.run_id)
        drop_file(state, data_file.path)
        needs = state.resources[root_type].detail.take_file_needs(data_file.path)
        event(
            "run.repair",
            f"{data_file.path} is damaged ({item.reason}): "
            + (f"set aside as {moved}" if moved else "dropped")
            + f"; its {data_file.rows:,} {data_file.type_name} records are fetched again",
            path=data_file.path,
            moved_to=moved,
        )
        if data_file.type_name == TOMBSTONE_TYPE or not isinstance(data_file.min_id, int):
            continue  # tombstones: the --detect-deletes phase checks their ids again
        assert isinstance(data_file.max_id, int)
        state.resources[data_file.type_name].detail.add_repair(
            {
                "path": data_file.path,
                "low": data_file.min_id,
                "high": data_file.max_id,
                "rows": data_file.rows,
                # A full run's own file: its ids are missing; otherwise versions may be.
                "by": "ids" if current and state.kind == "full" else "versions",
                "needs": needs,
            }
        )
    check_lock()
    checkpoint.save(storage, state)


def pending_repairs(state: RunState) -> dict[str, list[PendingRepair]]:
    """The repairs `check_files` recorded and no run has completed yet, per type."""
    return {t: r.detail.repairs for t, r in state.resources.items() if r.detail.repairs}


async def refetch_damaged(
    state: RunState,
    client: ApiClient,
    inbox: asyncio.Queue[Message | None],
    credits: asyncio.Semaphore,
    *,
    storage: Storage,
    base_url: str,
    page_size: int,
    links: list[Link],
    root_type: str,
    page_paths: PagePaths,
    stopped: Callable[[], bool],
) -> None:
    """Fetch again what the damaged files held (steps first: related records are chosen
    by what the steps reach), commit it, then clear the pending repairs. Returns early,
    the repairs still pending, once `stopped()` says so."""
    pending = pending_repairs(state)
    if not pending:
        return

    every_type: dict[str, int | None] = {t: None for t in RESOURCE_TYPES}
    rounds = [[root_type], [t for t in pending if t != root_type]]
    for types in rounds:
        types = [t for t in types if t in pending]
        if not types:
            continue
        index = await asyncio.to_thread(
            load_index,
            storage,
            state.committed_files(),
            version_since=every_type,
            links=links,
            root_type=root_type,
        )
        for type_name in types:
            for entry in pending[type_name]:
                if stopped():
                    return
                await refetch_range(
                    client,
                    base_url=base_url,
                    type_name=type_name,
                    low=int(entry["low"]),
                    high=int(entry["high"]),
                    page_size=page_size,
                    keep=keep_for(
                        state,
                        type_name,
                        index,
                        by_ids=entry["by"] == "ids",
                        root_type=root_type,
                        links=links,
                    ),
                    inbox=inbox,
                    credits=credits,
                    needs=entry.get("needs"),
                    page_paths=page_paths,
                )
        await flush(inbox)
    for type_name in pending:
        state.resources[type_name].detail.clear_repairs()
    await flush(inbox)  # the repaired rows are committed: the pending repairs go with them


def keep_for(
    state: RunState,
    type_name: str,
    index: BackupIndex,
    *,
    by_ids: bool,
    root_type: str,
    links: Iterable[Link],
) -> Keep:
    """Which refetched rows a damaged file of `type_name` held: those that belong to the
    backup (steps its partitions had committed; related records its steps reach) and that
    no intact file holds (that id in a full run; that version or a newer one otherwise)."""
    held = index.ids.get(type_name, IdSet())
    versions = index.versions.get(type_name, {})
    steps = index.ids.get(root_type, IdSet())
    referenced = index.referenced.get(type_name, IdSet())
    link_only = any(k.link_only for k in links if k.target == type_name)
    in_partitions = covered(state.resources[root_type].partitions)
    owner = owner_column(root_type)

    def keep(table: pa.Table) -> list[bool]:
        ids = table.column("id").to_pylist()
        stamps = (
            _micros(table.column("updatedAt"))
            if "updatedAt" in table.column_names
            else [None] * len(ids)
        )
        if type_name == root_type:
            belongs = [in_partitions(i) if by_ids else True for i in ids]
        elif link_only and owner in table.column_names:
            owners = table.column(owner).to_pylist()
            belongs = [o in steps if o is not None else False for o in owners]
        else:
            belongs = [i in referenced for i in ids]
        result = []
        for value, stamp, member in zip(ids, stamps, belongs, strict=True):
            if not (member or value in held):
                result.append(False)
            elif by_ids or stamp is None:
                result.append(value not in held)
            else:
                result.append(versions.get(value, -1) < stamp)
        return result

    return keep
