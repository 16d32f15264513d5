"""Crash test: SIGKILL the server twice and a runner once while 500 requests flow in.

Every request the server acknowledged must complete exactly once with the right output:
none lost, none completed twice. Clients resubmit with their idempotency key until they
get an answer, so a Submit whose answer was lost in a crash is not stored twice. Handler
executions are counted too: a request runs again only when the attempt it was in was cut
by a crash (fal's at-least-once retry), never once it has completed.
"""

from __future__ import annotations

import json
import os
import signal
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from tests.harness import ServerProcess, wait_for
from tests.submitter import Submitter

pytestmark = pytest.mark.e2e

TOTAL = 500
WORKERS = 32
SLOTS = 16  # runners (max_concurrency 2) x max_multiplexing 8: attempts a crash can cut


def live_runner(marks: Path, server_pid: int) -> int | None:
    """The pid of a runner of the server `server_pid` that has left a side effect."""
    for pid in {int(mark.name.split(".")[1]) for mark in marks.iterdir()}:
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
        except OSError:
            continue
        if int(stat.rpartition(")")[2].split()[1]) == server_pid:  # its parent
            return pid
    return None


def test_crashes_lose_nothing_and_complete_nothing_twice(tmp_path: Path) -> None:
    marks = tmp_path / "marks"
    marks.mkdir()
    listen = "127.0.0.1:0"  # the first server's port; its restarts take the port it got

    def server(name: str) -> ServerProcess:
        return ServerProcess(tmp_path / "data", tmp_path / f"{name}.log", listen=listen,
                             extra=["--retry-backoff", "0.05"]).start()

    live = server("first")
    listen = live.address
    endpoint = live.deploy("tests/apps/ledger.py::Ledger")
    submitter = Submitter(listen, endpoint, marks)
    with ThreadPoolExecutor(WORKERS) as pool:
        futures = [pool.submit(submitter.submit, n) for n in range(TOTAL)]
        submitter.wait_acked(120)
        live.kill()
        live = server("second")
        submitter.wait_acked(250)
        assert live.proc is not None
        server_pid = live.proc.pid
        runner = wait_for(lambda: live_runner(marks, server_pid), what="a runner of the server")
        os.kill(runner, signal.SIGKILL)
        submitter.wait_acked(350)
        live.kill()
        live = server("third")
        for future in futures:
            future.result()
    try:
        assert sorted(submitter.acked) == [f"k{n:03d}" for n in range(TOTAL)]
        assert len(set(submitter.acked.values())) == TOTAL  # one request per key
        with ThreadPoolExecutor(WORKERS) as pool:
            states = dict(zip(submitter.acked, pool.map(submitter.result,
                                                        submitter.acked.values()),
                              strict=True))
        for key, state in states.items():
            assert not state.HasField("error"), (key, state.error)
            assert json.loads(state.output.data) == {"key": key, "double": int(key[1:]) * 2}
        runs: dict[str, int] = {}
        for mark in marks.iterdir():
            key = mark.name.split(".")[0]
            runs[key] = runs.get(key, 0) + 1
        assert set(runs) == set(submitter.acked)  # every request ran
        extra = sum(runs.values()) - TOTAL
        assert extra <= 3 * SLOTS, f"{extra} repeated executions for 3 crashes"
        states_again = {k: submitter.result(r) for k, r in list(submitter.acked.items())[:50]}
        assert all(states_again[k].output.data == states[k].output.data for k in states_again)
    finally:
        submitter.channel.close()
        live.stop()
