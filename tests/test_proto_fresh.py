"""The committed generated code matches proto/: regenerate into a temp dir and compare."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tests.harness import REPO

pytestmark = pytest.mark.unit


def test_generated_code_is_fresh(tmp_path: Path) -> None:
    subprocess.run([sys.executable, str(REPO / "scripts" / "protogen.py"), "--out", str(tmp_path)],
                   check=True, capture_output=True)
    fresh = {p.name: p.read_bytes() for p in (tmp_path / "falrt" / "v1").iterdir() if p.is_file()}
    committed = {p.name: p.read_bytes() for p in (REPO / "falrt" / "v1").iterdir()
                 if p.is_file()}
    stale = sorted(name for name in fresh.keys() | committed.keys()
                   if fresh.get(name) != committed.get(name))
    assert not stale, f"falrt/v1 is stale ({stale}): run `make proto` and commit the result"
