"""Tests of falrt.testing: AppClient runs endpoints in-process as a runner does; local_server
runs a real server for integration tests."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import msgspec
import pytest

import falrt
from examples.hello import Hello, Output
from examples.stream import Token, Tokens
from falrt.errors import (
    InvalidArgumentError,
    NotFoundError,
    RequestCancelledError,
    ResourceExhaustedError,
    RunnerServerError,
    ValidationFailedError,
)
from falrt.testing import AppClient, local_server

REPO = Path(__file__).resolve().parent.parent


class Numbers(msgspec.Struct):
    a: int
    b: int = 0


class Sum(msgspec.Struct):
    total: int
    request_id: str = ""


class Line(msgspec.Struct):
    text: str
    fail: bool = False


class Counter(falrt.App):
    """Counts its setups and teardowns in class attributes (one instance per client)."""

    setups = 0
    teardowns = 0

    def setup(self) -> None:
        type(self).setups += 1
        self.ready = True

    def teardown(self) -> None:
        type(self).teardowns += 1

    @falrt.endpoint("/add")
    def add(self, numbers: Numbers) -> Sum:
        if numbers.a < 0:
            raise ValueError("a must not be negative")
        context = self.current_request
        return Sum(total=numbers.a + numbers.b, request_id=context.request_id if context else "")

    @falrt.endpoint("/async-add")
    async def async_add(self, numbers: Numbers) -> Sum:
        await asyncio.sleep(0)
        return Sum(total=numbers.a + numbers.b)

    @falrt.endpoint("/refuse")
    def refuse(self, numbers: Numbers) -> Sum:
        raise RequestCancelledError("given up")

    @falrt.endpoint("/count")
    def count(self, numbers: Numbers) -> Iterator[Sum]:
        for n in range(numbers.a):
            yield Sum(total=n)
        if numbers.b:
            raise RuntimeError("stream broke")

    @falrt.endpoint("/chat", realtime=True)
    async def chat(self, lines: AsyncIterator[Line]) -> AsyncIterator[Line]:
        async for line in lines:
            if line.fail:
                raise RuntimeError(f"cannot answer {line.text!r}")
            yield Line(text=line.text.upper())


@pytest.mark.unit
def test_hello_answers_as_a_caller_sees_it() -> None:
    with AppClient(Hello) as app:
        assert app.call("/", {"name": "x"}) == {"greeting": "Hello, x!"}
        assert app.call("/", {"name": "y"}, output_type=Output) == Output("Hello, y!")
        assert app.app.template == "Hello, {name}!"


@pytest.mark.unit
def test_setup_runs_once_and_teardown_at_exit() -> None:
    Counter.setups = Counter.teardowns = 0
    with AppClient(Counter) as app:
        for n in range(3):
            assert app.call("/add", Numbers(a=n, b=1))["total"] == n + 1
        assert (Counter.setups, Counter.teardowns) == (1, 0)
    assert (Counter.setups, Counter.teardowns) == (1, 1)


@pytest.mark.unit
def test_each_call_has_its_own_request_context() -> None:
    with AppClient(Counter) as app:
        first = app.call("/add", {"a": 1})["request_id"]
        second = app.call("/add", {"a": 1})["request_id"]
    assert first and second and first != second


@pytest.mark.unit
def test_bad_input_fails_validation_with_its_fields() -> None:
    with AppClient(Counter) as app:
        with pytest.raises(ValidationFailedError) as missing:
            app.call("/add", {"b": 1})
        with pytest.raises(ValidationFailedError) as wrong_type:
            app.call("/add", {"a": "one"})
    assert list(missing.value.field_errors) == [("$.a", "field required")]
    assert [loc for loc, _ in wrong_type.value.field_errors] == ["$.a"]


@pytest.mark.unit
def test_a_handler_exception_is_the_runner_server_error_a_caller_gets() -> None:
    with AppClient(Counter) as app, pytest.raises(RunnerServerError) as caught:
        app.call("/add", {"a": -1})
    assert str(caught.value) == "ValueError: a must not be negative"
    assert "Traceback" in (caught.value.traceback or "")
    assert isinstance(caught.value.__cause__, ValueError)


@pytest.mark.unit
def test_a_falrt_error_from_a_handler_is_raised_unchanged() -> None:
    with AppClient(Counter) as app, pytest.raises(RequestCancelledError, match="given up"):
        app.call("/refuse", {"a": 1})


@pytest.mark.unit
def test_async_handlers_run_on_the_clients_loop() -> None:
    with AppClient(Counter) as app:
        assert app.call("/async-add", {"a": 2, "b": 3}, output_type=Sum) == Sum(total=5)


@pytest.mark.unit
def test_unknown_paths_and_wrong_kinds_are_refused() -> None:
    with AppClient(Counter) as app:
        with pytest.raises(NotFoundError):
            app.call("/nowhere", {})
        with pytest.raises(InvalidArgumentError):
            app.call("/chat", {"text": "x"})
        with pytest.raises(InvalidArgumentError):
            list(app.stream("/add", {"a": 1}))


@pytest.mark.unit
def test_streaming_yields_each_partial_output() -> None:
    with AppClient(Counter) as app:
        assert [s["total"] for s in app.stream("/count", {"a": 3})] == [0, 1, 2]
        outputs = []
        with pytest.raises(RunnerServerError, match="RuntimeError: stream broke"):
            for item in app.stream("/count", {"a": 2, "b": 1}):
                outputs.append(item)
        assert len(outputs) == 2


@pytest.mark.unit
def test_an_async_streaming_example_streams_typed_tokens() -> None:
    with AppClient(Tokens) as app:
        tokens = list(app.stream("/", {"sentence": "a b c", "delay_s": 0}, output_type=Token))
    assert [t.text_so_far for t in tokens] == ["a", "a b", "a b c"]


@pytest.mark.unit
def test_realtime_sessions_answer_each_input() -> None:
    with AppClient(Counter) as app, app.realtime("/chat") as session:
        session.send({"text": "hi"})
        assert session.receive() == {"text": "HI", "fail": False}
        session.send(Line(text="there"))
        assert session.close() == [{"text": "THERE", "fail": False}]


@pytest.mark.unit
def test_a_failing_realtime_handler_closes_the_session_with_its_error() -> None:
    with AppClient(Counter) as app:
        session = app.realtime("/chat", output_type=Line)
        session.send({"text": "x", "fail": True})
        with pytest.raises(RunnerServerError, match="RuntimeError: cannot answer 'x'"):
            session.receive()


@pytest.mark.unit
def test_setup_failure_propagates_and_leaves_nothing_running() -> None:
    class Broken(falrt.App):
        def setup(self) -> None:
            raise RuntimeError("model weights missing")

        @falrt.endpoint("/")
        def run(self, numbers: Numbers) -> Sum:
            return Sum(total=0)

    before = threading.active_count()
    with pytest.raises(RuntimeError, match="weights missing"), AppClient(Broken):
        pass
    assert threading.active_count() == before


class Item(msgspec.Struct):
    n: int


class Batched(falrt.App):
    @falrt.endpoint("/", max_batch_size=4, max_batch_wait_ms=1)
    def double(self, items: list[Item]) -> list[Item]:
        return [Item(n=item.n * 2) for item in items]


@pytest.mark.unit
def test_batched_endpoints_answer_each_call_with_its_own_item() -> None:
    with AppClient(Batched) as app:
        assert app.call("/", {"n": 21}) == {"n": 42}


@pytest.mark.unit
def test_pydantic_models_go_in_and_come_out() -> None:
    pydantic = pytest.importorskip("pydantic")

    class Question(pydantic.BaseModel):  # type: ignore[name-defined,misc]
        text: str

    class Answer(pydantic.BaseModel):  # type: ignore[name-defined,misc]
        length: int

    def measure(self: falrt.App, question: Question) -> Answer:
        return Answer(length=len(question.text))

    # (the types are local: given as objects, since this module's annotations are strings)
    measure.__annotations__ = {"question": Question, "return": Answer}
    measure_app = type("Measure", (falrt.App,), {"measure": falrt.endpoint("/")(measure)})

    with AppClient(measure_app) as app:
        assert app.call("/", Question(text="abc"), output_type=Answer) == Answer(length=3)
        with pytest.raises(ValidationFailedError) as caught:
            app.call("/", {"text": 5})
    assert [loc for loc, _ in caught.value.field_errors] == ["$.text"]


class Endless(falrt.App):
    stopped = threading.Event()

    @falrt.endpoint("/")
    def numbers(self, numbers: Numbers) -> Iterator[Sum]:
        n = 0
        try:
            while True:
                n += 1
                yield Sum(total=n)
        finally:
            type(self).stopped.set()


@pytest.mark.unit
def test_closing_a_stream_early_stops_its_handler() -> None:
    with AppClient(Endless) as app:
        stream = app.stream("/", {"a": 0})
        assert next(stream) == {"total": 1, "request_id": ""}
        stream.close()
        assert Endless.stopped.wait(5)


class Sleepy(falrt.App):
    @falrt.endpoint("/realtime", realtime=True)
    async def chat(self, lines: AsyncIterator[Line]) -> AsyncIterator[Line]:
        await asyncio.sleep(60)  # never reads: the inputs pile up
        async for line in lines:
            yield line


@pytest.mark.unit
def test_a_realtime_session_that_is_sent_too_much_closes_as_on_a_runner() -> None:
    with AppClient(Sleepy) as app:
        session = app.realtime()
        for n in range(100):
            session.send({"text": str(n)})
        with pytest.raises(ResourceExhaustedError, match="send slower"):
            session.receive()


@pytest.mark.e2e
def test_local_server_deploys_hello_and_answers_calls(tmp_path: Path) -> None:
    with local_server(tmp_path) as server:
        endpoint_id = server.deploy(str(REPO / "examples" / "hello.py") + "::Hello")
        with server.client() as client:
            assert client.run(endpoint_id, {"name": "e2e"}, timeout=60) == {
                "greeting": "Hello, e2e!"}

