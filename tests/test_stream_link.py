"""The runner link over a plain stream (falrt/streamlink.py), the default link of the
process backend's runners (`falrt server --runner-link auto`): which runners dial it, the
Unix socket it listens on, a real server whose real runners dial it, the link's refusals as
a process that is not a runner meets them, and the framing itself.

The suites of the runner link (tests/test_e2e.py, test_failures.py, test_shim.py, ...) run
over the stream link by default, and over gRPC when the tests' environment has
FALRT_RUNNER_LINK=grpc: servers the harness starts inherit the variable, and
tests/test_shim.py then serves its in-test link as a gRPC service.
"""

from __future__ import annotations

import asyncio
import socket
import stat
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import cast

import grpc
import pytest
from falrt.shim import stream_call
from falrt.shim.settings import ShimSettings
from grpc import aio

from falrt.client import SyncClient
from falrt.server.api.runner_link import RunnerLinkService
from falrt.server.api.runner_stream import (
    SOCKET_NAME,
    StreamLink,
    link_is_stream,
    open_link,
    private_socket,
)
from falrt.settings import ServerSettings
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
@pytest.mark.parametrize("frame", [
    HEADER.pack(7, 1) + b"x",  # a kind the link does not have
    HEADER.pack(STATUS, 1) + bytes([grpc.StatusCode.INTERNAL.value[0]]),  # the server's own
], ids=["unknown-kind", "status-from-a-runner"])
def test_a_frame_the_server_does_not_expect_is_refused_with_invalid_argument(
    stream_server: ServerProcess, frame: bytes,
) -> None:
    hello = runner_pb2.RunnerMessage(hello=runner_pb2.Hello(runner_id="r-x", token="t"))
    kind, body = asyncio.run(_status_after(link_socket(stream_server), frame + _frames(hello)))
    assert (kind, body[0]) == (STATUS, grpc.StatusCode.INVALID_ARGUMENT.value[0]), body
    assert b"not expected here" in body  # (and the Hello after it was not read)
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



@pytest.mark.unit
@pytest.mark.parametrize(("runner_link", "backend", "stream"), [
    ("auto", "process", True),  # runners on the server's own host
    ("auto", "docker", False),  # containers, and
    ("auto", "ray", False),  # other hosts keep the TLS-capable gRPC link
    ("grpc", "process", False),
    ("grpc", "docker", False),
    ("stream", "process", True),
])
def test_which_runners_dial_the_stream_link(runner_link: str, backend: str, stream: bool) -> None:
    assert link_is_stream(runner_link, backend) is stream


@pytest.mark.unit
@pytest.mark.parametrize(("runner_link", "backend"), [("stream", "docker"), ("stream", "ray"),
                                                      ("tcp", "process")])
def test_a_link_the_backend_cannot_use_is_refused(runner_link: str, backend: str) -> None:
    with pytest.raises(ValueError, match=r"process backend's runners only|unknown runner link"):
        link_is_stream(runner_link, backend)


def _link_mode(data_dir: Path, backend: str, runner_link: str = "auto") -> str:
    """The address `open_link` gives runners ("": none, the gRPC link), having closed it."""
    settings = ServerSettings(data_dir=data_dir, backend=backend, runner_link=runner_link)

    async def opened() -> str:
        link = await open_link(settings, cast(RunnerLinkService, None))
        await link.close()
        return link.address

    return asyncio.run(opened())


@pytest.mark.unit
@pytest.mark.parametrize("backend", ["docker", "ray"])
def test_docker_and_ray_runners_keep_the_grpc_link_by_default(
    tmp_path: Path, backend: str,
) -> None:
    assert _link_mode(tmp_path, backend) == ""
    assert not (tmp_path / "link").exists()


@pytest.mark.unit
def test_the_default_socket_is_private_to_the_servers_user_and_removed_at_close() -> None:
    with tempfile.TemporaryDirectory(prefix="fl-") as short:  # (a path that fits a socket)
        data_dir = Path(short) / "data"

        async def listening() -> tuple[str, int, int]:
            link = await open_link(ServerSettings(data_dir=data_dir),
                                   cast(RunnerLinkService, None))
            socket_mode = (data_dir / "link" / SOCKET_NAME).stat().st_mode
            await link.close()
            return link.address, socket_mode, (data_dir / "link").stat().st_mode

        address, socket_mode, folder_mode = asyncio.run(listening())
        assert address == f"stream:unix:{data_dir / 'link' / SOCKET_NAME}"
        assert stat.S_ISSOCK(socket_mode) and stat.S_IMODE(socket_mode) == 0o600
        assert stat.S_IMODE(folder_mode) == 0o700
        assert not (data_dir / "link" / SOCKET_NAME).exists()


@pytest.mark.unit
def test_a_link_folder_left_open_is_made_private_again() -> None:
    with tempfile.TemporaryDirectory(prefix="fl-") as short:
        folder = Path(short) / "link"
        folder.mkdir()
        folder.chmod(0o755)
        assert private_socket(Path(short)) == (folder / SOCKET_NAME, None)
        assert stat.S_IMODE(folder.stat().st_mode) == 0o700


@pytest.mark.unit
def test_a_data_dir_too_deep_for_a_socket_address_listens_in_a_private_temporary_folder(
    tmp_path: Path,
) -> None:
    deep = tmp_path / ("d" * 120)
    address = _link_mode(deep, "process")
    path = Path(address.removeprefix("stream:unix:"))
    assert path.name == SOCKET_NAME and len(str(path)) < 100
    assert path.parent.name.startswith("falrt-link-")
    assert not path.parent.exists()  # removed at close
    assert not (deep / "link").exists()


@pytest.mark.unit
def test_a_temporary_folder_too_deep_as_well_gives_way_to_tmp(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    deep = tmp_path / ("t" * 120)
    deep.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(deep))  # (what TMPDIR would set)
    path, temporary = private_socket(tmp_path / ("d" * 120))
    try:
        assert temporary is not None and temporary.parent == Path("/tmp")
        assert path == temporary / SOCKET_NAME
        assert stat.S_IMODE(temporary.stat().st_mode) == 0o700
    finally:
        if temporary is not None:
            temporary.rmdir()


@pytest.mark.unit
def test_a_socket_another_server_listens_on_is_not_taken_over() -> None:
    with tempfile.TemporaryDirectory(prefix="fl-") as short:
        listen = f"unix:{short}/{SOCKET_NAME}"

        async def twice() -> None:
            first = StreamLink(cast(RunnerLinkService, None), 1 << 20)
            await first.start(listen)
            try:
                with pytest.raises(OSError, match="another process listens"):
                    await StreamLink(cast(RunnerLinkService, None), 1 << 20).start(listen)
            finally:
                await first.close()
            second = StreamLink(cast(RunnerLinkService, None), 1 << 20)
            await second.start(listen)  # (the first is gone: its place is free again)
            await second.close()

        asyncio.run(twice())


@pytest.mark.unit
def test_a_socket_file_a_killed_server_left_is_replaced() -> None:
    with tempfile.TemporaryDirectory(prefix="fl-") as short:
        path = Path(short) / SOCKET_NAME
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as left:
            left.bind(str(path))  # (bound, never listening: what a SIGKILL leaves)

        async def start() -> str:
            link = StreamLink(cast(RunnerLinkService, None), 1 << 20)
            await link.start(f"unix:{path}")
            mode = path.stat().st_mode
            await link.close()
            return oct(stat.S_IMODE(mode))

        assert asyncio.run(start()) == oct(0o600)
        assert not path.exists()


def _runner_dials(extra: list[str], monkeypatch: pytest.MonkeyPatch) -> tuple[str, str, str]:
    """(FALRT_SERVER of a runner, the server's gRPC address, the server's log) of a server
    started with `extra` in a short data dir, whatever FALRT_RUNNER_LINK the tests have."""
    monkeypatch.delenv("FALRT_RUNNER_LINK", raising=False)
    with tempfile.TemporaryDirectory(prefix="fl-") as short:
        server = ServerProcess(Path(short) / "data", Path(short) / "server.log",
                               extra=extra).start()
        try:
            hello = server.deploy("examples/hello.py::Hello")
            assert SyncClient(server.address).run(hello, {"name": "x"}) == {
                "greeting": "Hello, x!"}
            [(dialled, _)] = wait_for(lambda: runner_variables(server), what="a runner")
        finally:
            stop_cleanly(server)
        assert not (Path(short) / "data" / "link" / SOCKET_NAME).exists()
        return dialled, server.address, server.log()


@pytest.mark.e2e
def test_process_runners_dial_the_stream_link_on_a_unix_socket_by_default(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    dialled, _, log = _runner_dials([], monkeypatch)
    assert dialled.startswith("stream:unix:") and dialled.endswith(f"/link/{SOCKET_NAME}")
    assert f"runners dial the stream link at {dialled}" in log


@pytest.mark.e2e
def test_runner_link_grpc_makes_process_runners_dial_the_grpc_port(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    dialled, address, log = _runner_dials(["--runner-link", "grpc"], monkeypatch)
    assert dialled == address
    assert "runners dial the stream link" not in log
