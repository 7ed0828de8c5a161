"""Arrow's memory pool for a command's process: one that gives freed memory back to the system.

pyarrow's default pool is mimalloc, which keeps what is freed in per-thread heaps for reuse.
An export reads pages and encodes row groups in worker threads, so it kept each thread's
high-water mark: peak memory grew with the length of the run (181 MiB at 100,000 steps, 219 MiB
at 1,000,000). jemalloc, which gives freed pages back after `DECAY_MS`, peaks at 175 and 195.

Two settings are needed, because Arrow has two defaults:
- `choose_arrow_pool`, before pyarrow loads: Arrow's C++ default pool, read once from the
  `ARROW_DEFAULT_MEMORY_POOL` environment variable. Parquet's encoders and the JSON reader's
  workers allocate from it whatever pool Python names, so only the variable reaches them.
- `use_returning_memory_pool`, once pyarrow is loaded: the pool pyarrow's Python calls use,
  and jemalloc's decay.

A pool the user names in `ARROW_DEFAULT_MEMORY_POOL` is kept as it is.
"""

from __future__ import annotations

import functools
import importlib.util
import os
import sys
from pathlib import Path

ENVIRONMENT = "ARROW_DEFAULT_MEMORY_POOL"
# How long jemalloc keeps freed pages before it gives them back. 0 returned them at once but
# cost 20-25% of an export's CPU in madvise calls and page faults; 100 ms keeps nearly the same
# peaks (a million steps, 3 runs each: 187 MiB at 0, 195 at 100, 202 at 250, 211 at 1,000)
# for 13-24% less CPU than 0.
DECAY_MS = 100
_CHOSEN = "_EXPORTER_ARROW_POOL"  # set beside ENVIRONMENT when this module chose it


def choose_arrow_pool() -> str | None:
    """Name the pool Arrow's C++ code allocates from, before pyarrow is imported: jemalloc
    where this pyarrow was built with it, else the system allocator (always built; naming an
    absent backend would make Arrow print a warning). Returns the backend named; None when
    pyarrow is already loaded (too late) or the user named one."""
    if "pyarrow" in sys.modules or ENVIRONMENT in os.environ:
        return None
    backend = "jemalloc" if built_with_jemalloc() else "system"
    os.environ[ENVIRONMENT] = backend
    os.environ[_CHOSEN] = backend
    return backend


def built_with_jemalloc(package: Path | None = None) -> bool:
    """Whether the installed pyarrow has jemalloc, read from the build configuration its wheel
    ships (`include/arrow/util/config.h`) without importing it; False when that file is absent
    (a build that keeps its headers elsewhere gets the system allocator, which is always there)."""
    if package is None:
        spec = importlib.util.find_spec("pyarrow")
        if spec is None or spec.origin is None:
            return False
        package = Path(spec.origin).parent
    try:
        config = (package / "include" / "arrow" / "util" / "config.h").read_text(errors="replace")
    except OSError:
        return False
    return any(line.split() == ["#define", "ARROW_JEMALLOC"] for line in config.splitlines())


@functools.cache
def use_returning_memory_pool() -> None:
    """Make pyarrow's Python calls allocate from jemalloc, freed pages going back after
    `DECAY_MS` (the setting is jemalloc's, so Arrow's C++ default pool has it too), or the system allocator where there is no jemalloc. A pool the user named
    in `ARROW_DEFAULT_MEMORY_POOL` is left in place. Buffers already allocated stay with the
    pool that made them, so switching mid-process is safe."""
    import pyarrow as pa

    named = os.environ.get(ENVIRONMENT)
    if named is not None and os.environ.get(_CHOSEN) != named:
        return  # the user's choice
    try:
        pool = pa.jemalloc_memory_pool()
        pa.jemalloc_set_decay_ms(DECAY_MS)
    except NotImplementedError:
        pool = pa.system_memory_pool()
    pa.set_memory_pool(pool)
