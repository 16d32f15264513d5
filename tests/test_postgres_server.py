"""A real `falrt server --store postgresql://...`: it serves, and a SIGKILL loses nothing."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from falrt.client import Queued, SyncClient
from tests.fifo import make_gate, release
from tests.harness import ServerProcess
from tests.postgres import fresh_database
from tests.test_restart import SLOW_START_APP

pytestmark = [pytest.mark.e2e, pytest.mark.postgres]


@pytest.fixture
def dsn() -> Iterator[str]:
    with fresh_database() as fresh:
        yield fresh


def test_a_server_on_postgres_keeps_queued_requests_and_results_across_a_sigkill(
    tmp_path: Path, dsn: str
) -> None:
    gate = make_gate(tmp_path / "setup-gate")
    app_file = tmp_path / "app" / "slow_start.py"
    app_file.parent.mkdir()
    app_file.write_text(SLOW_START_APP.format(gate=str(gate)))
    data_dir = tmp_path / "data"  # bundles and environments stay on local disk
    first = ServerProcess(data_dir, tmp_path / "first.log", store=dsn).start()
    try:
        hello = first.deploy("examples/hello.py::Hello")
        slow = first.deploy(f"{app_file}::SlowStart")
        with SyncClient(first.address) as client:
            done_id = client.submit(hello, {"name": "pg"}).request_id
            assert client.wait(done_id, timeout=120).output == {"greeting": "Hello, pg!"}
            ids = [client.submit(slow, {"n": n}).request_id for n in range(3)]
            assert [client.status(i) for i in ids] == [Queued(position=p) for p in range(3)]
    finally:
        first.kill()
    second = ServerProcess(data_dir, tmp_path / "second.log", store=dsn).start()
    try:
        with SyncClient(second.address) as client:
            assert client.result(done_id) == {"greeting": "Hello, pg!"}
            assert all(isinstance(client.status(i), Queued) for i in ids)
            release(gate)  # the new server's runner finishes setup
            outputs = [client.wait(i, timeout=60).output for i in ids]
        assert outputs == [{"n": 0}, {"n": 2}, {"n": 4}]
        apps = json.loads(second.cli("apps", "list", "--output", "json").stdout)
        assert sorted(app["name"] for app in apps) == ["hello", "slow-start"]
        assert not (data_dir / "falrt.db").exists()  # nothing went to SQLite
    finally:
        second.stop()
