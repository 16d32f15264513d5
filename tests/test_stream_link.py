"""The runner link over a plain stream (`falrt server --runner-link stream`, issue 18's
prototype; falrt/streamlink.py): a real server whose real runners dial it, the link's
refusals as a process that is not a runner meets them, and the framing itself.

The suites of the runner link run over it too when the tests' environment has
FALRT_RUNNER_LINK=stream: servers the harness starts inherit the variable, and
tests/test_shim.py then serves its in-test link over a stream link.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from falrt.shim import stream_call
from falrt.shim.settings import ShimSettings
from grpc import aio

from falrt.client import SyncClient
from falrt.streamlink import HEADER, MESSAGE, STATUS, FrameConnection
from falrt.v1 import runner_pb2
from tests.harness import TAG_VARIABLE, ServerProcess, stop_cleanly, wait_for


@pytest.fixture(scope="module")
def stream_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    root = tmp_path_factory.mktemp("stream")
    proc = ServerProcess(root / "data", root / "server.log", extra=[
        "--runner-link", "stream", "--runner-link-listen", f"unix:{root / 'link.sock'}"])
    yield proc.start()
    stop_cleanly(proc)


def link_socket(server: ServerProcess) -> Path:
    return server.data_dir.parent / "link.sock"


def runner_variables(server: ServerProcess) -> list[tuple[str, str]]:
    """(FALRT_SERVER, FALRT_HOST) of each process of `server`'s that has the first (its
    runners)."""
    found = []
    for entry in Path("/proc").iterdir():
        try:
            env = dict(v.decode().partition("=")[::2]
                       for v in (entry / "environ").read_bytes().split(b"\0"))
        except OSError:
            continue
        if env.get(TAG_VARIABLE) == server.tag and "FALRT_SERVER" in env:
            found.append((env["FALRT_SERVER"], env.get("FALRT_HOST", "")))
    return found


@pytest.mark.e2e
def test_direct_and_queue_calls_are_served_by_runners_on_the_stream_link(
    stream_server: ServerProcess,
) -> None:
    hello = stream_server.deploy("examples/hello.py::Hello")
    client = SyncClient(stream_server.address)
    assert client.run(hello, {"name": "direct"}) == {"greeting": "Hello, direct!"}
    assert client.subscribe(hello, {"name": "queue"}) == {"greeting": "Hello, queue!"}
    # The runner dials the stream link; its app's code calls the server at the gRPC port.
    found = wait_for(lambda: runner_variables(stream_server), what="a runner")
    assert found == [(f"stream:unix:{link_socket(stream_server)}", stream_server.address)]


@pytest.mark.e2e
def test_a_runner_with_a_wrong_token_is_refused_with_permission_denied(
    stream_server: ServerProcess,
) -> None:
    async def attach() -> aio.AioRpcError:
        async with stream_call.dial(f"unix:{link_socket(stream_server)}", 1 << 20) as call:
            await call.write(runner_pb2.RunnerMessage(
                hello=runner_pb2.Hello(runner_id="r-nobody", token="wrong", slots=1)))
            with pytest.raises(aio.AioRpcError) as refused:
                await anext(call)
            return refused.value

    error = asyncio.run(attach())
    assert error.code() == grpc.StatusCode.PERMISSION_DENIED, error.details()


async def _status_after(path: Path, sent: bytes) -> tuple[int, bytes]:
    """What the server answers `sent` with: (kind, body) of its last frame, then EOF."""
    reader, writer = await asyncio.open_unix_connection(str(path))
    writer.write(sent)
    answer = await asyncio.wait_for(reader.read(), 10)
    writer.close()
    kind, length = HEADER.unpack_from(answer)
    assert len(answer) == HEADER.size + length, answer
    return kind, answer[HEADER.size:]


@pytest.mark.e2e
def test_a_first_message_that_does_not_parse_is_refused_with_invalid_argument(
    stream_server: ServerProcess,
) -> None:
    garbage = b"\xff\xff\xff"
    kind, body = asyncio.run(_status_after(
        link_socket(stream_server), HEADER.pack(MESSAGE, len(garbage)) + garbage))
    assert (kind, body[0]) == (STATUS, grpc.StatusCode.INVALID_ARGUMENT.value[0])
    assert b"does not parse" in body


@pytest.mark.e2e
def test_a_frame_over_the_size_limit_is_refused_with_resource_exhausted(
    stream_server: ServerProcess,
) -> None:
    kind, body = asyncio.run(_status_after(
        link_socket(stream_server), HEADER.pack(MESSAGE, 1 << 30)))
    assert (kind, body[0]) == (STATUS, grpc.StatusCode.RESOURCE_EXHAUSTED.value[0])
    assert stream_server.is_running()


@pytest.mark.e2e
def test_the_stream_link_refuses_to_listen_where_other_hosts_could_reach_it(
    tmp_path: Path,
) -> None:
    server = ServerProcess(tmp_path / "data", tmp_path / "server.log", extra=[
        "--runner-link", "stream", "--runner-link-listen", "0.0.0.0:0"])
    with pytest.raises(AssertionError, match="loopback address or a Unix socket only"):
        server.start()


def _frames(*messages: runner_pb2.RunnerMessage) -> bytes:
    return b"".join(HEADER.pack(MESSAGE, len(m.SerializeToString())) + m.SerializeToString()
                    for m in messages)


@pytest.mark.unit
@pytest.mark.parametrize("chunk", [1, 2, 5, 7, 1000])
def test_frames_split_anywhere_arrive_whole_and_in_order(chunk: int) -> None:
    sent = [runner_pb2.RunnerMessage(hello=runner_pb2.Hello(runner_id="r", token="t")),
            runner_pb2.RunnerMessage(),  # an empty body
            runner_pb2.RunnerMessage(result=runner_pb2.Result(request_id="x" * 300))]
    data = _frames(*sent)
    connection = FrameConnection(runner_pb2.RunnerMessage.FromString, 1 << 20, strict=False)
    for start in range(0, len(data), chunk):
        connection.data_received(data[start:start + chunk])
    connection.eof_received()  # the runner's half-close: the messages end cleanly

    async def received() -> list[runner_pb2.RunnerMessage]:
        return [message async for message in connection]

    assert asyncio.run(received()) == sent


@pytest.mark.unit
def test_the_runners_end_reports_a_connection_lost_without_status_as_unavailable() -> None:
    connection = FrameConnection(runner_pb2.ServerMessage.FromString, 1 << 20, strict=True)
    connection.connection_lost(None)
    call = stream_call.StreamCall(connection)

    async def read() -> aio.AioRpcError:
        with pytest.raises(aio.AioRpcError) as lost:
            await anext(call)
        return lost.value

    assert asyncio.run(read()).code() == grpc.StatusCode.UNAVAILABLE


@pytest.mark.unit
def test_a_stream_address_names_the_link_in_the_shims_settings() -> None:
    env = {"FALRT_RUNNER_ID": "r", "FALRT_RUNNER_TOKEN": "t", "FALRT_ENTRYPOINT": "app:App"}
    stream = ShimSettings.from_environ({**env, "FALRT_SERVER": "stream:unix:/run/link.sock"})
    plain = ShimSettings.from_environ({**env, "FALRT_SERVER": "127.0.0.1:5"})
    assert (stream.link, stream.server) == ("stream", "unix:/run/link.sock")
    assert (plain.link, plain.server) == ("grpc", "127.0.0.1:5")

