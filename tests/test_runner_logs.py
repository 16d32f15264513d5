"""Removing old runner logs: the rule docs/runners.md states."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from falrt.server.fleet.runner_logs import remove_old

pytestmark = pytest.mark.unit


def _log(folder: Path, runner_id: str, age_s: float) -> Path:
    path = folder / f"{runner_id}.log"
    path.write_text("a line\n")
    then = time.time() - age_s
    os.utime(path, (then, then))
    return path


def test_only_the_old_logs_of_ended_runners_are_removed(tmp_path: Path) -> None:
    old = _log(tmp_path, "r-000000000001", 100)
    running = _log(tmp_path, "r-000000000002", 100)
    recent = _log(tmp_path, "r-000000000003", 1)
    other = _log(tmp_path, "notes", 100)
    assert remove_old(tmp_path, 50, {"r-000000000002"}) == 1
    assert not old.exists()
    assert running.exists() and recent.exists() and other.exists()
