"""Benchmark: export throughput, requests and peak memory against the simulator, beside a floor and dlt.

Usage:
    python scripts/bench.py                       # the full report (BENCHMARKS.md's matrix)
    python scripts/bench.py --quick               # 10,000 and 100,000 steps only
    python scripts/bench.py --markdown BENCHMARKS.md
    python scripts/bench.py --quick --only 'no latency,300 ms' --vs ../old-checkout --repeat 3
                                                  # this code beside another checkout's, paired
    python scripts/bench.py --only account        # `--resources all`: the whole account
    python scripts/bench.py --quick --only account  # the same at 10,000 prospects only
    python scripts/bench.py --only dlt            # beside dlt's REST API source (installs dlt
                                                  # into a throwaway virtualenv: minutes)
    python scripts/bench.py --only memory --vs ../old-checkout
                                                  # peak memory's growth with the run, 5 runs

Every scenario starts its own simulator process (`exporter simulate`, loopback only, record
cache off so every page is rendered anew for every client) and runs, each in its own process
so that peak memory (ru_maxrss from wait4) and CPU seconds are theirs alone:
- the export: `exporter export` writing Parquet; the simulator logs every GET it serves;
- the floor (scripts/bench_floor.py): those same GETs replayed with aiohttp at the same number
  in flight, each body read into Arrow by pyarrow's C++ JSON reader in a thread while the next
  request is out, nothing normalized, nothing written: the least any client must do with these
  pages. The export/floor ratio is the share of that bound the export reaches (issue 16 aims at
  0.8 where latency dominates, 0.5 where the CPU does).
Each export row also says how many pages took the fast path (Arrow's reader) and how many the
slow one (parsed into Python objects), from the manifest's `stats.page_paths` ("-" where the
export's version does not record it).
With `--vs TREE`, every scenario's export also runs with the code of another checkout (its
`exporter` package first on PYTHONPATH) against the same simulator process, alternating which
goes first, `--repeat` times each; the table gives both medians and their ratio (no floor), and
the CPU seconds each export process used (user + system), which a busy machine disturbs less
than wall time.
The `account` group exports the whole simulated account (`--resources all`, every readable
collection as a root; no floor) and sets its requests beside the bound of issue 14:
sum over types of ceil(records / page size), from the simulator's own counts (its ground truth,
computed in a child process) rather than from what the export says it wrote.
Under a scaled-down rate limit, the theoretical minimum time is what the fixed window allows for
the export's requests: every `window` seconds, `limit` requests. Nothing here is asserted.
The `dlt` group (only with `--only dlt`, like `account` not part of the matrix, `--quick` or
not) sets the export beside dlt's REST API source at 100,000 steps, 0 and 500 ms per page
(scripts/bench_dlt_pipeline.py): dlt is installed into a throwaway virtualenv in the group's
work directory (`--dlt-venv DIR` keeps one to reuse), and its Parquet is read back: a run that
did not write every step, each once, voids the figure.
The `memory` group (only with `--only memory`) measures how peak memory grows with the length
of a run (issue 16, item 4): the export of 100,000 and of 1,000,000 steps (`--quick`: 10,000
and 100,000), no relationships, 8 in flight, no latency, `--repeat` runs of each (at least 5;
with `--vs`, the other checkout's run alternates with this one's against the same simulator),
peak RSS from wait4. A peak is the largest swing of a noisy process, so one run says little:
the table gives every run and the medians, and growth is the ratio of the medians.
"""

from __future__ import annotations

import argparse
import contextlib
import math
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import orjson

TOKEN = "bench-token"  # the simulator's static token, not a secret
UNLIMITED = "1000000000/3600"


@dataclass
class Measure:
    records: int
    requests: int
    seconds: float
    peak_mib: float
    rate_limited: int = 0
    run_seconds: float = 0.0  # the run itself, as its manifest records (no process start-up)
    cpu_seconds: float = 0.0  # user + system time of the process (robust to a busy machine)
    page_paths: dict[str, int] | None = None  # {"fast": n, "slow": m}: None where not recorded
    peak_in_flight: int | None = None  # stats.in_flight_bound.peak (an adaptive bound's highest)
    wire_bytes: int | None = None  # stats.bytes_received: response bodies as read off the wire

    @property
    def rate(self) -> float:
        return self.records / self.seconds if self.seconds else 0.0

    @property
    def wire_rate(self) -> float | None:
        """MB (10**6 bytes) of response bodies per second; None where not recorded."""
        if self.wire_bytes is None or not self.seconds:
            return None
        return self.wire_bytes / 1e6 / self.seconds


@dataclass
class Scenario:
    name: str
    steps: int
    relationships: bool
    latency: float
    concurrency: int | None  # None: the exporter's default (no --concurrency flag)
    rate_limit: str = UNLIMITED
    # The simulator sends every member JSON:API allows beside the data (`--wire-extras`: links
    # and meta on records and pages, to-many relationships with both data and links), the
    # shapes that once sent whole pages down the slow path (issue 16, item 6).
    wire_extras: bool = False

    @property
    def shown_concurrency(self) -> str:
        return "default" if self.concurrency is None else str(self.concurrency)


@contextlib.contextmanager
def simulator(scenario: Scenario, log: Path) -> Iterator[str]:
    command = [
        sys.executable, "-m", "exporter", "simulate", "--host", "127.0.0.1", "--port", "0",
        "--steps", str(scenario.steps), "--seed", "1", "--token", TOKEN,
        "--rate-limit", scenario.rate_limit, "--latency", str(scenario.latency),
        "--cache-mib", "0", "--request-log", str(log),
    ]  # fmt: skip
    if scenario.wire_extras:
        command.append("--wire-extras")
    with simulator_process(command) as url:
        yield url.removesuffix("/api/v2")  # the root; the API is below /api/v2


@contextlib.contextmanager
def simulator_process(command: list[str]) -> Iterator[str]:
    """Start `exporter simulate` (`command`), yield the API URL its ready line names, stop it."""
    process = subprocess.Popen(command, stdout=subprocess.PIPE, text=True, env=tree_env(None))
    try:
        assert process.stdout is not None
        line = process.stdout.readline()
        url = next((w for w in line.split() if w.startswith("http://")), None)
        if url is None:
            raise SystemExit(f"simulator did not start: {line!r}")
        yield url.rstrip("/")
    finally:
        process.terminate()
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(timeout=10)
        if process.poll() is None:
            process.kill()


def tree_env(tree: Path | None) -> dict[str, str]:
    """The environment in which `python -m exporter` runs `tree`'s code (None: the checkout this
    script is in). PYTHONSAFEPATH: `-m` and `-c` would otherwise put the working directory first
    on sys.path, ahead of PYTHONPATH, and a bench started from one checkout's root would run that
    checkout's package for both sides of `--vs`."""
    checkout = tree if tree is not None else Path(__file__).resolve().parents[1]
    return {**os.environ, "PYTHONPATH": str(checkout.resolve()), "PYTHONSAFEPATH": "1"}


def run_measured(
    command: list[str], env: dict[str, str] | None = None
) -> tuple[float, float, str, float]:
    """(wall seconds, peak RSS MiB, stdout, CPU seconds) of a child process run in `env`.

    wait4's figures cover the child and the children it waited for."""
    started = time.perf_counter()
    with tempfile.TemporaryFile() as out_file, tempfile.TemporaryFile() as err_file:
        process = subprocess.Popen(command, stdout=out_file, stderr=err_file, env=env)
        _pid, status, usage = os.wait4(process.pid, 0)  # this child's own peak memory
        seconds = time.perf_counter() - started
        process.returncode = os.waitstatus_to_exitcode(status)
        out_file.seek(0)
        err_file.seek(0)
        out, err = out_file.read().decode(), err_file.read().decode()
    if process.returncode != 0:
        raise SystemExit(
            f"{' '.join(command[:5])} failed ({process.returncode}): {err.strip()[-800:]}"
        )
    return seconds, usage.ru_maxrss / 1024, out, usage.ru_utime + usage.ru_stime


def measure_export(base: str, scenario: Scenario, tree: Path | None = None) -> Measure:
    flags = [
        "--rate-limit", scenario.rate_limit,
        "--relationships", "all" if scenario.relationships else "none",
    ]  # fmt: skip
    if scenario.concurrency is not None:
        flags += ["--concurrency", str(scenario.concurrency)]
    return run_export(base, flags, tree)


def run_export(base: str, flags: list[str], tree: Path | None = None) -> Measure:
    """`exporter export` against `base` with `flags` (beyond the output, URL and token)."""
    out_dir = Path(tempfile.mkdtemp(prefix="bench-export-"))
    try:
        command = [
            sys.executable, "-m", "exporter", "export",
            "--out", str(out_dir), "--base-url", base, "--token", TOKEN, *flags, "--quiet",
        ]  # fmt: skip
        seconds, peak, _out, cpu = run_measured(command, tree_env(tree))
        return export_measure(out_dir, seconds, peak, cpu)
    finally:
        shutil.rmtree(out_dir, ignore_errors=True)


def export_measure(out_dir: Path, seconds: float, peak: float, cpu: float) -> Measure:
    """The figures of a finished export in `out_dir`: what its manifest says, and the process's."""
    manifest = orjson.loads((out_dir / "_manifest.json").read_bytes())
    records = sum(r["rows"] for r in manifest["resources"].values())
    stats = manifest.get("stats", {})
    return Measure(
        records,
        int(stats.get("requests", 0)),
        seconds,
        peak,
        int(stats.get("rate_limited", 0)),
        float(stats.get("seconds", seconds)),
        cpu,
        page_paths(stats),
        peak_in_flight(stats),
        int(stats["bytes_received"]) if "bytes_received" in stats else None,
    )


def peak_in_flight(stats: dict[str, Any]) -> int | None:
    """The highest in-flight bound the export reached (`stats.in_flight_bound.peak`); None where
    the export that wrote it does not record it."""
    bound = stats.get("in_flight_bound")
    peak = bound.get("peak") if isinstance(bound, dict) else None
    return peak if type(peak) is int and peak > 0 else None


def page_paths(stats: dict[str, Any]) -> dict[str, int] | None:
    """`stats.page_paths` of a manifest ({"fast": n, "slow": m}); None where the export that wrote
    it does not count them (an older tree in --vs)."""
    paths = stats.get("page_paths")
    if not isinstance(paths, dict):
        return None
    return {"fast": int(paths.get("fast", 0)), "slow": int(paths.get("slow", 0))}


def page_paths_cell(measure: Measure) -> str:
    """'fast / slow' pages of an export, '-' where not recorded."""
    paths = measure.page_paths
    return "-" if paths is None else f"{paths['fast']:,} / {paths['slow']:,}"


def measure_floor(root: str, urls: Path, concurrency: int) -> Measure:
    """scripts/bench_floor.py replaying `urls` (below `root`) in its own process."""
    floor_script = Path(__file__).with_name("bench_floor.py")
    command = [sys.executable, str(floor_script), root, str(urls), str(concurrency), TOKEN]
    seconds, peak, out, cpu = run_measured(command)
    result = orjson.loads(out.strip().splitlines()[-1])
    return Measure(result["records"], result["requests"], seconds, peak, cpu_seconds=cpu)


def machine() -> str:
    cpu = platform.machine()
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    memory = ""
    with contextlib.suppress(OSError):
        total_kb = int(Path("/proc/meminfo").read_text().split()[1])
        memory = f", {total_kb / 1024 / 1024:.0f} GiB RAM"
    return f"{os.cpu_count()} cores ({cpu}){memory}, Linux, Python {platform.python_version()}"


def scenarios(quick: bool) -> list[Scenario]:
    sizes = [10_000, 100_000] if quick else [10_000, 100_000, 1_000_000]
    out = []
    for steps in sizes:
        for relationships in (False, True):
            out.append(Scenario("no latency", steps, relationships, 0.0, 8))
    for steps in sizes:
        for relationships in (False, True):
            out.append(Scenario("300 ms per page", steps, relationships, 0.3, 16))
    for relationships in (False, True):
        out.append(
            Scenario("wire extras no latency", 100_000, relationships, 0.0, 8, wire_extras=True)
        )
    for concurrency in (1, 4, 16):
        out.append(Scenario("speed-up with concurrency", 300_000, False, 0.3, concurrency))
    out.append(Scenario("rate limit 20/1s", 100_000, True, 0.0, 8, rate_limit="20/1"))
    # The exporter's own defaults (the in-flight bound adaptive since issue 16): no --concurrency.
    # Named without a comma, so that `--only 'defaults 0 ms'` picks one of them.
    for latency in (0.0, 0.3, 0.5):
        out.append(
            Scenario(f"defaults {latency * 1000:.0f} ms per page", 100_000, True, latency, None)
        )
    out.append(Scenario("defaults rate limit 20/1s", 100_000, True, 0.0, None, rate_limit="20/1"))
    return out


def run(scenario: Scenario) -> dict[str, Any]:
    log = Path(tempfile.mkstemp(prefix="bench-requests-", suffix=".log")[1])
    try:
        with simulator(scenario, log) as root:
            export = measure_export(root + "/api/v2", scenario)
            floor = None
            if scenario.rate_limit == UNLIMITED:  # a floor under a rate limit measures the limit
                urls = [line for line in log.read_text().splitlines() if line]
                replay_file = log.with_suffix(".replay")
                replay_file.write_text("\n".join(urls))
                # The floor replays at the bound the export ran at: pinned, or the adaptive bound's peak.
                bound = scenario.concurrency or export.peak_in_flight or 16
                floor = measure_floor(root, replay_file, bound)
                replay_file.unlink()
    finally:
        log.unlink(missing_ok=True)
    row: dict[str, Any] = {"scenario": scenario, "export": export, "floor": floor}
    if scenario.rate_limit != UNLIMITED:
        limit, window = scenario.rate_limit.split("/")
        windows = math.ceil(export.requests / int(limit))
        minimum = (windows - 1) * float(window)  # the last window's requests start at its opening
        row["minimum"] = minimum
        row["allowed_rate"] = int(limit) / float(window)
    return row


def median_measure(measures: list[Measure]) -> Measure:
    """The run of median wall time (its memory and requests with it)."""
    return sorted(measures, key=lambda m: m.seconds)[len(measures) // 2]


def run_paired(scenario: Scenario, other: Path, repeat: int) -> dict[str, Any]:
    """This code's export and `other`'s, against one simulator, alternating which goes first."""
    log = Path(tempfile.mkstemp(prefix="bench-requests-", suffix=".log")[1])
    ours: list[Measure] = []
    theirs: list[Measure] = []
    try:
        with simulator(scenario, log) as root:
            for round_ in range(repeat):
                order = [(None, ours), (other, theirs)]
                for tree, into in order if round_ % 2 == 0 else reversed(order):
                    into.append(measure_export(root + "/api/v2", scenario, tree))
    finally:
        log.unlink(missing_ok=True)
    return {
        "scenario": scenario,
        "new": median_measure(ours),
        "old": median_measure(theirs),
        "new_cpu": sorted(m.cpu_seconds for m in ours)[len(ours) // 2],
        "old_cpu": sorted(m.cpu_seconds for m in theirs)[len(theirs) // 2],
    }


def render_paired(rows: list[dict[str, Any]], other: Path, repeat: int) -> str:
    lines = [
        f"Medians of {repeat} runs each; old = `{other}`, new = this checkout.",
        "",
        "| scenario | steps | relationships | concurrency | old records/s | new records/s | new / old | old CPU s | new CPU s | new / old CPU | old requests | new requests | old fast / slow pages | new fast / slow pages | old 429s | new 429s | old peak MiB | new peak MiB |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        s, old, new = row["scenario"], row["old"], row["new"]
        lines.append(
            f"| {s.name} | {s.steps:,} | {'on' if s.relationships else 'off'} | {s.shown_concurrency} | "
            f"{old.rate:,.0f} | {new.rate:,.0f} | {new.rate / old.rate:.2f} | "
            f"{row['old_cpu']:.1f} | {row['new_cpu']:.1f} | {row['new_cpu'] / row['old_cpu']:.2f} | "
            f"{old.requests:,} | {new.requests:,} | {page_paths_cell(old)} | {page_paths_cell(new)} | "
            f"{old.rate_limited} | {new.rate_limited} | "
            f"{old.peak_mib:.0f} | {new.peak_mib:.0f} |"
        )
    return "\n".join(lines)


FLOOR_METHOD = """\
The **floor** (scripts/bench_floor.py) replays exactly the GETs the export made (the simulator's
request log), at the same number in flight, with aiohttp; each body is read into an Arrow table
by pyarrow's C++ JSON reader (`pyarrow.json.read_json`, one page one block, the schema of a
collection's first page given for the next) in a thread pool while the next request is out;
nothing is normalized or written. It is the least any client must do with these pages, and it
knows every URL up front (no page waits for the one before it, no probe), so it bounds the
export from below in time: export / floor is the share of that bound the export reaches. Issue
16 aims at 0.8 where latency dominates (`aim`, rows with latency) and 0.5 where the CPU does
(no latency: the simulator renders pages on one of the cores the export and the floor parse
on). Records/s are over each process's whole wall time, start-up included; CPU s is user +
system time; peak MiB is each process's own ru_maxrss. `fast / slow pages`: pages the export
read with Arrow's reader / parsed into Python objects (its manifest's `stats.page_paths`; `-`
where the export does not record it)."""


def floor_aim(scenario: Scenario) -> float:
    """Issue 16's aim for export / floor: 0.8 where latency dominates, 0.5 where the CPU does."""
    return 0.8 if scenario.latency > 0 else 0.5


def render(rows: list[dict[str, Any]]) -> str:
    lines = [
        FLOOR_METHOD,
        "",
        "| scenario | steps | relationships | concurrency | export records/s | floor records/s | export / floor | aim | records | requests | fast / slow pages | export s | export CPU s | floor CPU s | export peak MiB | floor peak MiB |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        s, e, f = row["scenario"], row["export"], row["floor"]
        floor_rate = f"{f.rate:,.0f}" if f else "-"
        ratio = f"{e.rate / f.rate:.2f}" if f and f.rate else "-"
        aim = f"≥ {floor_aim(s):.1f}" if f else "-"
        floor_cpu = f"{f.cpu_seconds:.1f}" if f else "-"
        floor_peak = f"{f.peak_mib:.0f}" if f else "-"
        lines.append(
            f"| {s.name} | {s.steps:,} | {'on' if s.relationships else 'off'} | {s.shown_concurrency} | "
            f"{e.rate:,.0f} | {floor_rate} | {ratio} | {aim} | {e.records:,} | "
            f"{e.requests:,} | {page_paths_cell(e)} | {e.seconds:.1f} | {e.cpu_seconds:.1f} | "
            f"{floor_cpu} | {e.peak_mib:.0f} | {floor_peak} |"
        )
    limited = [r for r in rows if "minimum" in r]
    if limited:
        lines += [
            "",
            "| rate limit | requests | theoretical minimum s | run s | efficiency | achieved requests/s | allowed requests/s | 429s |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for row in limited:
            s, e = row["scenario"], row["export"]
            lines.append(
                f"| {s.rate_limit} | {e.requests:,} | {row['minimum']:.1f} | {e.run_seconds:.1f} | "
                f"{row['minimum'] / e.run_seconds:.0%} | {e.requests / e.run_seconds:.1f} | {row['allowed_rate']:.1f} | {e.rate_limited} |"
            )
    return "\n".join(lines + relationships_cost(rows))


def relationships_cost(rows: list[dict[str, Any]]) -> list[str]:
    """What walking every relationship costs, per scenario and size: records/s and wire MB/s
    with the walk against without it (issue 16, item 3), and the export's CPU per MB read.

    The related records are larger than a step (a mailing's body, a task's note), and reading
    JSON costs per byte, so records/s alone cannot tell a slow walk from heavier records."""
    pairs: dict[tuple[str, int], dict[bool, Measure]] = {}
    for row in rows:
        s = row["scenario"]
        pairs.setdefault((s.name, s.steps), {})[s.relationships] = row["export"]
    lines = [
        "",
        "| scenario | steps | records/s off → on | on / off | bytes per record off → on | wire MB/s off → on | on / off | export CPU s per wire MB off → on |",
        "|---|---|---|---|---|---|---|---|",
    ]
    shown = False
    for (name, steps), by in pairs.items():
        off, on = by.get(False), by.get(True)
        if off is None or on is None or off.wire_rate is None or on.wire_rate is None:
            continue
        assert off.wire_bytes is not None and on.wire_bytes is not None
        shown = True
        lines.append(
            f"| {name} | {steps:,} | {off.rate:,.0f} → {on.rate:,.0f} | {on.rate / off.rate:.2f} | "
            f"{off.wire_bytes / off.records:,.0f} → {on.wire_bytes / on.records:,.0f} | "
            f"{off.wire_rate:.0f} → {on.wire_rate:.0f} | {on.wire_rate / off.wire_rate:.2f} | "
            f"{off.cpu_seconds / (off.wire_bytes / 1e6) * 1000:.1f} → "
            f"{on.cpu_seconds / (on.wire_bytes / 1e6) * 1000:.1f} ms |"
        )
    return lines if shown else []


def wanted(scenario: Scenario, only: str | None) -> bool:
    """`--only a,b`: scenarios whose name contains a or b (all without it)."""
    return not only or any(part and part in scenario.name for part in only.split(","))


ACCOUNT_PAGE = 1000  # the export's default (and the API's largest) page size


@dataclass
class AccountScenario:
    """`--resources all` against a simulated account of `prospects` prospects."""

    name: str
    prospects: int
    steps: int
    mailings_per_email_step: float
    concurrency: int = 8


def account_scenarios(quick: bool) -> list[AccountScenario]:
    """The whole account at 10,000 and 100,000 prospects, and the larger at 2 in flight: memory
    follows the pages held, and a page of prospects is 20 times a page of steps."""
    sizes = [10_000] if quick else [10_000, 100_000]
    found = [AccountScenario("account", p, 10_000, 20.0) for p in sizes]
    if not quick:
        found.append(AccountScenario("account", 100_000, 10_000, 20.0, concurrency=2))
    return found


def account_simulator_flags(scenario: AccountScenario) -> list[str]:
    return [
        "--prospects", str(scenario.prospects), "--steps", str(scenario.steps),
        "--mailings-per-email-step", str(scenario.mailings_per_email_step), "--seed", "1",
    ]  # fmt: skip


def account_counts(scenario: AccountScenario) -> dict[str, int]:
    """Records per type of the simulated account, from the simulator's ground truth (built in a
    child process: the same flags, the same seed, so the same data)."""
    command = [sys.executable, __file__, "_counts", *account_simulator_flags(scenario)]
    _seconds, _peak, out, _cpu = run_measured(command)
    counts: dict[str, int] = orjson.loads(out.strip().splitlines()[-1])
    return counts


def print_counts(flags: list[str]) -> None:
    """`_counts --prospects N --steps S --mailings-per-email-step M --seed K`: records per type."""
    from exporter.simulator import Simulator, SimulatorConfig

    values = dict(zip(flags[::2], flags[1::2], strict=True))
    sim = Simulator(
        SimulatorConfig(
            prospects=int(values["--prospects"]),
            steps=int(values["--steps"]),
            mailings_per_email_step=float(values["--mailings-per-email-step"]),
            seed=int(values["--seed"]),
        )
    )
    print(orjson.dumps({t: sim.truth.count(t) for t in sim.truth.types()}).decode())


@contextlib.contextmanager
def account_simulator(scenario: AccountScenario) -> Iterator[str]:
    command = [
        sys.executable, "-m", "exporter", "simulate", "--host", "127.0.0.1", "--port", "0",
        *account_simulator_flags(scenario), "--token", TOKEN, "--rate-limit", UNLIMITED,
        "--cache-mib", "0",
    ]  # fmt: skip
    with simulator_process(command) as url:
        yield url


def run_account(scenario: AccountScenario) -> dict[str, Any]:
    counts = account_counts(scenario)
    # An empty collection still costs the one request that finds it empty.
    bound = sum(max(1, math.ceil(n / ACCOUNT_PAGE)) for n in counts.values())
    out_dir = Path(tempfile.mkdtemp(prefix="bench-account-"))
    try:
        with account_simulator(scenario) as base:
            command = [
                sys.executable, "-m", "exporter", "export", "--resources", "all",
                "--out", str(out_dir), "--base-url", base, "--token", TOKEN,
                "--concurrency", str(scenario.concurrency), "--page-size", str(ACCOUNT_PAGE),
                "--rate-limit", UNLIMITED, "--quiet",
            ]  # fmt: skip
            seconds, peak, _out, _cpu = run_measured(command, tree_env(None))
        manifest = orjson.loads((out_dir / "_manifest.json").read_bytes())
    finally:
        shutil.rmtree(out_dir, ignore_errors=True)
    rows = {t: int(r["rows"]) for t, r in manifest["resources"].items()}
    stats = manifest.get("stats", {})
    export = Measure(
        sum(rows.values()),
        int(stats.get("requests", 0)),
        seconds,
        peak,
        run_seconds=float(stats.get("seconds", seconds)),
    )
    short = {t: (rows.get(t, 0), n) for t, n in counts.items() if rows.get(t, 0) != n}
    return {
        "scenario": scenario,
        "export": export,
        "types": len(counts),
        "truth_records": sum(counts.values()),
        "bound": bound,
        "short": short,
    }


def render_account(rows: list[dict[str, Any]]) -> str:
    lines = [
        "| prospects | steps | mailings per email step | types | concurrency | records (truth) | records written | export s | records/s | requests | bound | requests / bound | peak MiB |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        s, e = row["scenario"], row["export"]
        lines.append(
            f"| {s.prospects:,} | {s.steps:,} | {s.mailings_per_email_step:g} | {row['types']} | "
            f"{s.concurrency} | "
            f"{row['truth_records']:,} | {e.records:,} | {e.seconds:.1f} | {e.rate:,.0f} | "
            f"{e.requests:,} | {row['bound']:,} | {e.requests / row['bound']:.3f} | {e.peak_mib:.0f} |"
        )
    for row in rows:
        if row["short"]:
            lines.append(f"\nRows written differ from the truth's count: {row['short']}")
    return "\n".join(lines)


def publish(table: str, markdown: Path | None) -> None:
    """Print the report (a table and the machine it ran on), and write it to `markdown` if given."""
    report = table + f"\n\nMachine: {machine()}.\n"
    print("\n" + report)
    if markdown:
        markdown.write_text(report)


DLT_STEPS = 100_000
DLT_LATENCIES = (0.0, 0.5)
DLT_PAGE_SIZE = 1000  # the API's largest, and the export's default
DLT_PIPELINE = Path(__file__).with_name("bench_dlt_pipeline.py")
RELATIONSHIPS_NONE = ["--relationships", "none"]


@dataclass
class DltRun:
    """One client's export of the steps at one latency."""

    client: str
    settings: str
    measure: Measure
    requests: int  # from the simulator's request log: GETs served while this client ran


DLT_METHOD = f"""\
**Beside dlt.** dlt's REST API source (`dlt.sources.rest_api.rest_api_source`, installed with
`pip install "dlt[parquet]"` into a throwaway virtualenv by the benchmark, never a dependency of
this project) exports the simulator's `sequenceSteps` at {DLT_STEPS:,} steps to its filesystem
destination with the Parquet loader format (scripts/bench_dlt_pipeline.py). dlt's defaults
throughout (extract, normalize with its default nesting, load, file rotation), with what any
user must configure: the base URL, the bearer token, the `json_link` paginator on `links.next`,
the `data` selector, and `page[size]={DLT_PAGE_SIZE}` (the API's largest and the export's
default; at the API's default of 50, dlt would walk 2,000 pages one after another: 1,000 s at
500 ms per page, so that row runs without latency only). dlt's telemetry is off
(`RUNTIME__DLTHUB_TELEMETRY=false`: no internet here). Its Parquet is read back: every step,
each once, or the figure is void. The export runs with its own defaults (only the output, the
URL and the token given: every relationship, so more records than dlt's), and again with
`--relationships none`, the same {DLT_STEPS:,} records as dlt. At each latency every run goes
against the same simulator process, one after another. Requests are the GETs the simulator
served during each run; `ours / dlt` is records/s over dlt's (`page[size]={DLT_PAGE_SIZE}`) at the
same latency (whole process wall time, start-up included); CPU s and peak MiB are each
process's own, its waited-for children included."""


def dlt_python(venv: Path) -> tuple[Path, str]:
    """The python of a virtualenv holding `dlt[parquet]` (made and installed when missing), and
    dlt's version."""
    python = venv / "bin" / "python"
    if not python.is_file():
        print(f"dlt: creating a virtualenv in {venv} and installing dlt[parquet]", flush=True)
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
        subprocess.run(
            [str(python), "-m", "pip", "install", "--quiet", "dlt[parquet]"],
            check=True,
            env=dlt_env(),
        )
    version = subprocess.run(
        [str(python), "-c", "import dlt; print(dlt.__version__)"],
        check=True,
        capture_output=True,
        text=True,
        env=dlt_env(),
    ).stdout.strip()
    return python, version


def dlt_env() -> dict[str, str]:
    """dlt's process environment: no PYTHONPATH into this checkout, no telemetry."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["RUNTIME__DLTHUB_TELEMETRY"] = "false"
    return env


def parquet_rows(directory: Path) -> tuple[int, int]:
    """(rows, distinct ids) over every Parquet file below `directory`."""
    import pyarrow.compute as pc
    import pyarrow.dataset as ds

    table = ds.dataset(directory, format="parquet").to_table(columns=["id"])
    return table.num_rows, len(pc.unique(table.column("id")))


def log_lines(log: Path) -> int:
    """GETs the simulator has logged so far (it writes a line, flushed, per request served)."""
    with log.open("rb") as lines:
        return sum(1 for _ in lines)


def run_dlt(python: Path, api_url: str, page_size: int, work: Path) -> Measure:
    """dlt's pipeline in its own process (its files and state in `work`/dlt, emptied first); void
    (SystemExit) unless it wrote every step once."""
    work = work / "dlt"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    command = [str(python), str(DLT_PIPELINE), api_url, TOKEN, str(page_size), str(work)]
    seconds, peak, out, cpu = run_measured(command, dlt_env())
    parquet_dir = Path(orjson.loads(out.strip().splitlines()[-1])["parquet_dir"])
    rows, distinct = parquet_rows(parquet_dir)
    if rows != DLT_STEPS or distinct != DLT_STEPS:
        raise SystemExit(
            f"dlt wrote {rows:,} rows ({distinct:,} distinct ids), not {DLT_STEPS:,}: figure void"
        )
    return Measure(rows, 0, seconds, peak, cpu_seconds=cpu)


def dlt_runs(python: Path, latency: float, work: Path) -> list[DltRun]:
    """The export (defaults; steps only) and dlt against one simulator at `latency` per page."""
    scenario = Scenario("dlt", DLT_STEPS, True, latency, 8)
    log = Path(tempfile.mkstemp(prefix="bench-requests-", suffix=".log")[1])
    runs: list[DltRun] = []
    try:
        with simulator(scenario, log) as root:
            api_url = root + "/api/v2"
            # The API's default page size only without latency (at 500 ms: 2,000 pages in a row).
            dlt_page_sizes = [DLT_PAGE_SIZE] + ([0] if latency == 0 else [])
            clients: list[tuple[str, str, Callable[[], Measure]]] = [
                ("ours", "defaults", partial(run_export, api_url, [])),
                ("ours", "--relationships none", partial(run_export, api_url, RELATIONSHIPS_NONE)),
            ]
            for size in dlt_page_sizes:
                settings = f"page[size]={size}" if size else "page[size] unset (API default 50)"
                clients.append(("dlt", settings, partial(run_dlt, python, api_url, size, work)))
            for client, settings, measure in clients:
                before = log_lines(log)
                result = measure()
                runs.append(DltRun(client, settings, result, log_lines(log) - before))
                print(
                    f"dlt group latency={latency * 1000:.0f}ms {client:4} {settings:34} "
                    f"{result.records:,} records in {result.seconds:.1f}s = {result.rate:,.0f} rec/s, "
                    f"CPU {result.cpu_seconds:.1f}s, {result.peak_mib:.0f} MiB",
                    flush=True,
                )
    finally:
        log.unlink(missing_ok=True)
    return runs


def render_dlt(by_latency: dict[float, list[DltRun]], version: str) -> str:
    lines = [
        DLT_METHOD + f" dlt {version}.",
        "",
        "| ms per page | client | settings | records | records/s | wall s | CPU s | peak MiB | requests | ours / dlt |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for latency, runs in by_latency.items():
        reference = next(r.measure for r in runs if r.client == "dlt")
        for run in runs:
            m = run.measure
            ratio = f"{m.rate / reference.rate:.2f}" if run.client == "ours" else "-"
            lines.append(
                f"| {latency * 1000:.0f} | {run.client} | {run.settings} | {m.records:,} | "
                f"{m.rate:,.0f} | {m.seconds:.1f} | {m.cpu_seconds:.1f} | {m.peak_mib:.0f} | "
                f"{run.requests:,} | {ratio} |"
            )
    return "\n".join(lines)


def group_asked(args: argparse.Namespace, group: str) -> bool:
    """Whether `--only` names `group` (a group runs alone, and only when named)."""
    return bool(args.only) and group in args.only.split(",")


def main_dlt(args: argparse.Namespace) -> bool:
    """Run the `dlt` group if `--only` asks for it; True when it did (and nothing else runs)."""
    if not group_asked(args, "dlt"):
        return False
    work = Path(tempfile.mkdtemp(prefix="bench-dlt-"))
    try:
        python, version = dlt_python(args.dlt_venv or work / "venv")
        by_latency = {latency: dlt_runs(python, latency, work) for latency in DLT_LATENCIES}
    finally:
        shutil.rmtree(work, ignore_errors=True)
    publish(render_dlt(by_latency, version), args.markdown)
    return True


def main_account(args: argparse.Namespace) -> bool:
    """Run the `account` group if `--only` asks for it; True when it did (and nothing else runs)."""
    if not group_asked(args, "account"):
        return False
    rows = []
    for scenario in account_scenarios(args.quick):
        row = run_account(scenario)
        rows.append(row)
        e = row["export"]
        print(
            f"account prospects={scenario.prospects:>7,} {e.records:,} records in {e.seconds:.1f}s "
            f"= {e.rate:,.0f} rec/s, {e.requests:,} requests (bound {row['bound']:,}), "
            f"{e.peak_mib:.0f} MiB",
            flush=True,
        )
    publish(render_account(rows), args.markdown)
    return True


MEMORY_SIZES = (100_000, 1_000_000)
MEMORY_SIZES_QUICK = (10_000, 100_000)
MEMORY_GROWTH_AIM = 1.2
MEMORY_RUNS = 5


def memory_runs(
    sizes: tuple[int, ...], trees: dict[str, Path | None], runs: int
) -> dict[str, dict[int, list[Measure]]]:
    """Each tree's exports of each size, `runs` times, the trees alternating on one simulator
    per size (so both meet the same machine load)."""
    found: dict[str, dict[int, list[Measure]]] = {name: {} for name in trees}
    for steps in sizes:
        scenario = Scenario("memory", steps, False, 0.0, 8)
        log = Path(tempfile.mkstemp(prefix="bench-memory-")[1])
        try:
            with simulator(scenario, log) as root:
                for run_number in range(runs):
                    order = list(trees.items())
                    if run_number % 2:
                        order.reverse()
                    for name, tree in order:
                        measure = measure_export(root + "/api/v2", scenario, tree)
                        found[name].setdefault(steps, []).append(measure)
                        print(
                            f"memory {name} steps={steps:>9,} run {run_number + 1}: "
                            f"{measure.peak_mib:.0f} MiB, CPU {measure.cpu_seconds:.1f}s",
                            flush=True,
                        )
        finally:
            log.unlink(missing_ok=True)
    return found


def render_memory(found: dict[str, dict[int, list[Measure]]], sizes: tuple[int, ...]) -> str:
    lines = [
        "| code | steps | runs | peak MiB, each | median peak MiB | median CPU s |",
        "|---|---|---|---|---|---|",
    ]
    medians: dict[str, list[float]] = {}
    for name, by_size in found.items():
        for steps in sizes:
            measures = by_size[steps]
            peaks = [m.peak_mib for m in measures]
            peak = statistics.median(peaks)
            medians.setdefault(name, []).append(peak)
            lines.append(
                f"| {name} | {steps:,} | {len(measures)} | "
                f"{', '.join(f'{p:.0f}' for p in peaks)} | {peak:.0f} | "
                f"{statistics.median(m.cpu_seconds for m in measures):.1f} |"
            )
    lines.append("")
    small, large = sizes
    for name, (low, high) in medians.items():
        lines.append(
            f"- {name}: {low:.0f} MiB at {small:,} steps, {high:.0f} at {large:,}: "
            f"growth x{high / low:.2f} (aim under x{MEMORY_GROWTH_AIM})"
        )
    return "\n".join(lines)


def main_memory(args: argparse.Namespace) -> bool:
    """Run the `memory` group if `--only` asks for it; True when it did (and nothing else runs)."""
    if not group_asked(args, "memory"):
        return False
    sizes = MEMORY_SIZES_QUICK if args.quick else MEMORY_SIZES
    trees: dict[str, Path | None] = {"this checkout": None}
    if args.vs is not None:
        trees = {f"`{args.vs}`": args.vs, **trees}
    found = memory_runs(sizes, trees, max(MEMORY_RUNS, args.repeat))
    publish(render_memory(found, sizes), args.markdown)
    return True


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "_counts":
        print_counts(sys.argv[2:])
        return
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="10,000 and 100,000 steps only")
    parser.add_argument("--markdown", type=Path, help="also write the report to this file")
    parser.add_argument(
        "--only", help="only scenarios whose name contains one of these (comma-separated)"
    )
    parser.add_argument("--vs", type=Path, help="also run each export with this checkout's code")
    parser.add_argument(
        "--repeat",
        type=int,
        default=1,
        help="with --vs: runs of each, median; with --only memory: runs of each (at least 5)",
    )
    parser.add_argument(
        "--dlt-venv",
        type=Path,
        help="with --only dlt: a virtualenv to use (made, with dlt[parquet], when missing) "
        "instead of a throwaway one in the work directory",
    )
    args = parser.parse_args()
    if args.vs is not None and not (args.vs / "exporter" / "__init__.py").is_file():
        raise SystemExit(f"--vs {args.vs}: no exporter package there")
    if main_account(args) or main_dlt(args) or main_memory(args):
        return
    if args.vs is not None:
        paired = []
        for scenario in scenarios(args.quick):
            if not wanted(scenario, args.only):
                continue
            row = run_paired(scenario, args.vs, max(1, args.repeat))
            paired.append(row)
            print(
                f"{scenario.name:28} steps={scenario.steps:>9,} rel={'on ' if scenario.relationships else 'off'} "
                f"old {row['old'].rate:>9,.0f} rec/s  new {row['new'].rate:>9,.0f} rec/s  "
                f"x{row['new'].rate / row['old'].rate:.2f}  CPU old {row['old_cpu']:.1f}s new "
                f"{row['new_cpu']:.1f}s",
                flush=True,
            )
        report = (
            render_paired(paired, args.vs, max(1, args.repeat)) + f"\n\nMachine: {machine()}.\n"
        )
        print("\n" + report)
        if args.markdown:
            args.markdown.write_text(report)
        return
    rows = []
    for scenario in scenarios(args.quick):
        if not wanted(scenario, args.only):
            continue
        row = run(scenario)
        rows.append(row)
        e, f = row["export"], row["floor"]
        floor = (
            f"floor {f.rate:>9,.0f} rec/s (CPU {f.cpu_seconds:.1f}s, {f.peak_mib:.0f} MiB)  "
            f"x{e.rate / f.rate:.2f}"
            if f and f.rate
            else "no floor"
        )
        print(
            f"{scenario.name:28} steps={scenario.steps:>9,} rel={'on ' if scenario.relationships else 'off'} "
            f"c={scenario.shown_concurrency:<7} export {e.rate:>9,.0f} rec/s ({e.requests:,} req, {e.seconds:.1f}s, "
            f"CPU {e.cpu_seconds:.1f}s, {e.peak_mib:.0f} MiB, {e.wire_rate or 0:.0f} wire MB/s, "
            f"fast/slow pages {page_paths_cell(e)})  {floor}",
            flush=True,
        )
    publish(render(rows), args.markdown)


if __name__ == "__main__":
    main()
