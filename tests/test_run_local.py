"""The quick start: `make run` (scripts/run_local.py) prints a call line that works."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.harness import REPO

pytestmark = pytest.mark.e2e


def test_make_run_prints_a_working_call_line_and_stops(tmp_path: Path) -> None:
    script = [sys.executable, "scripts/run_local.py", "--state-dir", str(tmp_path / "state")]
    # Port 0: the server binds a free port and the script prints the address it reports.
    started = subprocess.run([*script, "--listen", "127.0.0.1:0"], cwd=REPO,
                             capture_output=True, text=True, timeout=300)
    try:
        assert started.returncode == 0, started.stderr
        (call,) = [line.strip() for line in started.stdout.splitlines()
                   if " call " in line and "--sync" not in line]
        answered = subprocess.run(call, shell=True, cwd=REPO, capture_output=True, text=True,
                                  timeout=120)
        assert answered.returncode == 0, answered.stderr
        assert json.loads(answered.stdout) == {"greeting": "Hello, world!"}
        again = subprocess.run(script, cwd=REPO, capture_output=True, text=True, timeout=300)
        assert "reusing the running falrt server" in again.stdout
    finally:
        stopped = subprocess.run([*script, "--stop"], cwd=REPO, capture_output=True, text=True,
                                 timeout=60)
    assert stopped.returncode == 0 and "stopped the falrt server" in stopped.stdout
