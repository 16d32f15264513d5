"""Thread settings made in setup() hold in the threads that run sync handlers
(shim/threads.py): torch's thread count, set to 1 in setup() as examples/mlp.py does, is
the count the handler's products run with, on a real runner with torch installed into the
app's environment."""

from __future__ import annotations

import asyncio
import json
import subprocess
from pathlib import Path
from typing import Any

import pytest

from falrt.client import AsyncClient
from tests.harness import ServerProcess

# Installing torch into the app's environment takes most of a minute, more on a busy machine.
pytestmark = [pytest.mark.e2e, pytest.mark.timeout(300)]


def test_torch_threads_set_in_setup_hold_in_every_handler_thread(server: ServerProcess) -> None:
    endpoint = server.deploy("tests/apps/threadset.py::ThreadSet")

    async def calls() -> list[Any]:
        async with AsyncClient(server.address) as client:
            # Two calls at a time: both threads of the pool (max_multiplexing 2) compute.
            reports = []
            for _ in range(3):
                reports += await asyncio.gather(client.subscribe(endpoint, {}),
                                                client.run(endpoint, {}))
            return reports

    reports = asyncio.run(calls())
    # Without the setting torch would use more than one thread here (else this test could
    # not tell): the machine has at least two cores.
    assert all(report["default_threads"] >= 2 for report in reports), reports
    assert [(report["setting"], report["helpers"]) for report in reports] == [(1, 0)] * 6


def test_falrt_testing_appclient_carries_them_too(server: ServerProcess) -> None:
    """falrt.testing.AppClient runs the app in the caller's process; its handler threads
    start with setup()'s settings as a runner's do. Run in the app's own environment (the
    one with torch in it that the server built), as a user's test would run in theirs."""
    server.deploy("tests/apps/threadset.py::ThreadSet")
    python = next((server.data_dir / "venvs").glob("*/bin/python"))
    script = (
        "import json\n"
        "from falrt.testing import AppClient\n"
        "from tests.apps.threadset import ThreadSet\n"
        "with AppClient(ThreadSet, threads=2) as app:\n"
        "    print(json.dumps([app.call('/', {}) for _ in range(2)]))\n")
    done = subprocess.run([str(python), "-c", script], capture_output=True, text=True,
                          timeout=120, cwd=Path(__file__).parent.parent, check=True)
    reports = json.loads(done.stdout.splitlines()[-1])
    assert reports[0]["default_threads"] >= 2, reports  # else this test could not tell
    assert [(report["setting"], report["helpers"]) for report in reports] == [(1, 0)] * 2
