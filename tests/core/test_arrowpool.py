"""Arrow's memory pool: every command's process names one that returns freed memory, before pyarrow loads, and keeps the user's."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from exporter.core.arrowpool import _CHOSEN, ENVIRONMENT, built_with_jemalloc

# Run in a fresh interpreter: Arrow reads its pool from the environment once, when it loads,
# and this test process loaded it long ago.
PROBE = textwrap.dedent(
    """
    import json, os, sys
    from exporter.commands.main import main
    loaded_before = "pyarrow" in sys.modules
    try:
        main(["status", "--help"])
    except SystemExit:
        pass
    named = os.environ.get("ARROW_DEFAULT_MEMORY_POOL")
    import pyarrow as pa
    cpp_default = pa.default_memory_pool().backend_name
    from exporter.core.arrowpool import use_returning_memory_pool
    use_returning_memory_pool()
    python_default = pa.default_memory_pool().backend_name
    print(json.dumps({"loaded_before": loaded_before, "named": named,
                      "cpp_default": cpp_default, "python_default": python_default}))
    """
)


def probe(environment: dict[str, str]) -> dict[str, object]:
    env = {k: v for k, v in os.environ.items() if k not in (ENVIRONMENT, _CHOSEN)}
    env.update(environment)
    result = subprocess.run(
        [sys.executable, "-c", PROBE], env=env, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
    assert "Unsupported backend" not in result.stderr
    found: dict[str, object] = json.loads(result.stdout.strip().splitlines()[-1])
    return found


def expected_backend() -> str:
    return "jemalloc" if built_with_jemalloc() else "system"


def test_a_command_names_the_returning_pool_before_pyarrow_loads() -> None:
    """Bug caught: the pool chosen after pyarrow is imported (too late for Arrow's C++ default,
    which Parquet's encoders use: mimalloc kept each thread's high-water mark), or not at all."""
    found = probe({})
    assert found["loaded_before"] is False  # the command group does not import pyarrow
    assert found["named"] == expected_backend()
    assert found["cpp_default"] == expected_backend()
    assert found["python_default"] == expected_backend()


@pytest.mark.parametrize("backend", ["system", "mimalloc"])
def test_the_users_pool_is_kept(backend: str) -> None:
    """Bug caught: the user's `ARROW_DEFAULT_MEMORY_POOL` overwritten, in the environment or
    by `use_returning_memory_pool` switching pyarrow's pool behind it."""
    found = probe({ENVIRONMENT: backend})
    assert found["named"] == backend
    assert found["cpp_default"] == backend
    assert found["python_default"] == backend


def test_nothing_is_named_once_pyarrow_is_loaded() -> None:
    """Bug caught: the variable set in a process where it can no longer take effect (and then
    passed to every child process as if it had)."""
    code = textwrap.dedent(
        """
        import os, pyarrow
        from exporter.core.arrowpool import choose_arrow_pool
        print(choose_arrow_pool(), os.environ.get("ARROW_DEFAULT_MEMORY_POOL"))
        """
    )
    env = {k: v for k, v in os.environ.items() if k not in (ENVIRONMENT, _CHOSEN)}
    result = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["None", "None"]


def config_header(package: Path, text: str) -> Path:
    header = package / "include" / "arrow" / "util" / "config.h"
    header.parent.mkdir(parents=True)
    header.write_text(text)
    return package


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("#define ARROW_JEMALLOC\n#define ARROW_JEMALLOC_VENDORED\n", True),
        ("#define ARROW_MIMALLOC\n", False),
        ("#define ARROW_JEMALLOC_VENDORED\n", False),  # a longer name is another setting
        ("/* #define ARROW_JEMALLOC */\n", False),
        ("  #define   ARROW_JEMALLOC  \n", True),
    ],
)
def test_jemalloc_is_read_from_the_build_configuration(
    tmp_path: Path, text: str, expected: bool
) -> None:
    """Bug caught: jemalloc named for a build without it (Arrow then prints a warning to every
    command's stderr) or not named for a build with it."""
    assert built_with_jemalloc(config_header(tmp_path / "pyarrow", text)) is expected


def test_a_build_without_its_configuration_gets_the_system_allocator(tmp_path: Path) -> None:
    """Bug caught: an error (or jemalloc guessed) where the build keeps its headers elsewhere."""
    assert built_with_jemalloc(tmp_path / "pyarrow") is False
