"""Mutation testing of the modules that guard data: a small AST mutator that runs only each module's covering tests.

Why our own and not mutmut or cosmic-ray: both need a configuration per module and (mutmut 3)
copy and instrument the whole tree, and neither runs a chosen test selection per module without
more glue than this file. Here each mutant is one AST change to one module in a private copy of
`exporter/` and `tests/` (the worktree is never touched, so a killed campaign leaves nothing behind); the
module's tests (`COVERING`, `-m "not slow"` where that suffices) run in one process, stopping
at the first failure; a mutant is killed when they fail or run over the time limit.

Operators: a comparison flipped (== !=, < <=, > >=, in / not in, is / is not), `and`/`or`
swapped, a `not` dropped, `+`/`-` swapped, True/False swapped, an integer constant plus one,
a call statement deleted (an fsync, a rename, a `remember_secret`). Docstrings, annotations and
f-string text are not mutated.

A first, traced run of the selection records which tests execute each line of the module; each
mutant then runs only those tests (`-x -q -p no:randomly -n 0`, a time limit of three baseline
runs), so a campaign costs about one small test run per mutant, one at a time.

    python3 scripts/mutation.py exporter/api/pagination.py [--lines 100-200] [--limit N]
    python3 scripts/mutation.py exporter/api/pagination.py --survivors   # after new tests
    python3 scripts/mutation.py --all      # every module in COVERING

Prints each survivor (line and the mutated line), a score line per module and a markdown table.
A full campaign's verdicts are kept in $TMPDIR/mutation/<module>.json for `--survivors`.
"""

from __future__ import annotations

import argparse
import ast
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

# module -> the tests that cover it, fast ones first (a mutant runs first the tests that reach
# its line, in this order, then the whole list if none of them did).
COVERING: dict[str, list[str]] = {
    "exporter/api/pagination.py": [
        "tests/api/test_pagination.py",
        "tests/api/test_paginate.py",
        "tests/api/test_pagination_mutants.py",
    ],
    "exporter/backup/checkpoint.py": [
        "tests/backup/test_checkpoint.py",
        "tests/backup/test_checkpoint_mutants.py",
        "tests/export/test_plan.py",
        "tests/export/test_restart.py",
        "tests/export/test_resume.py",
        "tests/export/test_incremental.py",
    ],
    "exporter/backup/sink.py": [
        "tests/backup/test_sink_mutants.py",
        "tests/backup/test_reader.py",
        "tests/backup/test_detail.py",
        "tests/export/test_export.py",
        "tests/export/test_resources.py",
    ],
    "exporter/backup/storage.py": [
        "tests/backup/test_storage_mutants.py",
        "tests/backup/test_sink_mutants.py",
        "tests/backup/test_storage_locations.py",
        "tests/backup/test_checkpoint.py",
        "tests/backup/test_detail.py",
        "tests/backup/test_reader.py",
        "tests/backup/test_lock.py",
        "tests/backup/test_s3_faults.py",
        "tests/backup/test_storage_s3_mutants.py",
    ],
    "exporter/core/secrets.py": [
        "tests/core/test_secrets_mutants.py",
        "tests/core/test_errors.py",
        "tests/api/test_secrets.py",
        "tests/api/test_account.py",
    ],
    "exporter/core/errors.py": [
        "tests/core/test_errors.py",
        "tests/core/test_secrets_mutants.py",
        "tests/api/test_secrets.py",
        "tests/api/test_transport.py",
        "tests/api/test_hostile.py",
    ],
    "exporter/api/auth.py": [
        "tests/api/test_oauth_mutants.py",
        "tests/api/test_auth_mutants.py",
        "tests/api/test_token_store.py",
        "tests/api/test_secrets.py",
        "tests/api/test_account.py",
        "tests/api/test_oauth.py",
    ],
    "exporter/export/deletes.py": [
        "tests/export/test_deletes_mutants.py",
        "tests/export/test_incremental.py",
    ],
    "exporter/restore/journal.py": [
        "tests/restore/test_journal_mutants.py",
        "tests/restore/test_restore_safety.py",
        "tests/restore/test_restore.py",
        "tests/restore/test_restore_followups.py",
    ],
    "exporter/restore/restore.py": [
        "tests/restore/test_restore_mutants.py",
        "tests/restore/test_restore_safety.py",
        "tests/restore/test_restore.py",
        "tests/restore/test_restore_followups.py",
    ],
    "exporter/audit/verify.py": [
        "tests/audit/test_verify_mutants.py",
        "tests/audit/test_verify.py",
        "tests/audit/test_verify_surface.py",
        "tests/audit/test_status.py",
        "tests/backup/test_s3_faults.py",
    ],
}

# module -> covering files whose slow tests run too: the fast ones do not reach the S3 paths,
# the token endpoint's faults or a tombstone, and these files do in tens of seconds.
SLOW_OK: dict[str, list[str]] = {
    "exporter/backup/checkpoint.py": ["tests/backup/test_checkpoint_mutants.py"],
    "exporter/backup/sink.py": ["tests/backup/test_sink_mutants.py"],
    "exporter/backup/storage.py": [
        "tests/backup/test_sink_mutants.py",
        "tests/backup/test_lock.py",
        "tests/backup/test_s3_faults.py",
        "tests/backup/test_storage_s3_mutants.py",
    ],
    "exporter/api/auth.py": ["tests/api/test_oauth_mutants.py", "tests/api/test_auth_mutants.py"],
    "exporter/export/deletes.py": ["tests/export/test_deletes_mutants.py"],
    # The digest, size and row checks of a tampered file are test_verify.py's slow tests.
    "exporter/audit/verify.py": [
        "tests/audit/test_verify.py",
        "tests/audit/test_verify_mutants.py",
        "tests/backup/test_s3_faults.py",  # a store that fails: "cannot be read"
    ],
    "exporter/restore/restore.py": [
        "tests/restore/test_restore_mutants.py",
        "tests/restore/test_restore.py",
    ],
}


FLIPPED_COMPARE: dict[type[ast.cmpop], type[ast.cmpop]] = {
    ast.Eq: ast.NotEq,
    ast.NotEq: ast.Eq,
    ast.Lt: ast.LtE,
    ast.LtE: ast.Lt,
    ast.Gt: ast.GtE,
    ast.GtE: ast.Gt,
    ast.In: ast.NotIn,
    ast.NotIn: ast.In,
    ast.Is: ast.IsNot,
    ast.IsNot: ast.Is,
}


@dataclass(frozen=True)
class Mutant:
    index: int  # the n-th mutable point of the module, in walk order
    line: int
    kind: str


def _skipped(tree: ast.Module) -> set[int]:
    """Nodes never mutated: docstrings, annotations, f-string pieces, `__all__`."""
    skip: set[int] = set()

    def mark(node: ast.AST | None) -> None:
        if node is not None:
            skip.update(id(n) for n in ast.walk(node))

    for node in ast.walk(tree):
        body = getattr(node, "body", None)
        first = body[0] if isinstance(body, list) and body else None
        if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant):
            mark(first)
        if isinstance(node, ast.arg | ast.AnnAssign):
            mark(node.annotation)
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            mark(node.returns)
        if isinstance(node, ast.JoinedStr):
            mark(node)
        if isinstance(node, ast.Assign) and any(
            isinstance(t, ast.Name) and t.id == "__all__" for t in node.targets
        ):
            mark(node)
    return skip


def _points(tree: ast.Module) -> Iterator[tuple[ast.AST, str]]:
    skip = _skipped(tree)
    for node in ast.walk(tree):
        if id(node) in skip:
            continue
        if isinstance(node, ast.Compare) and type(node.ops[0]) in FLIPPED_COMPARE:
            yield node, f"{type(node.ops[0]).__name__} flipped"
        elif isinstance(node, ast.BoolOp):
            yield node, "and/or swapped"
        elif isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.Not):
            yield node, "not dropped"
        elif isinstance(node, ast.BinOp) and isinstance(node.op, ast.Add | ast.Sub):
            yield node, "+/- swapped"
        elif isinstance(node, ast.Constant) and isinstance(node.value, bool):
            yield node, "True/False swapped"
        elif (
            isinstance(node, ast.Constant)
            and type(node.value) is int
            and not isinstance(node.value, bool)
        ):
            yield node, "constant + 1"
        elif isinstance(node, ast.Expr) and isinstance(node.value, ast.Call | ast.Await):
            yield node, "call deleted"


def _mutate(node: ast.AST, kind: str) -> ast.AST:
    if isinstance(node, ast.Compare):
        node.ops[0] = FLIPPED_COMPARE[type(node.ops[0])]()
    elif isinstance(node, ast.BoolOp):
        node.op = ast.Or() if isinstance(node.op, ast.And) else ast.And()
    elif isinstance(node, ast.UnaryOp):
        return node.operand
    elif isinstance(node, ast.BinOp):
        node.op = ast.Sub() if isinstance(node.op, ast.Add) else ast.Add()
    elif isinstance(node, ast.Constant) and isinstance(node.value, bool):
        node.value = not node.value
    elif isinstance(node, ast.Constant) and isinstance(node.value, int):
        node.value = node.value + 1
    elif isinstance(node, ast.Expr):
        return ast.Pass()
    return node


def mutants(source: str) -> list[Mutant]:
    tree = ast.parse(source)
    return [Mutant(i, getattr(n, "lineno", 0), k) for i, (n, k) in enumerate(_points(tree))]


def mutated_source(source: str, mutant: Mutant) -> str:
    tree = ast.parse(source)
    target = next(n for i, (n, _k) in enumerate(_points(tree)) if i == mutant.index)
    replacement = _mutate(target, mutant.kind)
    if replacement is not target:
        for parent in ast.walk(tree):
            for field, value in ast.iter_fields(parent):
                if value is target:
                    setattr(parent, field, replacement)
                elif isinstance(value, list) and any(v is target for v in value):
                    value[[id(v) for v in value].index(id(target))] = replacement
    return ast.unparse(ast.fix_missing_locations(tree))


# A pytest plugin written into the private copy: (1) it records, per test, the lines of the
# mutated module that test executes, so that each mutant first runs only the tests that reach its
# line (most mutants die in the first of them); (2) it drops slow tests except in the files
# named in MUTATION_SLOW_FILES, so a module may lean on a slow end-to-end file where the fast
# ones cannot reach a line, and still pay for one pytest start per run.
TRACE_PLUGIN = """
import json, os, sys, threading

TARGET = os.environ.get("MUTATION_TRACE_TARGET")
SLOW_FILES = set(filter(None, os.environ.get("MUTATION_SLOW_FILES", "").split(",")))
LINES = {}
current = ["<outside a test>"]


def _local(frame, event, arg):
    if event == "line":
        LINES.setdefault(current[0], set()).add(frame.f_lineno)
    return _local


def _global(frame, event, arg):
    if frame.f_code.co_filename == TARGET:
        LINES.setdefault(current[0], set()).add(frame.f_lineno)
        return _local
    return None


if TARGET:
    sys.settrace(_global)
    threading.settrace(_global)


def pytest_collection_modifyitems(config, items):
    kept = [i for i in items if i.get_closest_marker("slow") is None
            or i.nodeid.split("::")[0] in SLOW_FILES]
    dropped = [i for i in items if i not in kept]
    if dropped:
        config.hook.pytest_deselected(items=dropped)
        items[:] = kept


def pytest_runtest_setup(item):
    current[0] = item.nodeid
    if TARGET:
        sys.settrace(_global)  # a test or fixture may have replaced it


def pytest_runtest_teardown(item, nextitem):
    if TARGET:
        sys.settrace(_global)


def pytest_unconfigure(config):
    if TARGET:
        sys.settrace(None)
        out = os.environ["MUTATION_TRACE_OUT"]
        with open(out, "w") as f:
            json.dump({k: sorted(v) for k, v in LINES.items()}, f)
"""


@dataclass
class Verdict:
    line: int
    kind: str
    text: str  # the original line, stripped: how a survivor is found again after edits
    outcome: str  # killed | survived | timeout
    seconds: float
    index: int = -1  # the mutant's number in the module (as `--list` counts them)


def run_tests(
    copy_root: Path, tests: list[str], timeout: float, slow_files: list[str], trace: str = ""
) -> tuple[str, float]:
    """('passed' | 'failed' | 'timeout', seconds) of `tests` against the copy of `exporter/`.

    `-x` stops at the first failing test, `-p no:randomly` keeps the order (the tests most
    likely to kill run first), `-n 0` keeps to one process on this shared machine."""
    env = {**os.environ, "PYTHONPATH": str(copy_root), "PYTHONDONTWRITEBYTECODE": "1"}
    env["MUTATION_SLOW_FILES"] = ",".join(slow_files)
    if trace:
        env["MUTATION_TRACE_TARGET"], env["MUTATION_TRACE_OUT"] = trace.split("|")
    command = [
        sys.executable, "-m", "pytest", "-q", "-x", "-n", "0", "-p", "no:cacheprovider",
        "-p", "no:randomly", "-p", "mutation_trace_plugin", "--no-header", *tests,
    ]  # fmt: skip
    started = time.monotonic()
    try:
        done = subprocess.run(
            command, cwd=copy_root, env=env, capture_output=True, timeout=timeout, check=False
        )
    except subprocess.TimeoutExpired:
        return "timeout", time.monotonic() - started
    # 0 passed, 5 nothing collected (the mutant survives); 1 a test failed, 2 collection broke
    # (the mutant cannot be imported), 3 pytest itself failed: killed. 4 is a usage error here.
    if done.returncode == 4:
        raise SystemExit(done.stdout.decode(errors="replace")[-2000:])
    return ("passed" if done.returncode in (0, 5) else "failed"), time.monotonic() - started


def _record_path(module: str, lines: tuple[int, int] | None) -> Path:
    name = module.replace("/", "_") + (f"-{lines[0]}-{lines[1]}" if lines else "")
    return Path(tempfile.gettempdir()) / "mutation" / (name + ".json")


def _select(module: str, source: str, lines: tuple[int, int] | None, recheck: bool) -> list[Mutant]:
    chosen = [m for m in mutants(source) if lines is None or lines[0] <= m.line <= lines[1]]
    if not recheck:
        return chosen
    record = json.loads(_record_path(module, lines).read_text())
    survivors = [v for v in record if v["outcome"] == "survived"]
    source_lines = source.splitlines()

    def found_again(m: Mutant, v: dict[str, object]) -> bool:
        same = (source_lines[m.line - 1].strip(), m.kind) == (v["text"], v["kind"])
        # The same mutant when the module is unchanged; after an edit, the same line text.
        return same and v.get("index", m.index) in (m.index, -1)

    return [m for m in chosen if any(found_again(m, v) for v in survivors)]


def campaign(
    module: str, lines: tuple[int, int] | None, limit: int | None, recheck: bool
) -> list[Verdict]:
    tests = [t for t in COVERING[module] if (ROOT / t).exists()]
    slow_files = SLOW_OK.get(module, [])
    source = (ROOT / module).read_text()
    source_lines = source.splitlines()
    chosen = _select(module, source, lines, recheck)[:limit]
    verdicts: list[Verdict] = []
    with tempfile.TemporaryDirectory(prefix="mutation-") as scratch:
        copy_root = Path(scratch)
        for tree in ("exporter", "tests"):
            shutil.copytree(ROOT / tree, copy_root / tree)
        shutil.copy(ROOT / "pyproject.toml", copy_root / "pyproject.toml")
        (copy_root / "mutation_trace_plugin.py").write_text(TRACE_PLUGIN)
        target = copy_root / module
        trace_out = copy_root / "trace.json"
        outcome, baseline = run_tests(
            copy_root, tests, 1800, slow_files, trace=f"{target}|{trace_out}"
        )
        if outcome != "passed":
            raise SystemExit(f"{module}: its tests fail without any mutant; fix that first")
        reached: dict[str, list[int]] = json.loads(trace_out.read_text())
        print(f"{module}: {len(chosen)} mutants, tests {baseline:.1f} s (traced)", flush=True)
        for mutant in chosen:
            target.write_text(mutated_source(source, mutant))
            # Only the tests that execute the mutant's line: a test that never runs it cannot
            # tell the mutant apart (bar a subprocess, which the tracer does not see: such a
            # kill is missed, so the score errs low). A line no test runs in this process (a
            # class body run at import, a line reached only in a subprocess) gets the whole
            # selection.
            near = [t for t, hit in reached.items() if "::" in t and mutant.line in hit]
            # A parametrized test by its function (all its cases): hundreds of case ids,
            # some long, overflow a command line.
            near = list(dict.fromkeys(t.split("[", 1)[0] for t in near))
            outcome, seconds = run_tests(copy_root, near or tests, baseline * 3 + 30, slow_files)
            text = source_lines[mutant.line - 1].strip() if mutant.line else ""
            verdict = {"passed": "survived", "failed": "killed"}.get(outcome, outcome)
            verdicts.append(
                Verdict(mutant.line, mutant.kind, text, verdict, round(seconds, 1), mutant.index)
            )
            if verdict == "survived":
                print(f"SURVIVED {module}:{mutant.line} {mutant.kind}: {text}", flush=True)
        target.write_text(source)
    if not recheck and limit is None:
        record = _record_path(module, lines)
        record.parent.mkdir(exist_ok=True)
        record.write_text(json.dumps([asdict(v) for v in verdicts], indent=1))
    killed = sum(v.outcome != "survived" for v in verdicts)
    print(
        f"SCORE {module}: {killed}/{len(verdicts)} killed"
        f" ({100 * killed / max(len(verdicts), 1):.0f}%), tests {baseline:.1f} s a run",
        flush=True,
    )
    return verdicts


def summary(results: dict[str, list[Verdict]]) -> str:
    """The campaign as markdown: one row per module, then its survivors."""
    out = ["| module | mutants | killed | score |", "|---|---|---|---|"]
    for module, verdicts in results.items():
        killed = sum(v.outcome != "survived" for v in verdicts)
        score = 100 * killed / max(len(verdicts), 1)
        out.append(f"| {module} | {len(verdicts)} | {killed} | {score:.0f}% |")
    for module, verdicts in results.items():
        for v in verdicts:
            if v.outcome == "survived":
                out.append(f"- `{module}:{v.line}` {v.kind}: `{v.text}`")
    return "\n".join(out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("modules", nargs="*", help="modules to mutate (paths under exporter/)")
    parser.add_argument("--all", action="store_true", help="every module in COVERING")
    parser.add_argument("--lines", help="only mutants on lines A-B")
    parser.add_argument("--limit", type=int, help="at most N mutants per module")
    parser.add_argument("--list", action="store_true", help="list the mutants, run nothing")
    parser.add_argument(
        "--survivors",
        action="store_true",
        help="re-run only the survivors of the module's last full campaign (after new tests)",
    )
    args = parser.parse_args()
    modules = list(COVERING) if args.all else args.modules
    unknown = [m for m in modules if m not in COVERING]
    if not modules or unknown:
        parser.error(f"name modules from: {', '.join(COVERING)}")
    lines: tuple[int, int] | None = None
    if args.lines:
        first, last = args.lines.split("-")
        lines = (int(first), int(last))
    results: dict[str, list[Verdict]] = {}
    for module in modules:
        if args.list:
            for m in mutants((ROOT / module).read_text()):
                print(f"{module}:{m.line} {m.kind}")
            continue
        results[module] = campaign(module, lines, args.limit, args.survivors)
    if results:
        print(summary(results))


if __name__ == "__main__":
    main()
