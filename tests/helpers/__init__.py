"""What several test files share, by concern; fixtures stay in conftest.py, tests in test_*.py.

- `sim`: a simulator for a test (its token, `Running`, subprocesses in a clean environment)
  and the changes made to its data between runs;
- `simulator_http`: the simulator's own tests: a served simulator with an HTTP session;
- `truth`: expected rows computed from the simulator's ground truth;
- `runs`: exports run in this process or as `python -m exporter` subprocesses, killed or not;
- `checks`: assertions about a backup (exact, consistent, manifest, one error line);
- `commands`: the command line run in this process (click's CliRunner);
- `restore`: restores run in this process or as subprocesses, and their checks;
- `s3`, `s3_fault_proxy`: a moto S3 server on loopback, and a fault-injecting proxy before it;
- `tampering_proxy`: a proxy before the simulator that may replace its answers.
"""

import pkgutil

import pytest

# Their asserts explain a failure as a test's own do (most were in test files before).
pytest.register_assert_rewrite(*(f"{__name__}.{m.name}" for m in pkgutil.iter_modules(__path__)))
