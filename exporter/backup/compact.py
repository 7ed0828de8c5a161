"""`exporter compact DIR`: the current state of a backup, the newest version of every live record.

A directory holds a full run and incremental runs after it (`<type>/run=<id>/`), and tombstones
(`tombstones/run=<id>/`). Compacting reads every file the manifest lists and keeps, per type and
id (integers, or UUID strings), the row with the newest `updatedAt` (the later run when equal, or
without one), then drops tombstoned ids and derives the to-many lists (`inverse_columns`).
It holds one type in memory at a time; for backups larger than memory, the README gives the
same query in DuckDB SQL.

The result is published as one set, so a reader sees the previous set or the new one, never a
mix, even while a compaction runs or after one is killed (target `DIR/_current/`, or `--into`):
1. every file goes into a new generation directory, `<target>/gen-<time>-<random>/<collection>.parquet`
   (made durable before the next step);
2. then the pointer `<target>/_current.json`, one small file replaced in one step (a rename
   locally, a single PUT on an object store), names that generation and each file's rows and
   sha256. It is the commit point: a reader reads it first, then only the files it names;
3. only then are older generations removed: only names this command writes, and never the
   generation the previous pointer named (a reader that read it a moment ago still finds its
   files). A generation a killed compaction left unfinished is removed by the next one.
"""

from __future__ import annotations

import contextlib
import hashlib
import re
import secrets
import time
from collections.abc import Collection, Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson
import pyarrow as pa
import pyarrow.compute as pc

from exporter.backup import manifest
from exporter.backup.damage import DamagedFileError, read_failure
from exporter.backup.detail import ResourceDetail
from exporter.backup.lock import locked
from exporter.backup.reader import decode_table, part_reader
from exporter.backup.sink import DataFile, encode_table
from exporter.backup.storage import INPROGRESS_SUFFIX, DamagedFile, Storage
from exporter.core.config import DEFAULT_ROOT_TYPE
from exporter.core.errors import ExporterError, OutputError, UsageError
from exporter.model.normalize import TOMBSTONE_TYPE, arrow_schema, table_layout
from exporter.model.schema import readable_types, resource_type

# The types crawled whole: every one of their records is in a backup. A manifest that does not
# say which (`crawled_roots`) was written by an export of the default.
DEFAULT_ROOTS = (DEFAULT_ROOT_TYPE,)


def crawled_roots(document: Mapping[str, Any]) -> tuple[str, ...]:
    """The types the backup's export crawled whole, as its manifest's parameters record the
    selection (`resources`: "all", or collections or type names, a list or comma-separated);
    `DEFAULT_ROOTS` when they do not. Names this version does not know are left out."""
    parameters = document.get("parameters")
    selected = parameters.get("resources") if isinstance(parameters, dict) else None
    if isinstance(selected, str):
        selected = [part.strip() for part in selected.split(",")]
    if not isinstance(selected, list) or not selected:
        return DEFAULT_ROOTS
    if "all" in selected:
        return readable_types()
    by_name = {resource_type(t).collection: t for t in readable_types()}
    by_name.update({t: t for t in readable_types()})
    found = [by_name[str(name)] for name in selected if str(name) in by_name]
    return tuple(dict.fromkeys(found)) or DEFAULT_ROOTS


def current_table(
    where: Storage | Path | str, document: dict[str, object], type_name: str
) -> pa.Table:
    """The newest version of every live record of `type_name` in the backup."""
    storage = where if isinstance(where, Storage) else Storage.open(where)
    files = document["files"]
    assert isinstance(files, list)
    runs = [r["run_id"] for r in document["runs"]]  # type: ignore[attr-defined]
    order = {run_id: i for i, run_id in enumerate(runs)}
    schema = arrow_schema(type_name)
    tables = []
    tombstoned: list[Any] = []
    for entry in files:
        if entry["type"] == TOMBSTONE_TYPE:
            stones = read_committed(storage, entry).select(["type", "id"])
            mask = pc.equal(stones.column("type"), type_name)
            tombstoned.extend(stones.filter(mask).column("id").to_pylist())
        elif entry["type"] == type_name:
            relative = manifest.file_path(storage, entry)
            try:
                table = read_committed(storage, entry).cast(schema)
            except (pa.ArrowInvalid, pa.ArrowTypeError) as exc:
                raise DamagedFile(storage.shown(relative), exc) from None
            rank = pa.array([order.get(entry["run_id"], -1)] * table.num_rows, pa.int32())
            tables.append(table.append_column("_run", rank))
    if not tables:
        return schema.empty_table()
    table = pa.concat_tables(tables)
    keys = [("id", "ascending")]
    if "updatedAt" in table.column_names:  # a type without one (a log, a note): the newest run's
        keys.append(("updatedAt", "descending"))
    keys.append(("_run", "descending"))
    table = table.sort_by(keys)  # null updatedAt sorts last
    ids = table.column("id").combine_chunks()
    first = (
        pc.not_equal(ids.slice(1), ids.slice(0, len(ids) - 1))
        if len(ids) > 1
        else pa.array([], pa.bool_())
    )
    keep = (
        pa.concat_arrays([pa.array([True]), first.fill_null(True)])
        if len(ids)
        else pa.array([], pa.bool_())
    )
    if tombstoned:
        gone = _same_kind(tombstoned, ids.type)
        keep = pc.and_(keep, pc.invert(pc.is_in(ids, value_set=gone)))
    return table.filter(keep).drop_columns(["_run"])


def _same_kind(ids: list[Any], id_type: pa.DataType) -> pa.Array:
    """Tombstoned ids as an array of the type's id type: integers, or the UUID strings of a
    type whose ids are strings (an id that cannot be one of the type's names no record)."""
    if pa.types.is_string(id_type):
        return pa.array([str(i) for i in ids], pa.string())
    return pa.array([i for i in ids if isinstance(i, int)], id_type)


REPAIR_ADVICE = (
    "Run `exporter export --out DIR --incremental --repair` (with the backup's --base-url and "
    "credentials)"
)


def read_committed(storage: Storage, entry: dict[str, Any]) -> pa.Table:
    """A file the manifest lists, whole, checked against its recorded sha256 first (a flipped
    bit that Parquet still decodes must not be compacted as data). A damaged file is
    `damage.read_failure`'s one line with compact's advice; a store that fails reads stays a
    storage error."""
    relative = manifest.file_path(storage, entry)
    expected = DataFile.from_json(entry)
    try:
        if storage.sha256(relative) != expected.sha256:
            raise ValueError("its content differs from the recorded sha256")
        # By path, not from the bytes just hashed: pq.read_table(BufferReader) on this error
        # path was seen to end the process in a C++ abort at exit (pyarrow 26, 1 run in 8).
        return part_reader(storage).table(relative)
    except OutputError as exc:  # the read failed: read_failure tells a missing file from the store
        raise read_failure(storage, relative, OSError(str(exc)), expected, REPAIR_ADVICE) from None
    except (OSError, ValueError, pa.ArrowException) as exc:
        raise read_failure(storage, relative, exc, expected, REPAIR_ADVICE) from None


# To-ones that never say whose member a record is: a user's `favorites` are the favorites that
# name it as their user, not the ones it created (the simulator's `store.AUTHORSHIP`).
AUTHORSHIP = frozenset({"creator", "updater"})


def owning_column(owner: str, member: str) -> str | None:
    """`member`'s to-one column that says which `owner` record it belongs to: the one to-one of
    `member` into `owner` (creator and updater never count), or of several, the one named after
    `owner`. None when the schema pairs no such column."""
    back = [
        c
        for c in table_layout(member).to_one
        if c.relationship.target == owner and c.relationship.name not in AUTHORSHIP
    ]
    if len(back) > 1:
        back = [c for c in back if c.relationship.name == owner]
    return back[0].column if len(back) == 1 else None


def inverse_columns(
    type_name: str, roots: Collection[str] = DEFAULT_ROOTS
) -> list[tuple[str, str, str]]:
    """(list column on `type_name`, its target type, the target's to-one column pointing back)
    for each to-many relationship of `type_name` that the backup can derive exactly from the
    other side (`owning_column`): a sequence's `sequenceStepIds` (the steps whose `sequenceId`
    is it), a step's `sequenceTemplateIds`, and with every type a root, a prospect's
    `emailAddressIds`, a user's `mailboxIds`, a role's `childRoleIds` (its own type), ...

    Exact when every record of the target that points back is in the backup: the target is a
    root (crawled whole), or `type_name` is one and the walk fetched the target records its
    records name (incremental runs ask again by owner; `with_inverse_lists`'s `unsure` keeps
    what the walk could not prove)."""
    found = []
    for column in table_layout(type_name).to_many:
        target = column.relationship.target
        if not (type_name in roots or target in roots) or target not in readable_types():
            continue  # (a type without a collection is in no backup)
        back = owning_column(type_name, target)
        if back is not None:
            found.append((column.column, target, back))
    return found


def with_inverse_lists(
    table: pa.Table,
    type_name: str,
    owners: dict[str, pa.Table],
    unsure: frozenset[str] = frozenset(),
    roots: Collection[str] = DEFAULT_ROOTS,
) -> pa.Table:
    """`table` with its derivable lists (`inverse_columns`) taken from the current tables of
    their targets, `owners` (ids ascending).

    The API gives such a list as of the record's last fetch, and an incremental run cannot see it
    change when a member comes or goes without the record's own `updatedAt` moving. The owning
    side, each member's to-one column, says it exactly.

    For a target in `unsure` (its records were not asked for by step: `not_asked_by_step`) the
    backup may lack members, so a record's own list counts too: its ids the backup does not
    hold stay; those it holds go where their to-one column says."""
    for list_column, target, back in inverse_columns(type_name, roots):
        source = owners.get(target)
        if list_column not in table.column_names or source is None:
            continue
        if back not in source.column_names:
            continue
        members: dict[int, list[int]] = {}
        for member_id, owner in zip(
            source.column("id").to_pylist(), source.column(back).to_pylist(), strict=True
        ):
            if owner is not None:
                members.setdefault(owner, []).append(member_id)
        ids = table.column("id").to_pylist()
        if target in unsure:
            held = set(source.column("id").to_pylist())
            own = table.column(list_column).to_pylist()
            for owner, listed in zip(ids, own, strict=True):
                unknown = [m for m in listed or [] if m not in held]
                members.setdefault(owner, []).extend(unknown)
        values = [sorted(set(members.get(i, []))) for i in ids]
        index = table.column_names.index(list_column)
        field = table.schema.field(index)
        table = table.set_column(index, field, pa.array(values, field.type))
    return table


POINTER_NAME = "_current.json"
POINTER_FORMAT = "outreach-exporter/current"
CURRENT_PREFIX = "_current/"
_GENERATION = re.compile(r"gen-\d{8}T\d{6}Z-[0-9a-f]{6}")
_COLLECTIONS = {resource_type(t).collection for t in readable_types()}


def compact(
    where: Storage | Path | str,
    into: Storage | Path | str | None = None,
    *,
    roots: Collection[str] | None = None,
) -> dict[str, int]:
    """Publish the current state, one file per type, as one generation (default `DIR/_current/`);
    `roots` are the types the backup's export crawled whole (default: `crawled_roots`)."""
    storage = where if isinstance(where, Storage) else Storage.open(where, flag="DIR")
    manifest.load_checked(storage)  # a clear error for a directory without a finished backup
    try:
        if into is None:  # writes into the backup: not while an export writes there
            with locked(storage, "compact"):
                return _compact(storage, None, roots)
        return _compact(storage, into, roots)
    except DamagedFileError as exc:  # `read_committed`'s line, and what to do after the repair
        raise DamagedFileError(f"{exc}, then compact again") from None


def new_generation() -> str:
    return f"gen-{datetime.now(UTC).strftime('%Y%m%dT%H%M%SZ')}-{secrets.token_hex(3)}"


def _compact(
    storage: Storage, into: Storage | Path | str | None, roots: Collection[str] | None
) -> dict[str, int]:
    document = manifest.load_checked(storage)  # read under the lock: the newest finished run
    if roots is None:
        roots = crawled_roots(document)
    if into is None:
        target, prefix = storage, CURRENT_PREFIX
    else:
        target = into if isinstance(into, Storage) else Storage.open(into, flag="--into")
        prefix = ""
    previous = load_pointer(target, prefix, missing_ok=True, damaged_ok=True)
    generation = new_generation()
    try:
        published, rows = _write_generation(storage, document, target, prefix, generation, roots)
    except ExporterError:  # a damaged file, a failed write: the published set stays as it was
        with contextlib.suppress(ExporterError):
            remove_stale(
                target, prefix, {previous["generation"]} if previous else set(), generation
            )
        raise
    pointer = {
        "format": POINTER_FORMAT,
        "generation": generation,
        "run_id": document.get("run_id"),
        "manifest_sha256": document.get("manifest_sha256"),
        "written_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "files": published,
    }
    target.write_atomically(
        prefix + POINTER_NAME, orjson.dumps(pointer, option=orjson.OPT_INDENT_2)
    )
    keep = {generation} | ({previous["generation"]} if previous else set())
    remove_stale(target, prefix, keep)
    return rows


def _write_generation(
    storage: Storage,
    document: dict[str, Any],
    target: Storage,
    prefix: str,
    generation: str,
    roots: Collection[str],
) -> tuple[dict[str, dict[str, Any]], dict[str, int]]:
    """Write the current table of every type into the new `generation` below the target, each
    durable before the pointer names it: (the pointer's files, rows per type)."""
    present = {entry["type"] for entry in document["files"]}
    rows: dict[str, int] = {}
    published: dict[str, dict[str, Any]] = {}
    unsure = frozenset(
        t
        for t, r in document.get("resources", {}).items()
        if isinstance(r, dict)
        and ResourceDetail.recorded(r.get("detail")).not_asked_by_step is not None
    )
    # The owning sides the derived lists are read from (`inverse_columns`): per member type,
    # just its id and the to-one columns pointing back, kept from where it is written, or read
    # ahead for an owner that comes first.
    backs: dict[str, set[str]] = {}
    for type_name in present - {TOMBSTONE_TYPE}:
        for _column, member, back in inverse_columns(type_name, roots):
            if member in present:
                backs.setdefault(member, set()).add(back)
    owners: dict[str, pa.Table] = {}

    def owning_sides(table: pa.Table, member: str) -> None:
        owners[member] = table.select(["id", *sorted(backs[member])])

    for type_name in readable_types():
        if type_name not in present:
            continue
        for _column, member, _back in inverse_columns(type_name, roots):
            if member in backs and member not in owners and member != type_name:
                owning_sides(current_table(storage, document, member), member)
        table = current_table(storage, document, type_name)
        if type_name in backs:  # before its own lists change: they are not what is read
            owning_sides(table, type_name)
        table = with_inverse_lists(table, type_name, owners, unsure, roots)
        payload = encode_table(table)
        relative = f"{generation}/{resource_type(type_name).collection}.parquet"
        target.write_atomically(prefix + relative, payload)  # durable before the pointer
        published[type_name] = {
            "path": relative,
            "rows": table.num_rows,
            "bytes": len(payload),
            "sha256": hashlib.sha256(payload).hexdigest(),
        }
        rows[type_name] = table.num_rows
    return published, rows


def _ours(relative: str) -> tuple[str | None, bool]:
    """(generation, is ours) for a path below the target: what `compact` writes there."""
    parts = relative.split("/")
    name = parts[-1]
    hidden = name.startswith(".") and name.endswith(INPROGRESS_SUFFIX)
    plain = name[1 : -len(INPROGRESS_SUFFIX)] if hidden else name
    collection = plain.endswith(".parquet") and plain[: -len(".parquet")] in _COLLECTIONS
    if len(parts) == 1:  # the old layout's files, and a killed write's temporary pointer
        return None, collection or (hidden and plain == POINTER_NAME)
    if len(parts) == 2 and _GENERATION.fullmatch(parts[0]):
        return parts[0], collection
    return None, False


def remove_stale(
    target: Storage, prefix: str, keep: set[str], only: str | None = None
) -> list[str]:
    """Remove what earlier compactions wrote below `prefix`, but the generations in `keep`:
    older generations, unfinished ones, the old layout's `<collection>.parquet`, temporary files
    (with `only`, just that generation's files). Files this command did not write stay. Returns
    what was removed."""
    removed = []
    for path in target.list_files(prefix.rstrip("/")):
        relative = path[len(prefix) :] if prefix else path
        generation, ours = _ours(relative)
        if ours and generation not in keep and (only is None or generation == only):
            target.delete(path)
            removed.append(path)
    if target.local:  # the emptied generation directories
        for path in {p.rsplit("/", 1)[0] for p in removed if "/" in p[len(prefix) :]}:
            with contextlib.suppress(OSError):  # not empty (a file we did not write), or gone
                Path(target.path(path)).rmdir()
    return removed


def load_pointer(
    target: Storage,
    prefix: str = CURRENT_PREFIX,
    *,
    missing_ok: bool = False,
    damaged_ok: bool = False,
) -> dict[str, Any] | None:
    """The pointer to the published generation, checked; None when there is none yet."""
    name = prefix + POINTER_NAME
    raw = target.read_document(name)
    if raw is None:
        if missing_ok:
            return None
        raise UsageError(
            f"{target.shown(name)} does not exist: nothing compacted yet; run exporter compact"
        )
    try:
        pointer = orjson.loads(raw)
        if not isinstance(pointer, dict) or pointer.get("format") != POINTER_FORMAT:
            raise ValueError("not a pointer")
        if not _GENERATION.fullmatch(str(pointer.get("generation"))):
            raise ValueError("bad generation")
        files = pointer.get("files")
        if not isinstance(files, dict):
            raise ValueError("no files")
        for entry in files.values():
            path = entry.get("path") if isinstance(entry, dict) else None
            if not isinstance(path, str) or _ours(path) != (pointer["generation"], True):
                raise ValueError("a path outside its generation")
    except (orjson.JSONDecodeError, ValueError, AttributeError, TypeError):
        if damaged_ok:
            return None
        raise UsageError(
            f"{target.shown(name)} is damaged; run exporter compact again to publish a new set"
        ) from None
    return pointer


def read_current(
    where: Storage | Path | str, prefix: str = CURRENT_PREFIX, *, attempts: int = 5
) -> tuple[str, dict[str, pa.Table]]:
    """The published current state, one table per type, all of one generation: (generation,
    tables). A compaction that publishes while this reads may remove the generation before
    the one it replaces; the set is then read again from the new pointer, never mixed."""
    storage = where if isinstance(where, Storage) else Storage.open(where, flag="DIR")
    for attempt in range(attempts):
        pointer = load_pointer(storage, prefix)
        assert pointer is not None
        tables: dict[str, pa.Table] = {}
        try:
            for type_name, entry in pointer["files"].items():
                relative = prefix + entry["path"]
                payload = storage.read_bytes(relative)
                if payload is None:
                    raise FileNotFoundError(relative)
                if hashlib.sha256(payload).hexdigest() != entry["sha256"]:
                    raise DamagedFile(storage.shown(relative), ValueError("sha256 differs"))
                tables[type_name] = decode_table(payload)
        except FileNotFoundError:
            if attempt == attempts - 1:
                raise UsageError(
                    f"{storage.shown(prefix + POINTER_NAME)} names files that are gone; run "
                    "exporter compact again"
                ) from None
            time.sleep(0.05)
            continue
        return str(pointer["generation"]), tables
    raise AssertionError("unreachable")
