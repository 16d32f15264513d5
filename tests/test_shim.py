"""Tests of the runner shim: a real `python -m falrt.shim` subprocess attached to an
in-test RunnerLink server (grpc.aio, port 0)."""

import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
import textwrap
from collections.abc import AsyncIterator, Callable, Coroutine
from pathlib import Path
from typing import Any

import grpc
import msgspec
import pytest

from falrt.server.api.runner_stream import StreamLink, private_socket
from falrt.v1 import common_pb2, runner_pb2, runner_pb2_grpc

pytestmark = pytest.mark.e2e

WAIT_S = 20.0

APP = """
import asyncio
import logging
import os
import sys
import threading
from collections.abc import AsyncIterator, Iterator

import msgspec

import falrt

MARKS = os.environ["TEST_MARKS"]


def mark(name: str, text: str = "") -> None:
    with open(os.path.join(MARKS, name), "a") as f:
        f.write(text + "\\n")


class In(msgspec.Struct):
    name: str
    n: int = 3


class Out(msgspec.Struct):
    text: str


class TestApp(falrt.App):
    def setup(self) -> None:
        mark("setup", os.environ.get("FALRT_RUNNER_STATE", ""))
        if os.environ.get("TEST_FAIL_SETUP"):
            raise RuntimeError("boom in setup")
        self.exiting = threading.Event()

    def handle_exit(self) -> None:
        mark("handle_exit")
        self.exiting.set()

    def teardown(self) -> None:
        mark("teardown", os.environ.get("FALRT_RUNNER_STATE", ""))

    @falrt.endpoint("/")
    def hello(self, inp: In) -> Out:
        mark("hello_called")
        return Out(text=f"hello {inp.name}")

    @falrt.endpoint("/async")
    async def ahello(self, inp: In) -> Out:
        await asyncio.sleep(0)
        return Out(text=f"async {inp.name}")

    @falrt.endpoint("/gen")
    def gen(self, inp: In) -> Iterator[Out]:
        for i in range(inp.n):
            yield Out(text=f"{inp.name}{i}")

    @falrt.endpoint("/agen")
    async def agen(self, inp: In) -> AsyncIterator[Out]:
        for i in range(inp.n):
            await asyncio.sleep(0)
            yield Out(text=f"{inp.name}{i}")

    @falrt.endpoint("/fail")
    def fail(self, inp: In) -> Out:
        raise ValueError(f"nope {inp.name}")

    @falrt.endpoint("/log")
    def log(self, inp: In) -> Out:
        request = self.current_request
        print("printed", request.request_id if request else None)
        print("part", end="")
        print("ial")
        sys.stderr.write("to stderr\\n")
        logging.getLogger("testapp").info("logged %s", inp.name)
        print("no newline at the end", end="")
        return Out(text="logged")

    @falrt.endpoint("/alog")
    async def alog(self, inp: In) -> Out:
        print("async printed", inp.name)
        return Out(text="alogged")

    @falrt.endpoint("/block")
    async def block(self, inp: In) -> Out:
        print("blocking", inp.name)
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            mark("block_cancelled", inp.name)
            raise
        return Out(text="unreachable")

    @falrt.endpoint("/poll")
    def poll(self, inp: In) -> Out:
        request = self.current_request
        assert request is not None
        print("polling", inp.name)
        while not request.wait_cancelled(0.01):
            pass
        mark("poll_saw_cancel", inp.name)
        return Out(text="stopped")

    @falrt.endpoint("/until_exit")
    def until_exit(self, inp: In) -> Out:
        print("waiting for exit", inp.name)
        self.exiting.wait()
        mark("until_exit_done")
        return Out(text="finished after handle_exit")
"""


class Link(runner_pb2_grpc.RunnerLinkServicer):
    """The server side of one runner's stream: runner messages go to `inbox` (None when the
    runner's side ended); messages put in `outbox` go to the runner (None closes). With
    `welcome`, every accepted stream starts with Welcome, as falrt's server does; with
    `refuse`, every stream ends with PERMISSION_DENIED once its Hello is read."""

    def __init__(self, refuse: bool = False, welcome: bool = False) -> None:
        self.inbox: asyncio.Queue[runner_pb2.RunnerMessage | None] = asyncio.Queue()
        self.outbox: asyncio.Queue[runner_pb2.ServerMessage | None] = asyncio.Queue()
        self.refuse = refuse
        self.welcome = welcome
        self.refused = 0  # streams refused
        self.batches = 0  # ResultBatches received

    async def Attach(
        self, request_iterator: AsyncIterator[runner_pb2.RunnerMessage], context: Any
    ) -> AsyncIterator[runner_pb2.ServerMessage]:
        if self.refuse:
            self.refused += 1
            # Refused after reading the Hello, as falrt's server does: an abort before it
            # races the runner's write of Hello, and grpc.aio then reports that failed write
            # (INTERNAL: "Internal error from Core") in place of this status (grpc/grpc#36066).
            await anext(request_iterator, None)
            await context.abort(grpc.StatusCode.PERMISSION_DENIED, "bad runner token")
        while not self.outbox.empty():  # what was left for an earlier stream
            self.outbox.get_nowait()
        reader = asyncio.ensure_future(self._read(request_iterator))
        try:
            if self.welcome:
                yield runner_pb2.ServerMessage(welcome=runner_pb2.Welcome(server_id="srv-test"))
            while (message := await self.outbox.get()) is not None:
                yield message
        finally:
            reader.cancel()

    async def _read(self, messages: AsyncIterator[runner_pb2.RunnerMessage]) -> None:
        """Queues the runner's messages for the test; a ResultBatch as its Results, one by
        one (`batches` counts them)."""
        try:
            async for message in messages:
                if message.HasField("results"):
                    self.batches += 1
                    for result in message.results.results:
                        await self.inbox.put(runner_pb2.RunnerMessage(result=result))
                else:
                    await self.inbox.put(message)
        finally:
            await self.inbox.put(None)
            await self.outbox.put(None)


class Runner:
    """A shim subprocess and the test's view of its stream."""

    def __init__(self, proc: asyncio.subprocess.Process, link: Link, root: Path) -> None:
        self.proc = proc
        self.link = link
        self.marks = root / "marks"
        self.stderr_path = root / "stderr.txt"
        self.seen: list[runner_pb2.RunnerMessage] = []

    async def next(self, skip_heartbeats: bool = True) -> runner_pb2.RunnerMessage | None:
        """The next message from the runner (None: its stream ended)."""
        while True:
            message = await asyncio.wait_for(self.link.inbox.get(), WAIT_S)
            if message is not None:
                self.seen.append(message)
            if message is None or not (skip_heartbeats and message.HasField("heartbeat")):
                return message

    async def next_of(self, kind: str) -> runner_pb2.RunnerMessage:
        """Skips to the next message of one kind ("result", "log", ...)."""
        while True:
            message = await self.next()
            assert message is not None, f"stream ended while waiting for {kind}"
            if message.WhichOneof("event") == kind:
                return message

    async def wait_seen(
        self, predicate: Callable[[runner_pb2.RunnerMessage], bool]
    ) -> runner_pb2.RunnerMessage:
        """The first message, received so far or later, that matches `predicate`."""
        checked = 0
        while True:
            for message in self.seen[checked:]:
                if predicate(message):
                    return message
            checked = len(self.seen)
            assert await self.next() is not None, "the stream ended"

    async def result(self, request_id: str) -> runner_pb2.Result:
        message = await self.wait_seen(
            lambda m: m.HasField("result") and m.result.request_id == request_id
        )
        return message.result

    async def log_line(self, request_id: str, text: str) -> None:
        await self.wait_seen(
            lambda m: (
                m.HasField("log") and m.log.request_id == request_id and text in m.log.line.message
            )
        )

    def send(self, message: runner_pb2.ServerMessage) -> None:
        self.link.outbox.put_nowait(message)

    def assign(self, request_id: str, path: str, payload: Any, content_type: str = "") -> None:
        data = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
        self.send(
            runner_pb2.ServerMessage(
                assign=runner_pb2.Assign(
                    request_id=request_id,
                    path=path,
                    input=common_pb2.Payload(data=data, content_type=content_type),
                )
            )
        )

    def cancel(self, request_id: str) -> None:
        self.send(
            runner_pb2.ServerMessage(cancel=runner_pb2.CancelAssignment(request_id=request_id))
        )

    async def exit_code(self) -> int:
        return await asyncio.wait_for(self.proc.wait(), WAIT_S)

    def marked(self, name: str) -> list[str]:
        path = self.marks / name
        return path.read_text().splitlines() if path.exists() else []

    def stderr(self) -> str:
        return self.stderr_path.read_text()


@contextlib.asynccontextmanager
async def shim(
    root: Path, refuse: bool = False, welcome: bool = False, **env: str
) -> AsyncIterator[Runner]:
    """Starts a RunnerLink server on port 0 and a shim subprocess attached to it."""
    link = Link(refuse, welcome)
    async with (_link_server(link, root) as address,
                _shim_process(root, link, address, env) as runner):
        yield runner


@contextlib.asynccontextmanager
async def _link_server(link: Link, root: Path) -> AsyncIterator[str]:
    """Serves `link`; yields the address the shim is given (FALRT_SERVER). As a server
    serves its process runners by default, over a stream link on a Unix socket under `root`
    (falrt/server/api/runner_stream.py); with FALRT_RUNNER_LINK=grpc in the tests'
    environment, as a gRPC service on a free port."""
    if os.environ.get("FALRT_RUNNER_LINK", "auto") != "grpc":
        stream = StreamLink(link, 64 * 1024 * 1024)
        path, temporary = private_socket(root)
        await stream.start(f"unix:{path}", temporary)
        try:
            yield stream.address
        finally:
            await stream.close()
        return
    server = grpc.aio.server()
    runner_pb2_grpc.add_RunnerLinkServicer_to_server(link, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        yield f"127.0.0.1:{port}"
    finally:
        await server.stop(0)


@contextlib.asynccontextmanager
async def _shim_process(
    root: Path, link: Link, address: str, env: dict[str, str]
) -> AsyncIterator[Runner]:
    bundle = root / "bundle"
    bundle.mkdir()
    (bundle / "testapp.py").write_text(textwrap.dedent(APP))
    (root / "marks").mkdir()
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("FALRT_")}
    full_env.update(
        FALRT_SERVER=address,
        FALRT_RUNNER_ID="runner-1",
        FALRT_RUNNER_TOKEN="secret-token",
        FALRT_BUNDLE_DIR=str(bundle),
        FALRT_ENTRYPOINT="testapp:TestApp",
        FALRT_MAX_MULTIPLEXING="1",
        FALRT_GRACE_PERIOD_S="10",
        TEST_MARKS=str(root / "marks"),
    )
    full_env.update(env)
    with open(root / "stderr.txt", "wb") as stderr:
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "falrt.shim",
            cwd=bundle,
            env=full_env,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=stderr,
            stderr=stderr,
        )
    runner = Runner(proc, link, root)
    try:
        yield runner
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


def run(test: Callable[[], Coroutine[Any, Any, None]]) -> None:
    asyncio.run(test())


async def attached(runner: Runner) -> runner_pb2.Hello:
    first = await runner.next()
    assert first is not None, runner.stderr()
    assert first.WhichOneof("event") == "hello"
    return first.hello


def output(result: runner_pb2.Result) -> Any:
    assert not result.HasField("error"), result.error
    return json.loads(result.output.data)


def test_hello_names_the_runner_its_slots_and_paths(tmp_path: Path) -> None:
    async def main() -> None:
        async with shim(tmp_path, FALRT_MAX_MULTIPLEXING="3") as runner:
            hello = await attached(runner)
            assert hello.runner_id == "runner-1"
            assert hello.token == "secret-token"
            assert hello.slots == 3
            assert set(hello.endpoint_paths) == {
                "/",
                "/async",
                "/gen",
                "/agen",
                "/fail",
                "/log",
                "/alog",
                "/block",
                "/poll",
                "/until_exit",
            }
            assert runner.marked("setup") == ["SETUP"]

    run(main)


def test_sync_and_async_handlers_answer_with_results(tmp_path: Path) -> None:
    async def main() -> None:
        async with shim(tmp_path) as runner:
            await attached(runner)
            runner.assign("r1", "/", {"name": "ada"})
            result = await runner.result("r1")
            assert output(result) == {"text": "hello ada"}
            assert result.output.content_type == "application/json"
            assert result.inference_time.ToNanoseconds() > 0
            runner.assign("r2", "/async", {"name": "bob"})
            assert output(await runner.result("r2")) == {"text": "async bob"}

    run(main)


def test_msgpack_input_gets_a_msgpack_output(tmp_path: Path) -> None:
    async def main() -> None:
        async with shim(tmp_path) as runner:
            await attached(runner)
            data = msgspec.msgpack.encode({"name": "mp"})
            runner.assign("m1", "/", data, "application/msgpack")
            result = await runner.result("m1")
            assert result.output.content_type == "application/msgpack"
            assert msgspec.msgpack.decode(result.output.data) == {"text": "hello mp"}

    run(main)


def test_an_assign_batch_is_served_whole_and_results_ready_together_share_a_message(
    tmp_path: Path,
) -> None:
    async def main() -> None:
        async with shim(tmp_path, FALRT_MAX_MULTIPLEXING="8") as runner:
            await attached(runner)
            batch = runner_pb2.ServerMessage()
            for i in range(8):
                data = json.dumps({"name": f"n{i}"}).encode()
                batch.assigns.assigns.add(request_id=f"b{i}", path="/async",
                                          input=common_pb2.Payload(data=data))
            runner.send(batch)
            for i in range(8):
                assert output(await runner.result(f"b{i}")) == {"text": f"async n{i}"}
            # The eight handlers end in the same turns of the runner's loop: their results
            # wait for the stream together, and at least some of them share a message.
            assert runner.link.batches >= 1

    run(main)


@pytest.mark.parametrize("path", ["/gen", "/agen"])
def test_generators_send_partials_then_an_empty_result(tmp_path: Path, path: str) -> None:
    async def main() -> None:
        async with shim(tmp_path) as runner:
            await attached(runner)
            runner.assign("g1", path, {"name": "x", "n": 3})
            partials = []
            while (message := await runner.next()) is not None:
                kind = message.WhichOneof("event")
                if kind == "partial":
                    assert message.partial.request_id == "g1"
                    partials.append(json.loads(message.partial.output.data))
                if kind == "result":
                    assert not message.result.HasField("error")
                    assert not message.result.HasField("output")
                    break
            assert partials == [{"text": "x0"}, {"text": "x1"}, {"text": "x2"}]

    run(main)


def test_invalid_input_fails_before_the_handler_runs(tmp_path: Path) -> None:
    async def main() -> None:
        async with shim(tmp_path) as runner:
            await attached(runner)
            runner.assign("v1", "/", {"n": "three"})
            error = (await runner.result("v1")).error
            assert error.error_type == "bad_request"
            assert error.grpc_code == grpc.StatusCode.INVALID_ARGUMENT.value[0]
            assert [f.location for f in error.field_errors] in (["$.name"], ["$.n"])
            runner.assign("v2", "/", b"{not json")
            assert (await runner.result("v2")).error.field_errors[0].location == "$"
            assert runner.marked("hello_called") == []

    run(main)


def test_unknown_paths_are_not_found(tmp_path: Path) -> None:
    async def main() -> None:
        async with shim(tmp_path) as runner:
            await attached(runner)
            runner.assign("n1", "/nope", {"name": "a"})
            error = (await runner.result("n1")).error
            assert error.error_type == "not_found"
            assert "'/nope'" in error.message and "/async" in error.message

    run(main)


def test_a_failing_handler_reports_its_error_and_the_runner_keeps_serving(tmp_path: Path) -> None:
    async def main() -> None:
        async with shim(tmp_path) as runner:
            await attached(runner)
            runner.assign("f1", "/fail", {"name": "x"})
            error = (await runner.result("f1")).error
            assert error.error_type == "runner_server_error"
            assert error.message == "ValueError: nope x"
            assert "Traceback" in error.traceback and "ValueError" in error.traceback
            runner.assign("f2", "/", {"name": "again"})
            assert output(await runner.result("f2")) == {"text": "hello again"}

    run(main)


def test_handler_output_is_sent_as_log_lines_before_the_result(tmp_path: Path) -> None:
    async def main() -> None:
        async with shim(tmp_path) as runner:
            await attached(runner)
            runner.assign("l1", "/log", {"name": "zed"})
            await runner.result("l1")
            logs = [
                (m.log.line.source, m.log.line.message)
                for m in runner.seen
                if m.HasField("log") and m.log.request_id == "l1"
            ]
            assert logs == [
                ("stdout", "printed l1"),
                ("stdout", "partial"),
                ("stderr", "to stderr"),
                ("INFO", "logged zed"),
                ("stdout", "no newline at the end"),
            ]
            assert all(m.log.line.timestamp.seconds > 0 for m in runner.seen if m.HasField("log"))
            runner.assign("l2", "/alog", {"name": "amy"})
            await runner.result("l2")
            assert any(
                m.log.request_id == "l2" and m.log.line.message == "async printed amy"
                for m in runner.seen
                if m.HasField("log")
            )

    run(main)


def test_requests_beyond_the_slots_are_refused_and_cancel_frees_slots(tmp_path: Path) -> None:
    async def main() -> None:
        async with shim(tmp_path, FALRT_MAX_MULTIPLEXING="2") as runner:
            await attached(runner)
            runner.assign("b1", "/block", {"name": "1"})
            runner.assign("b2", "/block", {"name": "2"})
            await runner.log_line("b1", "blocking")
            await runner.log_line("b2", "blocking")
            runner.assign("b3", "/block", {"name": "3"})
            assert (await runner.result("b3")).error.error_type == "runner_refused"
            runner.cancel("b1")
            assert (await runner.result("b1")).error.error_type == "client_cancelled"
            assert runner.marked("block_cancelled") == ["1"]
            runner.assign("b4", "/", {"name": "after"})
            assert output(await runner.result("b4")) == {"text": "hello after"}
            runner.cancel("b2")
            assert (await runner.result("b2")).error.error_type == "client_cancelled"

    run(main)


def test_cancelling_a_sync_handler_sets_its_cancelled_flag(tmp_path: Path) -> None:
    async def main() -> None:
        async with shim(tmp_path) as runner:
            await attached(runner)
            runner.assign("p1", "/poll", {"name": "p"})
            await runner.log_line("p1", "polling")
            runner.cancel("p1")
            error = (await runner.result("p1")).error
            assert error.error_type == "client_cancelled"
            assert runner.marked("poll_saw_cancel") == ["p"]

    run(main)


def test_heartbeats_report_free_slots(tmp_path: Path) -> None:
    async def main() -> None:
        async with shim(tmp_path, FALRT_MAX_MULTIPLEXING="2", FALRT_HEARTBEAT_S="0.05") as runner:
            await attached(runner)
            runner.assign("h1", "/block", {"name": "1"})
            await runner.log_line("h1", "blocking")
            while True:
                message = await runner.next(skip_heartbeats=False)
                assert message is not None
                if message.HasField("heartbeat"):
                    assert message.heartbeat.free_slots == 1
                    break

    run(main)


def test_sigterm_runs_handle_exit_lets_requests_finish_then_tears_down(tmp_path: Path) -> None:
    async def main() -> None:
        async with shim(tmp_path, FALRT_MAX_MULTIPLEXING="2") as runner:
            await attached(runner)
            runner.assign("s1", "/until_exit", {"name": "s"})
            runner.assign("s3", "/poll", {"name": "holds the drain open"})
            await runner.log_line("s1", "waiting for exit")
            await runner.log_line("s3", "polling")
            runner.proc.send_signal(signal.SIGTERM)
            assert output(await runner.result("s1")) == {"text": "finished after handle_exit"}
            runner.assign("s2", "/", {"name": "late"})
            assert (await runner.result("s2")).error.error_type == "runner_refused"
            runner.proc.send_signal(signal.SIGTERM)  # a second SIGTERM changes nothing
            runner.cancel("s3")
            while await runner.next() is not None:
                pass
            order = [
                common_pb2.RunnerState.Name(m.state_change.state)
                if m.HasField("state_change")
                else m.result.request_id
                for m in runner.seen
                if m.HasField("state_change") or m.HasField("result")
            ]
            assert order == ["RUNNER_STATE_DRAINING", "s1", "s2", "s3", "RUNNER_STATE_TERMINATING"]
            assert await runner.exit_code() == 0
            assert runner.marked("handle_exit") == [""]
            assert runner.marked("until_exit_done") == [""]
            assert runner.marked("teardown") == ["TERMINATING"]
            assert runner.marked("hello_called") == []

    run(main)


def test_sigterm_cancels_requests_still_running_after_the_grace_period(tmp_path: Path) -> None:
    async def main() -> None:
        async with shim(tmp_path, FALRT_GRACE_PERIOD_S="0.2") as runner:
            await attached(runner)
            runner.assign("g1", "/block", {"name": "late"})
            await runner.log_line("g1", "blocking")
            runner.proc.send_signal(signal.SIGTERM)
            kinds = []
            while (message := await runner.next()) is not None:
                kinds.append(message.WhichOneof("event"))
            assert "result" not in kinds  # the server fails the request over
            assert await runner.exit_code() == 0
            assert runner.marked("block_cancelled") == ["late"]
            assert runner.marked("teardown") == ["TERMINATING"]

    run(main)


def test_drain_from_the_server_runs_handle_exit_then_tears_down(tmp_path: Path) -> None:
    async def main() -> None:
        async with shim(tmp_path) as runner:
            await attached(runner)
            runner.send(runner_pb2.ServerMessage(drain=runner_pb2.Drain()))
            assert await runner.next() is not None
            while await runner.next() is not None:
                pass
            assert await runner.exit_code() == 0
            assert runner.marked("teardown") == ["TERMINATING"]
            assert runner.marked("handle_exit") == [""]

    run(main)


def test_a_lost_server_stops_the_runner_quickly(tmp_path: Path) -> None:
    async def main() -> None:
        async with shim(tmp_path) as runner:
            await attached(runner)
            runner.assign("x1", "/block", {"name": "orphan"})
            await runner.log_line("x1", "blocking")
            runner.link.outbox.put_nowait(None)  # the server ends the stream
            assert await runner.exit_code() == 0
            assert runner.marked("block_cancelled") == ["orphan"]
            assert runner.marked("teardown") == ["TERMINATING"]

    run(main)


def test_a_runner_told_to_reconnect_dials_a_lost_server_again_and_stays_loaded(
    tmp_path: Path,
) -> None:
    async def main() -> None:
        async with shim(tmp_path, welcome=True, FALRT_RECONNECT_S="30") as runner:
            await attached(runner)
            runner.assign("x1", "/block", {"name": "orphan"})
            await runner.log_line("x1", "blocking")
            runner.link.outbox.put_nowait(None)  # the server goes away (a restart)
            while await runner.next() is not None:
                pass
            again = await attached(runner)  # the same Hello on a new stream
            assert (again.runner_id, again.token) == ("runner-1", "secret-token")
            runner.assign("x2", "/", {"name": "again"})
            assert output(await runner.result("x2")) == {"text": "hello again"}
            # The request in flight when the stream was lost was abandoned (the server
            # retries it), never answered; the app was neither torn down nor set up again.
            assert not [m for m in runner.seen if m.HasField("result")
                        and m.result.request_id == "x1"]
            assert runner.marked("block_cancelled") == ["orphan"]
            assert runner.marked("setup") == ["SETUP"] and runner.marked("teardown") == []
            assert runner.proc.returncode is None

    run(main)


def test_a_runner_told_to_reconnect_exits_when_no_server_takes_it_back(tmp_path: Path) -> None:
    async def main() -> None:
        async with shim(tmp_path, welcome=True, FALRT_RECONNECT_S="1.5") as runner:
            await attached(runner)
            runner.link.refuse = True  # a server that does not know this runner
            runner.link.outbox.put_nowait(None)
            loop = asyncio.get_running_loop()
            lost_at = loop.time()
            assert await runner.exit_code() == 0
            waited = loop.time() - lost_at
            assert 1.4 < waited < 6, waited
            assert runner.link.refused >= 3  # it kept dialling through the window
            assert runner.marked("teardown") == ["TERMINATING"]
            assert "did not take this runner back within 1.5 s" in runner.stderr()

    run(main)


def test_setup_failure_exits_3_with_the_traceback_on_stderr(tmp_path: Path) -> None:
    async def main() -> None:
        async with shim(tmp_path, TEST_FAIL_SETUP="1") as runner:
            assert await runner.exit_code() == 3
            stderr = runner.stderr()
            assert "Traceback" in stderr
            assert "RuntimeError: boom in setup" in stderr

    run(main)


def test_bad_settings_exit_2(tmp_path: Path) -> None:
    async def main() -> None:
        async with shim(tmp_path, FALRT_MAX_MULTIPLEXING="zero") as runner:
            assert await runner.exit_code() == 2
            assert "FALRT_MAX_MULTIPLEXING" in runner.stderr()

    run(main)


def test_sync_handlers_can_run_inline_on_the_loop(tmp_path: Path) -> None:
    async def main() -> None:
        async with shim(tmp_path, FALRT_SYNC_HANDLERS="loop") as runner:
            await attached(runner)
            runner.assign("i1", "/", {"name": "inline"})
            assert output(await runner.result("i1")) == {"text": "hello inline"}
            runner.assign("i2", "/gen", {"name": "y", "n": 2})
            await runner.result("i2")
            partials = [m.partial.output.data for m in runner.seen if m.HasField("partial")]
            assert [json.loads(p) for p in partials] == [{"text": "y0"}, {"text": "y1"}]
            runner.assign("i3", "/log", {"name": "q"})
            await runner.result("i3")
            await runner.log_line("i3", "printed i3")

    run(main)


def test_a_runner_the_server_refuses_exits_4(tmp_path: Path) -> None:
    async def main() -> None:
        async with shim(tmp_path, refuse=True) as runner:
            assert await runner.exit_code() == 4
            assert "PERMISSION_DENIED" in runner.stderr()
            assert runner.marked("teardown") == ["TERMINATING"]

    run(main)


def test_the_shim_imports_nothing_of_the_control_plane() -> None:
    code = (
        "import sys, falrt.shim.main\n"
        "bad = [m for m in sys.modules if m.split('.')[0] in ('click', 'rich') or "
        "m.startswith(('falrt.server', 'falrt.store', 'falrt.backends', 'falrt.client', "
        "'falrt.autoscaler', 'falrt.cli', 'falrt.settings'))]\n"
        "assert not bad, bad\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
