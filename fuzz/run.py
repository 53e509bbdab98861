"""Long fuzzing runs of the hostile-input suite, beyond what CI affords.

CI runs ``tests/integration/test_fuzz.py`` (hypothesis, every socket event and
HTTP endpoint) and ``tests/integration/test_openapi.py`` (schemathesis against
``/v1/openapi.json``) with a few dozen examples per test. This runs the same
tests with many more::

    .venv/bin/python fuzz/run.py --examples 5000
    .venv/bin/python fuzz/run.py --examples 20000 -k socket_event

A failure prints the example that broke the server; fix the server, then keep
the example as a regular test in tests/integration/test_bad_input.py.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SUITES = [
    "tests/integration/test_fuzz.py",
    "tests/integration/test_openapi.py",
    "tests/integration/test_receive_fuzz.py",
]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--examples", type=int, default=2000, help="examples per test")
    parser.add_argument("-k", dest="select", default=None, help="pytest -k expression")
    args = parser.parse_args()
    env = {
        **os.environ,
        "BISIK_FUZZ_EXAMPLES": str(args.examples),
        "BISIK_SCHEMATHESIS_EXAMPLES": str(args.examples),
    }
    command = [sys.executable, "-m", "pytest", *SUITES, "-q", "-p", "no:cacheprovider"]
    if args.select:
        command += ["-k", args.select]
    # Long runs may take hours: lift the suite's per-test timeout.
    command += ["-o", "timeout=0"]
    print(" ".join(command), f"(BISIK_FUZZ_EXAMPLES={args.examples})", flush=True)
    return subprocess.call(command, env=env, cwd=ROOT)  # noqa: S603 (our own pytest)


if __name__ == "__main__":
    sys.exit(main())
