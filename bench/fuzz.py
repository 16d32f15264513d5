"""The property suite (tests/test_properties.py) run long: many cases per property.

    python bench/fuzz.py [--examples 5000] [--seed N] [--only unit|e2e] [-- PYTEST_ARGS...]

`make test` runs the same properties with the `ci` hypothesis profile (20 cases each, about
15 s). This runs them with the `fuzz` profile (tests/conftest.py): `--examples` cases per
property (per RPC, for the per-RPC property), no per-test timeout, statistics printed at the
end. A case that fails is printed with its `@reproduce_failure` blob and kept under
.hypothesis/ (git-ignored), and the next run replays it first. `--seed` makes a run
repeatable. The exit status is pytest's.

Time: 500 cases a property took 4 min on 2 cores (the bundle function 5 ms a case; an RPC
10 to 45 ms, with the checks after it; a Deploy 30 ms), so the default 5,000 take about
40 min.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def command(args: argparse.Namespace) -> list[str]:
    pytest = [sys.executable, "-m", "pytest", "tests/test_properties.py",
              "--hypothesis-profile", "fuzz", "--hypothesis-show-statistics",
              "-o", "timeout=0", "-p", "no:cacheprovider", "-q"]
    if args.seed is not None:
        pytest += ["--hypothesis-seed", str(args.seed)]
    if args.only:
        pytest += ["-m", args.only]
    return pytest + args.pytest_args


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--examples", type=int, default=5000,
                        help="cases per property (default 5000)")
    parser.add_argument("--seed", type=int, help="hypothesis's seed, for a repeatable run")
    parser.add_argument("--only", choices=["unit", "e2e"],
                        help="the bundle function only (unit) or the server only (e2e)")
    parser.add_argument("pytest_args", nargs="*", help="more pytest arguments, after --")
    args = parser.parse_args()
    env = {**os.environ, "FALRT_FUZZ_EXAMPLES": str(args.examples)}
    sys.exit(subprocess.call(command(args), cwd=REPO, env=env))


if __name__ == "__main__":
    main()
