"""Payloads by reference end to end (docs/files.md, "Payloads by reference"): a real server
with its HTTP edge and a real process runner of tests/apps/bulky_payloads.py. Inputs and
outputs over the threshold travel as files, past the 64 MiB message limit, and come back
the same through the Python client and over HTTP; small ones stay inline (no file made);
the server's memory stays bounded meanwhile."""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from falrt import errors
from falrt.client import SyncClient
from tests.apps.bulky_payloads import made
from tests.harness import ServerProcess, stop_cleanly

pytestmark = pytest.mark.e2e

HTTP_LISTENING = re.compile(r"falrt http listening on (\S+)")
MiB = 1024 * 1024
# The server's RSS may grow by at most this while payloads many times larger pass.
RSS_GROWTH = 100 * MiB


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    root = tmp_path_factory.mktemp("payload-refs")
    proc = ServerProcess(root / "data", root / "server.log",
                         extra=["--http-listen", "127.0.0.1:0"]).start()
    yield proc
    stop_cleanly(proc)


@pytest.fixture(scope="module")
def client(server: ServerProcess) -> Iterator[SyncClient]:
    with SyncClient(server.address) as client:
        yield client


@pytest.fixture(scope="module")
def endpoint(server: ServerProcess) -> str:
    return server.deploy("tests/apps/bulky_payloads.py::BulkyPayloads")


def rss(server: ServerProcess, field: str = "VmRSS") -> int:
    """The server process's resident memory (`field` of /proc/PID/status), in bytes."""
    assert server.proc is not None
    for line in Path(f"/proc/{server.proc.pid}/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1]) * 1024
    raise AssertionError(f"no {field} in /proc/{server.proc.pid}/status")


def digest(text: str) -> dict[str, object]:
    data = text.encode()
    return {"size": len(data), "sha256": hashlib.sha256(data).hexdigest()}


def test_small_payloads_go_inline_and_make_no_file(client: SyncClient, endpoint: str) -> None:
    before = len(client._files.list())
    assert client.subscribe(endpoint, {"text": "hello"}) == digest("hello")
    assert client.run(endpoint, {"size": 1000}, path="/make") == {"text": made(1000, "x")}
    assert len(client._files.list()) == before


def test_a_200_mib_input_through_the_queue_completes(
    server: ServerProcess, client: SyncClient, endpoint: str,
) -> None:
    """The issue's acceptance: over three times the message limit, in by reference."""
    text = made(200 * MiB, "abc")
    start = rss(server)
    handle = client.submit(endpoint, {"text": text})
    assert handle.get() == digest(text)
    growth = rss(server, "VmHWM") - start
    print(f"server RSS {start / MiB:.0f} MiB, peak growth {growth / MiB:.1f} MiB")
    assert growth < RSS_GROWTH


def test_a_70_mib_output_comes_back_through_subscribe_and_run(
    client: SyncClient, endpoint: str,
) -> None:
    expected = {"text": made(70 * MiB, "0123456789")}
    assert client.subscribe(endpoint, {"size": 70 * MiB, "seed": "0123456789"},
                            path="/make") == expected
    assert client.run(endpoint, {"size": 70 * MiB, "seed": "0123456789"},
                      path="/make") == expected


def test_an_input_file_of_another_owner_or_unfinished_is_refused(
    client: SyncClient, endpoint: str,
) -> None:
    from falrt.v1 import files_pb2, queue_pb2

    started = client._files._stub.StartUpload(
        files_pb2.UploadHeader(name="input", size=10, content_type="application/json"))
    request = queue_pb2.SubmitRequest(endpoint_id=endpoint, path="/")
    request.input.file_id = started.file_id
    with pytest.raises(errors.FailedPreconditionError, match="finish its upload"):
        from falrt.client.rpc_errors import translate_rpc_errors
        with translate_rpc_errors():
            client._stub.Submit(request)
