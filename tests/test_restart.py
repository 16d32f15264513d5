"""Durability: requests stored before a SIGKILL are served after the restart."""

from __future__ import annotations

import signal
from pathlib import Path

import pytest

from falrt.client import InProgress, Queued, SyncClient
from tests.fifo import make_gate, release
from tests.harness import ServerProcess, wait_for

pytestmark = pytest.mark.e2e

SLOW_START_APP = '''
import msgspec
import falrt

class Input(msgspec.Struct):
    n: int

class Output(msgspec.Struct):
    n: int

class SlowStart(falrt.App):
    app_name = "slow-start"
    max_multiplexing = 4

    def setup(self) -> None:
        with open({gate!r}, "rb") as gate:  # held until the test lets setup finish
            gate.read(1)

    @falrt.endpoint("/")
    def double(self, request: Input) -> Output:
        return Output(n=request.n * 2)
'''


def test_queued_requests_survive_a_sigkill_of_the_server(tmp_path: Path) -> None:
    gate = make_gate(tmp_path / "setup-gate")
    app_file = tmp_path / "app" / "slow_start.py"
    app_file.parent.mkdir()
    app_file.write_text(SLOW_START_APP.format(gate=str(gate)))
    data_dir = tmp_path / "data"
    first = ServerProcess(data_dir, tmp_path / "first.log").start()
    try:
        endpoint = first.deploy(f"{app_file}::SlowStart")
        with SyncClient(first.address) as client:
            ids = [client.submit(endpoint, {"n": n}).request_id for n in range(3)]
            assert [client.status(i) for i in ids] == [Queued(position=p) for p in range(3)]
    finally:
        first.kill()
    second = ServerProcess(data_dir, tmp_path / "second.log").start()
    try:
        with SyncClient(second.address) as client:
            assert all(isinstance(client.status(i), Queued) for i in ids)
            release(gate)  # the new server's runner finishes setup
            outputs = [client.wait(i, timeout=60).output for i in ids]
        assert outputs == [{"n": 0}, {"n": 2}, {"n": 4}]
    finally:
        second.stop()


def test_sigterm_lets_in_flight_requests_finish_and_keeps_their_results(tmp_path: Path) -> None:
    gate = make_gate(tmp_path / "request-gate")
    data_dir = tmp_path / "data"
    first = ServerProcess(data_dir, tmp_path / "first.log").start()
    endpoint = first.deploy("tests/apps/gated.py::Gated")
    with SyncClient(first.address) as client:
        request_id = client.submit(endpoint, {"text": "late", "gate": str(gate)}).request_id
        wait_for(lambda: isinstance(client.status(request_id), InProgress), what="in progress")
        first.proc.send_signal(signal.SIGTERM)  # type: ignore[union-attr]
        release(gate)  # within the grace period: the runner drains, the result is kept
    assert first.proc.wait(timeout=60) == 0  # type: ignore[union-attr]
    second = ServerProcess(data_dir, tmp_path / "second.log").start()
    try:
        with SyncClient(second.address) as client:
            assert client.result(request_id)["text"] == "late"
    finally:
        second.stop()


def test_a_crash_uses_up_the_attempt_it_interrupted(tmp_path: Path) -> None:
    gate = make_gate(tmp_path / "request-gate")
    data_dir = tmp_path / "data"
    first = ServerProcess(data_dir, tmp_path / "first.log").start()
    endpoint = first.deploy("tests/apps/gated.py::Gated")
    try:
        with SyncClient(first.address) as client:
            once = client.submit(endpoint, {"text": "once", "gate": str(gate)},
                                 no_retry=True).request_id
            wait_for(lambda: isinstance(client.status(once), InProgress), what="in progress")
    finally:
        first.kill()
    second = ServerProcess(data_dir, tmp_path / "second.log").start()
    try:
        with SyncClient(second.address) as client:
            final = client.wait(once, timeout=30)
        # no_retry: the attempt the crash cut was its only one
        assert final.error is not None and final.error.error_type == "runner_disconnected"
        assert "the server stopped while attempt 1 ran" in final.error.message
    finally:
        second.stop()
