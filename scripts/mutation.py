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

    python3 scripts/mutation.py exporter/api/pagination.py [--lines 100-200] [--limit N]
    python3 scripts/mutation.py --all      # every module in COVERING

Prints each survivor (line and the mutated line) and a score line per module.
"""

from __future__ import annotations

import argparse
import ast
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

# module -> the tests that cover it (fast ones; the slow files named are the ones that hold
# the module's only end-to-end checks).
COVERING: dict[str, list[str]] = {
    "exporter/api/pagination.py": [
        "tests/api/test_pagination.py",
        "tests/api/test_paginate.py",
        "tests/api/test_pagination_mutants.py",
    ],
    "exporter/backup/checkpoint.py": [
        "tests/backup/test_checkpoint.py",
        "tests/export/test_plan.py",
    ],
    "exporter/backup/sink.py": [
        "tests/backup/test_sink_mutants.py",
        "tests/backup/test_reader.py",
    ],
    "exporter/backup/storage.py": [
        "tests/backup/test_sink_mutants.py",
        "tests/backup/test_storage_locations.py",
        "tests/backup/test_checkpoint.py",
    ],
    "exporter/core/errors.py": ["tests/core/test_errors.py", "tests/api/test_secrets.py"],
    "exporter/api/auth.py": [
        "tests/api/test_oauth_mutants.py",
        "tests/api/test_token_store.py",
        "tests/api/test_secrets.py",
    ],
    "exporter/export/deletes.py": ["tests/export/test_deletes_mutants.py"],
    "exporter/restore/journal.py": ["tests/restore/test_restore_safety.py"],
    "exporter/audit/verify.py": ["tests/audit/test_verify.py"],
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


def run_tests(copy_root: Path, tests: list[str], timeout: float) -> tuple[bool, float]:
    """(passed, seconds) of the covering tests against the copy of `exporter/`."""
    env = {**os.environ, "PYTHONPATH": str(copy_root)}
    env["PYTHONDONTWRITEBYTECODE"] = "1"
    command = [
        sys.executable, "-m", "pytest", "-q", "-x", "-n", "0", "-p", "no:cacheprovider",
        "-p", "no:randomly", "--no-header", "-m", "not slow or mutation", *tests,
    ]  # fmt: skip
    started = time.monotonic()
    try:
        done = subprocess.run(
            command, cwd=copy_root, env=env, capture_output=True, timeout=timeout, check=False
        )
    except subprocess.TimeoutExpired:
        return False, time.monotonic() - started
    return done.returncode == 0, time.monotonic() - started


def campaign(module: str, lines: tuple[int, int] | None, limit: int | None) -> tuple[int, int]:
    tests = COVERING[module]
    source = (ROOT / module).read_text()
    chosen = [m for m in mutants(source) if lines is None or lines[0] <= m.line <= lines[1]][:limit]
    with tempfile.TemporaryDirectory(prefix="mutation-") as scratch:
        copy_root = Path(scratch)
        for tree in ("exporter", "tests"):
            shutil.copytree(ROOT / tree, copy_root / tree)
        shutil.copy(ROOT / "pyproject.toml", copy_root / "pyproject.toml")
        target = copy_root / module
        passed, baseline = run_tests(copy_root, tests, timeout=900)
        if not passed:
            raise SystemExit(f"{module}: its tests fail without any mutant; fix that first")
        killed = 0
        source_lines = source.splitlines()
        for mutant in chosen:
            target.write_text(mutated_source(source, mutant))
            survived, _ = run_tests(copy_root, tests, timeout=baseline * 3 + 20)
            if survived:
                shown = source_lines[mutant.line - 1].strip() if mutant.line else ""
                print(f"SURVIVED {module}:{mutant.line} {mutant.kind}: {shown}", flush=True)
            else:
                killed += 1
        target.write_text(source)
    print(
        f"SCORE {module}: {killed}/{len(chosen)} killed"
        f" ({100 * killed / max(len(chosen), 1):.0f}%), tests {baseline:.1f} s a run",
        flush=True,
    )
    return killed, len(chosen)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("modules", nargs="*", help="modules to mutate (paths under exporter/)")
    parser.add_argument("--all", action="store_true", help="every module in COVERING")
    parser.add_argument("--lines", help="only mutants on lines A-B")
    parser.add_argument("--limit", type=int, help="at most N mutants per module")
    parser.add_argument("--list", action="store_true", help="list the mutants, run nothing")
    args = parser.parse_args()
    modules = list(COVERING) if args.all else args.modules
    unknown = [m for m in modules if m not in COVERING]
    if not modules or unknown:
        parser.error(f"name modules from: {', '.join(COVERING)}")
    lines = tuple(int(x) for x in args.lines.split("-")) if args.lines else None
    for module in modules:
        if args.list:
            for m in mutants((ROOT / module).read_text()):
                print(f"{module}:{m.line} {m.kind}")
            continue
        campaign(module, lines, args.limit)  # type: ignore[arg-type]


if __name__ == "__main__":
    main()
