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
