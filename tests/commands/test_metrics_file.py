"""`export --metrics-file`: the outcome of a successful and of a failed run, read back by Prometheus' own text parser, checked against the backup."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from exporter.core.errors import ExitCode
from tests.helpers.checks import assert_refused
from tests.helpers.commands import invoke, status_json
from tests.helpers.runs import run_exporter

pytestmark = pytest.mark.slow  # CLI subprocesses running the demo

P = "outreach_exporter_"


def samples(path: Path) -> dict[tuple[str, str], float]:
    """(metric name, type label or "") -> value, every sample labelled with its out."""
    found: dict[tuple[str, str], float] = {}
    for family in text_string_to_metric_families(path.read_text()):
        assert family.type == "gauge" and family.documentation
        for sample in family.samples:
            assert sample.labels["out"]
            found[(sample.name, sample.labels.get("type", ""))] = sample.value
    return found


def test_a_success_then_a_failure(tmp_path: Path) -> None:
    out, metrics = tmp_path / "o", tmp_path / "prom" / "outreach.prom"
    metrics.parent.mkdir()
    before = time.time()
    result = run_exporter(
        "export", "--demo", "--demo-steps", "150", "--out", str(out), "--metrics-file", str(metrics)
    )
    assert result.returncode == 0, result.stderr
    first = samples(metrics)
    assert first[(P + "last_run_exit_code", "")] == 0
    ended = first[(P + "last_run_timestamp_seconds", "")]
    assert before < ended <= time.time()
    assert first[(P + "last_success_timestamp_seconds", "")] == ended
    assert 0 < first[(P + "last_run_duration_seconds", "")] < time.time() - before
    totals = {t["type_name"]: t["rows"] for t in status_json(out)["totals"]}
    records = {t: v for (n, t), v in first.items() if n == P + "last_run_records"}
    assert records == totals and totals["sequenceStep"] == 150
    requests = {t: v for (n, t), v in first.items() if n == P + "last_run_requests"}
    assert set(requests) == set(totals) and all(v >= 1 for v in requests.values())
    assert sum(requests.values()) <= first[(P + "last_run_http_requests", "")]

    # The next night fails: the exit code says so, the last success keeps its time.
    result = run_exporter(
        "export", "--out", str(out), "--incremental", "--token", "t", "--metrics-file",
        str(metrics), "--base-url", "http://127.0.0.1:9/api/v2",
    )  # fmt: skip
    assert result.returncode == ExitCode.UNREACHABLE, result.stderr
    second = samples(metrics)
    assert second[(P + "last_run_exit_code", "")] == ExitCode.UNREACHABLE
    assert second[(P + "last_run_timestamp_seconds", "")] > ended
    assert second[(P + "last_success_timestamp_seconds", "")] == ended
    assert not any(n == P + "last_run_records" for n, _ in second)
    assert [p.name for p in metrics.parent.iterdir()] == ["outreach.prom"]  # no temporary left


def test_a_metrics_file_in_no_directory_is_refused_before_the_run(tmp_path: Path) -> None:
    out = tmp_path / "o"
    args = ["export", "--demo", "--out", str(out), "--metrics-file", str(tmp_path / "no" / "m")]
    code, _, stderr = invoke(args)
    assert_refused(code, stderr, "--metrics-file", "does not exist")
    assert not out.exists()
