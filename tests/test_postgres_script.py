"""scripts/postgres.sh: the tests' private PostgreSQL starts, is reused, and stops.

Tried on a second private instance (its own directory and port), never on the one the other
tests use.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.harness import REPO

pytestmark = [pytest.mark.e2e, pytest.mark.postgres]

SCRIPT = str(REPO / "scripts" / "postgres.sh")


@pytest.fixture
def instance() -> Iterator[dict[str, str]]:
    """The environment naming a private instance; it is stopped and removed afterwards."""
    # Under /tmp itself: the `postgres` user the script runs the server as (under root)
    # must reach the directory, which a pytest tmp_path (mode 0700 parents) does not allow.
    root = Path(tempfile.mkdtemp(prefix="falrt-pg-script-", dir="/tmp"))
    env = {**os.environ, "FALRT_PG_ROOT": str(root), "FALRT_PG_PORT": str(_free_port())}
    yield env
    subprocess.run([SCRIPT, "stop"], env=env, capture_output=True, timeout=60, check=False)
    shutil.rmtree(root, ignore_errors=True)


def test_stop_stops_the_server_that_start_started_and_start_reuses_it(
    instance: dict[str, str],
) -> None:
    port = int(instance["FALRT_PG_PORT"])
    started = _script(instance)
    assert started.stdout.strip() == f"postgresql://falrt@127.0.0.1:{port}/falrt"
    assert _answers(port)
    again = _script(instance, "start")
    assert again.stdout == started.stdout and "starting" not in again.stderr
    stopped = _script(instance, "stop")
    assert "stopped the test PostgreSQL" in stopped.stderr and stopped.stdout == ""
    assert not _answers(port)
    assert "no PostgreSQL runs" in _script(instance, "stop").stderr  # idempotent


def test_an_unknown_subcommand_is_a_usage_error() -> None:
    done = subprocess.run([SCRIPT, "restart"], capture_output=True, text=True, timeout=10)
    assert done.returncode == 2 and "usage:" in done.stderr


def _script(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    done = subprocess.run([SCRIPT, *args], env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    return done


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _answers(port: int) -> bool:
    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) == 0
