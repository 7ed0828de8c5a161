"""Expected rows computed from the simulator's ground truth, independently of exporter.model.normalize (related records included)."""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import orjson
import pyarrow.parquet as pq

from exporter.core.events import LOGGER
from exporter.model.normalize import table_layout
from exporter.model.schema import Kind, Shape, resource_type
from exporter.simulator import Simulator, SimulatorConfig

# Column names of sequenceStep relationships, as the README's data model documents them.
STEP_RELATIONSHIP_COLUMNS = {
    "sequence": "sequenceId",
    "creator": "creatorId",
    "updater": "updaterId",
    "callPurpose": "callPurposeId",
    "taskPriority": "taskPriorityId",
    "sequenceTemplates": "sequenceTemplateIds",
}


def _value(kind: Kind, raw: Any) -> Any:
    if raw is None:
        return None
    if kind is Kind.DATETIME:
        return dt.datetime.fromisoformat(raw.replace("Z", "+00:00")).astimezone(dt.UTC)
    if kind is Kind.DATE:
        return dt.date.fromisoformat(raw)
    if kind is Kind.OBJECT:
        return orjson.dumps(raw, option=orjson.OPT_SORT_KEYS).decode()
    if kind is Kind.NUMBER:
        return float(raw)
    return raw


def expected_row(record: dict[str, Any], rel_columns: dict[str, str]) -> dict[str, Any]:
    rtype = resource_type(record["type"])
    attributes = record.get("attributes") or {}
    relationships = record.get("relationships") or {}
    uuid = rtype.id_kind is Kind.STRING  # auditLog: ids are UUID strings
    row: dict[str, Any] = {"id": record["id"] if uuid else int(record["id"])}
    for attribute in rtype.attributes:
        row[attribute.name] = _value(attribute.kind, attributes.get(attribute.name))
    for rel in rtype.relationships:
        if rel.shape is Shape.LINKS or rel.name not in rel_columns:
            continue
        data = (relationships.get(rel.name) or {}).get("data")
        if rel.shape is Shape.TO_ONE:
            row[rel_columns[rel.name]] = None if data is None else int(data["id"])
        else:
            row[rel_columns[rel.name]] = None if data is None else [int(d["id"]) for d in data]
    return row


def read_rows(directory: Path) -> list[dict[str, Any]]:
    """Every row of every committed Parquet file in `directory`, sorted by id."""
    rows: list[dict[str, Any]] = []
    for path in sorted(directory.glob("*.parquet")):
        rows.extend(pq.read_table(path).to_pylist())
    return sorted(rows, key=lambda r: r["id"])


def assert_rows_equal(actual: list[dict[str, Any]], expected: list[dict[str, Any]]) -> None:
    """Field by field, with a message naming the first differing record and field."""
    actual_ids = [r["id"] for r in actual]
    expected_ids = [r["id"] for r in expected]
    assert len(actual_ids) == len(set(actual_ids)), "duplicate ids in the export"
    missing = set(expected_ids) - set(actual_ids)
    extra = set(actual_ids) - set(expected_ids)
    assert not missing and not extra, (
        f"missing {sorted(missing)[:10]}, unexpected {sorted(extra)[:10]}"
    )
    for got, want in zip(actual, expected, strict=True):
        for key, value in want.items():
            assert got[key] == value, f"id {want['id']} field {key}: {got[key]!r} != {value!r}"
        assert got["_extra"] is None, f"id {want['id']} has _extra {got['_extra']}"


@contextmanager
def recorded_events(level: int = logging.INFO) -> Iterator[list[str]]:
    """Names of the events the exporter logs meanwhile, read from its own logger (pytest's
    caplog misses them once a CLI test has set that logger not to propagate)."""
    names: list[str] = []

    class Recorder(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            names.append(str(getattr(record, "event", "")))

    handler = Recorder(level)
    before = LOGGER.level
    LOGGER.addHandler(handler)
    if LOGGER.level == logging.NOTSET or LOGGER.level > level:
        LOGGER.setLevel(level)
    try:
        yield names
    finally:
        LOGGER.removeHandler(handler)
        LOGGER.setLevel(before)


def expected_steps(sim: Simulator) -> list[dict[str, Any]]:
    return [expected_row(r, STEP_RELATIONSHIP_COLUMNS) for r in sim.truth.records("sequenceStep")]


LINK_ONLY = {"mailing", "call", "task"}


DATA_LINKS = {  # relationship on the step -> target type
    "sequence": "sequence",
    "creator": "user",
    "updater": "user",
    "callPurpose": "callPurpose",
    "taskPriority": "taskPriority",
    "sequenceTemplates": "sequenceTemplate",
}


def rel_columns(type_name: str) -> dict[str, str]:
    layout = table_layout(type_name)
    return {c.relationship.name: c.column for c in (*layout.to_one, *layout.to_many)}


def referenced(steps: list[dict[str, Any]]) -> dict[str, set[int]]:
    """Ids each related type must hold, from the ground truth's steps."""
    wanted: dict[str, set[int]] = {t: set() for t in set(DATA_LINKS.values())}
    for step in steps:
        for rel, target in DATA_LINKS.items():
            data = step["relationships"][rel].get("data")
            if isinstance(data, list):
                wanted[target].update(int(d["id"]) for d in data)
            elif data is not None:
                wanted[target].add(int(data["id"]))
    return wanted


def expected_related(
    sim: Simulator, steps: list[dict[str, Any]]
) -> dict[str, list[dict[str, Any]]]:
    wanted = referenced(steps)
    step_ids = {int(s["id"]) for s in steps}
    out: dict[str, list[dict[str, Any]]] = {}
    for target in [*wanted, *LINK_ONLY]:
        records = []
        for record in sim.truth.records(target):
            if target in LINK_ONLY:
                owner = record["relationships"]["sequenceStep"]["data"]
                keep = owner is not None and int(owner["id"]) in step_ids
            else:
                keep = int(record["id"]) in wanted[target]
            if keep:
                records.append(expected_row(record, rel_columns(target)))
        out[target] = records
    return out


def expected_steps_for_seed(steps: int, seed: int) -> list[dict[str, Any]]:
    """Ground truth of a simulator with this size and seed (the data is deterministic)."""
    sim = Simulator(SimulatorConfig(steps=steps, seed=seed))
    return [expected_row(r, STEP_RELATIONSHIP_COLUMNS) for r in sim.truth.records("sequenceStep")]


# ------------------------------------------------------------------ the whole account


def account_columns(type_name: str) -> dict[str, str]:
    """Relationship -> column for one type, by the data model's documented rule (README and
    docs/data-model.md), written out here rather than read from `normalize.table_layout`:
    a to-one is `<name>Id`, a to-many `<target>Ids`; a name already taken (an attribute, `id`,
    `_extra` or an earlier column) falls back to `<name>_id`, resp. `<name>Ids` then
    `<name>_ids`; links-only relationships have no column."""
    rtype = resource_type(type_name)
    taken = {"id", "_extra", *(a.name for a in rtype.attributes)}
    out: dict[str, str] = {}
    for rel in rtype.relationships:
        if rel.shape is Shape.LINKS:
            continue
        if rel.shape is Shape.TO_ONE:
            candidates = [f"{rel.name}Id", f"{rel.name}_id"]
        else:
            candidates = [f"{rel.target}Ids", f"{rel.name}Ids", f"{rel.name}_ids"]
        column = next(c for c in candidates if c not in taken)
        taken.add(column)
        out[rel.name] = column
    return out


def _identifier(data: Any, target: str) -> int | None:
    """The id of an identifier of the relationship's (first) target type, else None."""
    if isinstance(data, dict) and data.get("type") == target:
        return int(data["id"])
    return None


def expected_account_row(record: dict[str, Any]) -> dict[str, Any]:
    """The Arrow row (as `to_pylist` reads it back) of a record of any readable type, from the
    record as the simulator serves it: `id` (a string for UUID types), every attribute the
    schema types by its kind (object and array-of-object shapes as JSON text with sorted keys,
    integer pairs as lists), `<rel>Id` / `<rel>Ids` for relationships with data, and `_extra`
    holding what no column takes (an identifier of another type of a polymorphic relationship)."""
    rtype = resource_type(record["type"])
    attributes = record.get("attributes") or {}
    relationships = record.get("relationships") or {}
    known = {a.name for a in rtype.attributes}
    extra: dict[str, Any] = {k: v for k, v in attributes.items() if k not in known}
    row: dict[str, Any] = {
        "id": str(record["id"]) if rtype.id_kind is Kind.STRING else int(record["id"])
    }
    for attribute in rtype.attributes:
        row[attribute.name] = _value(attribute.kind, attributes.get(attribute.name))
    columns = account_columns(rtype.name)
    for rel in rtype.relationships:
        if rel.name not in columns:
            continue
        sent = relationships.get(rel.name)
        data = None if sent is None else sent.get("data")
        if rel.shape is Shape.TO_ONE:
            value = None if data is None else _identifier(data, rel.target)
            if data is not None and value is None:
                extra["relationships." + rel.name] = sent
            row[columns[rel.name]] = value
        elif data is None:
            row[columns[rel.name]] = None
        else:
            ids = [_identifier(d, rel.target) for d in data]
            if any(i is None for i in ids):
                extra["relationships." + rel.name] = sent
            row[columns[rel.name]] = [i for i in ids if i is not None]
    row["_extra"] = orjson.dumps(extra, option=orjson.OPT_SORT_KEYS).decode() if extra else None
    return row


def expected_account(sim: Simulator, type_name: str) -> dict[Any, dict[str, Any]]:
    """Every live record of `type_name` as its expected row, by id."""
    return {row["id"]: row for row in map(expected_account_row, sim.truth.records(type_name))}


def newest_versions(out: Path, type_name: str) -> dict[Any, dict[str, Any]]:
    """The newest version of each record of `type_name` in a backup's committed part files
    (the manifest's files in commit order, a later row superseding an earlier one), less the
    ids a tombstone of a later file names: what the backup says exists now, without compacting."""
    manifest = orjson.loads((out / "_manifest.json").read_bytes())
    rows: dict[Any, dict[str, Any]] = {}
    for entry in manifest["files"]:
        if entry["type"] == type_name:
            for row in pq.read_table(out / entry["path"]).to_pylist():
                rows[row["id"]] = row
        elif entry["type"] == "_tombstone":
            for stone in pq.read_table(out / entry["path"]).to_pylist():
                if stone["type"] == type_name:
                    rows.pop(stone["id"], None)
    return rows


def compacted_current(out: Path) -> dict[str, dict[Any, dict[str, Any]]]:
    """The published `_current/` state (what `exporter compact` wrote), per type, by id."""
    from exporter.backup.compact import read_current

    _generation, tables = read_current(out)
    return {t: {r["id"]: r for r in table.to_pylist()} for t, table in tables.items()}


def account_differences(
    sim: Simulator,
    held: dict[str, dict[Any, dict[str, Any]]],
    types: list[str] | None = None,
    *,
    lists_ascending: bool = False,
) -> list[str]:
    """What differs between `held` (rows per type, by id) and the ground truth, for each of
    `types` (default: every simulated one): missing and unexpected ids, then the first few
    differing fields. With `lists_ascending`, to-many lists are compared as the ascending ids
    a compaction derives (the order of the API's own lists is not a fact of the data)."""
    problems: list[str] = []
    for type_name in types or sim.truth.types():
        want = expected_account(sim, type_name)
        got = held.get(type_name, {})
        missing, extra = want.keys() - got.keys(), got.keys() - want.keys()
        if resource_type(type_name).id_kind is Kind.STRING:
            # A log with string ids (auditLog) is kept whole: an entry the API no longer serves
            # (its retention ended, or, in the simulator, the record it names was deleted) stays
            # in the backup, by design (README, "Incremental runs"). Only such entries may be extra.
            gone = {str(i) for i in sim.truth.deleted_ids(type_name)}
            extra = {i for i in extra if str(i) not in gone}
        if missing or extra:
            problems.append(
                f"{type_name}: missing {sorted(missing, key=str)[:5]} ({len(missing)}), "
                f"unexpected {sorted(extra, key=str)[:5]} ({len(extra)})"
            )
        list_columns = [
            c
            for r, c in account_columns(type_name).items()
            if resource_type(type_name).relationship(r).shape is Shape.TO_MANY  # type: ignore[union-attr]
        ]
        shown = 0
        for record_id in sorted(want.keys() & got.keys(), key=str):
            expected, actual = dict(want[record_id]), got[record_id]
            if lists_ascending:
                for column in list_columns:
                    if expected[column] is not None:
                        expected[column] = sorted(expected[column])
            differing = [k for k in expected if actual.get(k) != expected[k]]
            if differing and shown < 3:
                shown += 1
                k = differing[0]
                problems.append(
                    f"{type_name} {record_id}: {differing[:4]}, e.g. {k}: "
                    f"{actual.get(k)!r:.120} != {expected[k]!r:.120}"
                )
    return problems


def assert_account_equals_truth(
    sim: Simulator, out: Path, types: list[str] | None = None, *, compacted: bool = False
) -> None:
    """Every type of `types` (default all) in the backup at `out` equals the ground truth:
    the newest version per id of the part files, or with `compacted` the published `_current/`."""
    if compacted:
        held = compacted_current(out)
    else:
        held = {t: newest_versions(out, t) for t in (types or sim.truth.types())}
    problems = account_differences(sim, held, types, lists_ascending=compacted)
    assert not problems, "\n".join(problems[:40])
