"""The package layers only look down: every `exporter` import, at module level or inside a function, obeys docs/architecture.md."""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[2] / "exporter"

# Lower number, lower layer. A module may import its own package and any lower layer;
# restore, fleet and audit stand side by side and do not import one another.
LAYERS = {
    "core": 0,
    "api": 1,
    "model": 2,
    "backup": 3,
    "export": 4,
    "restore": 5,
    "fleet": 5,
    "audit": 5,
    "commands": 6,
}
# The simulator is a separate program that shares the model (and core's vocabulary) only.
SIMULATOR_MAY_IMPORT = {"core", "model", "simulator", "resources"}


def package_of(module: str) -> str | None:
    """`exporter.api.client` -> "api"; the top-level `exporter` package itself -> None."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 and parts[0] == "exporter" else None


def imports(path: Path) -> list[tuple[int, str]]:
    """Every `exporter...` module `path` imports, with the line, wherever the import stands."""
    tree = ast.parse(path.read_text(), str(path))
    found: list[tuple[int, str]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, a.name) for a in node.names if a.name.startswith("exporter")]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            if node.module == "exporter":  # `from exporter import x`: x is a package or __version__
                found += [(node.lineno, f"exporter.{a.name}") for a in node.names]
            elif node.module.startswith("exporter."):
                found.append((node.lineno, node.module))
        elif isinstance(node, ast.ImportFrom) and node.level > 0:
            found.append((node.lineno, f"<relative:{node.level}>{node.module or ''}"))
    return found


def violations() -> list[str]:
    problems: list[str] = []
    for path in sorted(PACKAGE.rglob("*.py")):
        relative = path.relative_to(PACKAGE)
        if len(relative.parts) == 1:
            continue  # exporter/__init__.py, __main__.py: the entry points
        own = relative.parts[0]
        for line, target in imports(path):
            where = f"exporter/{relative}:{line} imports {target}"
            if target.startswith("<relative:"):
                if own != "simulator":
                    problems.append(f"{where} (relative imports only inside the simulator)")
                continue
            other = package_of(target)
            if other in (None, "__version__", own):
                continue
            if own == "simulator":
                if other not in SIMULATOR_MAY_IMPORT:
                    problems.append(f"{where} (the simulator shares only core and model)")
                continue
            if other == "simulator":
                if own != "commands":
                    problems.append(f"{where} (only commands start a simulator)")
                continue
            if other == "resources":
                if own != "model":
                    problems.append(f"{where} (the reference files are the model's)")
                continue
            if other not in LAYERS or own not in LAYERS:
                problems.append(f"{where} (a package docs/architecture.md does not place)")
            elif LAYERS[other] >= LAYERS[own]:
                problems.append(f"{where} ({other} is not below {own})")
    return problems


def test_every_import_looks_down() -> None:
    assert violations() == []


def test_the_check_sees_an_upward_import(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The scan is not vacuous: an import of commands from backup, even inside a function, is caught."""
    fake = tmp_path / "exporter"
    for package in ("backup", "commands"):
        (fake / package).mkdir(parents=True)
        (fake / package / "__init__.py").write_text('"""x."""\n')
    (fake / "backup" / "bad.py").write_text(
        '"""x."""\n\ndef f() -> None:\n    from exporter.commands.main import main\n'
    )
    (fake / "backup" / "good.py").write_text(
        '"""x."""\nfrom exporter.core.errors import ExitCode\n'
    )
    monkeypatch.setattr(sys.modules[__name__], "PACKAGE", fake)
    found = violations()
    assert len(found) == 1 and "backup/bad.py:4 imports exporter.commands.main" in found[0], found


def test_every_package_is_placed() -> None:
    packages = {p.name for p in PACKAGE.iterdir() if (p / "__init__.py").is_file()}
    assert packages == set(LAYERS) | {"simulator", "resources"}
