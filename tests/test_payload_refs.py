"""Payloads by reference end to end (docs/files.md, "Payloads by reference"): a real server
with its HTTP edge and a real process runner of tests/apps/bulky_payloads.py. Inputs and
outputs over the threshold travel as files, past the 64 MiB message limit, and come back
the same through the Python client and over HTTP; small ones stay inline (no file made);
the server's memory stays bounded meanwhile."""

from __future__ import annotations

import asyncio
import hashlib
import re
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from falrt import errors
from falrt.client import AsyncClient, SyncClient, credentials
from falrt.client.rpc_errors import translate_rpc_errors
from falrt.v1 import files_pb2, queue_pb2
from tests.apps.bulky_payloads import made
from tests.fifo import make_gate, release
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


@pytest.fixture(scope="module")
def http(server: ServerProcess) -> Iterator[httpx.Client]:
    """An HTTP client of the gateway with the owner's key, as fal_client would call it."""
    base = "http://" + server.wait_for_output(HTTP_LISTENING).group(1)
    key = credentials.key_for(server.address)
    with httpx.Client(base_url=base, timeout=300,
                      headers={"authorization": f"Key {key}"}) as client:
        yield client


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


def test_the_asyncio_client_sends_and_receives_by_reference(
    server: ServerProcess, endpoint: str,
) -> None:
    text = made(3 * MiB, "async")

    async def calls() -> tuple[object, object, object]:
        async with AsyncClient(server.address) as client:
            return (await client.subscribe(endpoint, {"text": text}),
                    await client.run(endpoint, {"size": 5 * MiB}, path="/make"),
                    await (await client.submit(endpoint, {"size": 2 * MiB}, path="/make")).get())

    sent, made_5, made_2 = asyncio.run(calls())
    assert sent == digest(text)
    assert made_5 == {"text": made(5 * MiB, "x")} and made_2 == {"text": made(2 * MiB, "x")}


def test_an_unfinished_input_file_is_refused(client: SyncClient, endpoint: str) -> None:
    started = client._files._stub.StartUpload(
        files_pb2.UploadHeader(name="input", size=10, content_type="application/json"))
    request = queue_pb2.SubmitRequest(endpoint_id=endpoint, path="/")
    request.input.file_id = started.file_id
    with pytest.raises(errors.FailedPreconditionError, match="finish its upload"), \
            translate_rpc_errors():
        client._stub.Submit(request)


def test_an_input_by_reference_that_is_no_file_is_not_found(
    client: SyncClient, endpoint: str,
) -> None:
    request = queue_pb2.RunRequest(endpoint_id=endpoint, path="/")
    request.input.file_id = "0" * 32
    with pytest.raises(errors.NotFoundError), translate_rpc_errors():
        client._stub.Run(request)


def test_an_input_file_gone_before_the_runner_reads_it_fails_that_request(
    client: SyncClient, endpoint: str, tmp_path: Path,
) -> None:
    """The one slot is held by a gated request while the input's file is deleted: the
    request then fails with NOT_FOUND naming its input, and the runner serves on."""
    gate = make_gate(tmp_path / "gate")
    held = client.submit(endpoint, {"size": 10, "gate": str(gate)}, path="/make")
    info = client._files.upload_bytes(b'{"text": "gone"}', content_type="application/json")
    request = queue_pb2.SubmitRequest(endpoint_id=endpoint, path="/")
    request.input.file_id, request.input.content_type = info.file_id, "application/json"
    with translate_rpc_errors():
        doomed = client._stub.Submit(request).request_id
    client._files.delete(info.file_id)
    release(gate)
    assert held.get() == {"text": made(10, "x")}
    with pytest.raises(errors.NotFoundError, match=f"input \\(file {info.file_id}\\)"):
        client.wait(doomed, timeout=60).output_or_raise()
    assert client.subscribe(endpoint, {"text": "after"}) == digest("after")


def test_a_raw_grpc_caller_gets_the_reference_and_fetches_it(
    client: SyncClient, endpoint: str,
) -> None:
    """What a caller in another language sees: a Payload with file_id, size and url."""
    request = queue_pb2.RunRequest(endpoint_id=endpoint, path="/make")
    request.input.data = b'{"size": 3000000}'
    with translate_rpc_errors():
        reply = client._stub.Run(request)
    output = reply.output
    assert (output.data, output.size, output.content_type) == (b"", 3000000 + 11,
                                                               "application/json")
    assert "signature=" in output.url
    info = client._files.stat(output.file_id)  # kept as long as the result (24 h default)
    assert info.expires_at.seconds - info.created_at.seconds == 24 * 3600
    keyless = httpx.get(output.url, timeout=60)
    assert keyless.content == client._files.read_bytes(output.file_id)
    assert keyless.content == b'{"text":"' + made(3000000, "x").encode() + b'"}'


def test_a_70_mib_output_comes_back_over_http(http: httpx.Client, endpoint: str) -> None:
    """Both fal APIs: the direct call's body, and the queue's result, are the output."""
    expected = b'{"text":"' + made(70 * MiB, "ab").encode() + b'"}'
    direct = http.post(f"/{endpoint}/make", json={"size": 70 * MiB, "seed": "ab"})
    assert direct.status_code == 200, direct.text[:500]
    assert direct.headers["content-type"].startswith("application/json")
    assert direct.content == expected
    submitted = http.post(f"/queue/{endpoint}/make", json={"size": 70 * MiB, "seed": "ab"})
    status_url, response_url = submitted.json()["status_url"], submitted.json()["response_url"]
    with http.stream("GET", status_url + "/stream") as events:
        for line in events.iter_lines():
            if '"COMPLETED"' in line:
                break
    result = http.get(response_url)
    assert result.status_code == 200
    assert result.content == expected


def test_a_large_body_is_streamed_into_a_file_and_submitted_by_reference(
    server: ServerProcess, http: httpx.Client, client: SyncClient, endpoint: str,
) -> None:
    text = made(80 * MiB, "xyz")
    body = b'{"text":"' + text.encode() + b'"}'
    before = len(client._files.list())
    start = rss(server)
    direct = http.post(f"/{endpoint}", content=body,
                       headers={"content-type": "application/json"})
    assert direct.status_code == 200, direct.text[:500]
    assert direct.json() == digest(text)
    growth = rss(server, "VmHWM") - start
    print(f"server RSS {start / MiB:.0f} MiB, peak growth over HTTP {growth / MiB:.1f} MiB")
    assert growth < RSS_GROWTH
    made_files = client._files.list()
    assert len(made_files) == before + 1
    assert (made_files[0].name, made_files[0].size) == ("input", len(body))
