"""Kill soak: the SIGKILL-and-resume test with hundreds of kill points instead of CI's 20.

Usage: python scripts/kill_soak.py --points 300

Each trial runs a real `exporter export` subprocess against a simulator on loopback, kills it with
SIGKILL one to three times at random instants, runs it again until it finishes, and compares every
dataset with the simulator's ground truth and the manifest with the files.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import pytest


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--points", type=int, default=300, help="SIGKILLs to deliver in all")
    args = parser.parse_args()
    os.environ["RESUME_KILL_POINTS"] = str(args.points)
    root = Path(__file__).resolve().parent.parent
    os.chdir(root)  # as `python3 -m pytest` from the repository: `tests` is importable
    sys.path.insert(0, str(root))
    started = time.perf_counter()
    code = pytest.main(
        [
            str(root / "tests" / "export" / "test_resume.py")
            + "::test_sigkill_at_random_instants_then_resume_is_exact",
            "-q",
            "-o",
            "timeout=0",
        ]
    )
    print(f"{args.points} kill points, {time.perf_counter() - started:.0f}s, exit {int(code)}")
    return int(code)


if __name__ == "__main__":
    sys.exit(main())
