"""A full disk on a real server: its data directory is a small tmpfs that the test fills.

What a user would notice: a finished request whose result cannot be stored is not lost and
does not run again; new requests are refused with `store_full`; the health service and
the gateway's `/healthz` say NOT_SERVING while the store cannot write and SERVING once it can.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import grpc
import httpx
import pytest

from falrt import errors
from falrt.client import Completed, InProgress, SyncClient
from tests.disk import NOT_SERVING, SERVING, fill, health, tmpfs
from tests.fifo import make_gate, release
from tests.harness import ServerProcess, stop_cleanly, wait_for

pytestmark = pytest.mark.e2e

# The result the test holds back: larger than the SQLite WAL file can have grown to (it is
# checkpointed at about 4 MB), so storing it must grow a file on the full disk.
BIG = 8 * 1024 * 1024
HTTP = re.compile(r"falrt http listening on (\S+)")


def healthz(address: str) -> tuple[int, dict[str, object]]:
    reply = httpx.get(f"http://{address}/healthz", timeout=5, trust_env=False)
    return reply.status_code, reply.json()


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    with tmpfs(tmp_path / "disk", 48) as disk:
        yield disk


def test_a_full_disk_keeps_results_refuses_submits_and_reports_not_serving(
    small_disk: Path, tmp_path: Path
) -> None:
    marks = tmp_path / "marks"
    marks.mkdir()
    server = ServerProcess(small_disk / "data", tmp_path / "server.log",
                           extra=["--http-listen", "127.0.0.1:0"]).start()
    try:
        http = server.wait_for_output(HTTP).group(1)
        endpoint = server.deploy("tests/apps/bulky.py::Bulky")
        gate = make_gate(tmp_path / "gate")
        with SyncClient(server.address) as client:
            held = client.submit(endpoint, {"key": "held", "size": BIG, "marks": str(marks),
                                            "gate": str(gate)})
            wait_for(lambda: isinstance(client.status(held.request_id), InProgress),
                     what="the held request running")
            assert health(server.address) == SERVING
            assert healthz(http) == (200, {"status": "SERVING"})

            filler = fill(small_disk)
            release(gate)  # the handler answers; its result cannot be stored
            wait_for(lambda: health(server.address) == NOT_SERVING, timeout=20,
                     what="health NOT_SERVING")
            assert len(list(marks.iterdir())) == 1
            status, body = healthz(http)
            assert status == 503 and body["status"] == "NOT_SERVING"
            assert body["problems"] == ["the store cannot write (no space left)"]
            assert isinstance(client.status(held.request_id), InProgress)
            with pytest.raises(errors.StoreFullError, match="no space left") as refused:
                client.submit(endpoint, {"key": "refused"})
            assert refused.value.code is grpc.StatusCode.RESOURCE_EXHAUSTED

            filler.unlink()
            wait_for(lambda: health(server.address) == SERVING, timeout=20,
                     what="health SERVING again")
            assert healthz(http) == (200, {"status": "SERVING"})
            done = client.wait(held.request_id, timeout=30)
            assert done.output["data"] == "x" * BIG
            after = client.submit(endpoint, {"key": "after"})
            assert client.wait(after.request_id, timeout=30).output["key"] == "after"

        server.kill()  # the result was stored: the restarted server does not run it again
        server.start()
        with SyncClient(server.address) as client:
            status = client.status(held.request_id)
            assert isinstance(status, Completed)
            assert client.result(held.request_id)["data"] == "x" * BIG
        assert sorted(p.name.split(".")[0] for p in marks.iterdir()) == ["held"]
    finally:
        stop_cleanly(server)
