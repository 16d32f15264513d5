"""Testing falrt apps: in-process (`AppClient`) or against a real local server
(`local_server`, from falrt/testing_server.py). See docs/testing-apps.md.

    with falrt.testing.AppClient(Hello) as app:
        assert app.call("/", {"name": "x"}) == {"greeting": "Hello, x!"}

`AppClient` calls an app's endpoints in-process, as a runner serves them. No server and no
subprocess: the app class is instantiated as the runner does (`falrt.sdk.app.instantiate`),
`setup()` runs once on entering the `with` block and `teardown()` once on leaving it.
Handlers are called by the runner's own code (`falrt.shim.invoke.Invoker`,
`falrt.shim.batching.Batcher`, `falrt.shim.realtime`): async handlers on an event loop of the
client's own (one background thread), sync handlers in a thread pool, each call in its own
`RequestContext` (so `self.current_request` works).

What a call sees is what a caller of a deployed app sees:
- arguments (dicts, msgspec Structs, pydantic models, ...) are encoded as the clients encode
  them (`falrt.client.payload`) and decoded and validated by the endpoint's codec: bad input
  raises `ValidationFailedError` with its `field_errors`;
- outputs come back JSON-decoded (dicts and lists), or as `output_type` when given;
- a handler that raises a `FalrtError` raises it unchanged; any other exception raises
  `RunnerServerError("ExcType: message")` with the traceback in `.traceback` (the original
  exception is its `__cause__`); an unknown path raises `NotFoundError`, the wrong kind of
  call `InvalidArgumentError`.
Not thread-safe: one test thread drives one client.
"""

from __future__ import annotations

import asyncio
import itertools
import queue
import threading
from collections.abc import Coroutine, Generator, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from types import TracebackType
from typing import Any, Generic, TypeVar

import msgspec

from falrt.client.endpoint import normalize_path
from falrt.client.payload import JSON, encode_arguments
from falrt.errors import FalrtError, InvalidArgumentError, NotFoundError
from falrt.sdk.app import App, instantiate
from falrt.sdk.codec import is_pydantic_model
from falrt.sdk.context import RequestContext, request_var
from falrt.sdk.endpoints import Endpoint, EndpointKind

# The runner's own code. (mypy cannot follow pyproject's package-dir mapping of falrt.shim
# in an editable install, hence the ignores; at run time these are the shim's modules.)
from falrt.shim.batching import Batcher  # type: ignore[import-not-found]
from falrt.shim.invoke import Invoker  # type: ignore[import-not-found]
from falrt.shim.realtime import RealtimeInputs  # type: ignore[import-not-found]
from falrt.shim.session import handler_error  # type: ignore[import-not-found]
from falrt.shim.threads import handler_thread_initializer  # type: ignore[import-not-found]
from falrt.testing_server import LocalServer, local_server

__all__ = ["AppClient", "LocalServer", "RealtimeSession", "local_server"]

A = TypeVar("A", bound=App)
_END = object()  # the end of a stream of outputs
_ids = itertools.count(1)
_STOP_TIMEOUT_S = 10.0  # for the tasks left on the client's loop to end


def _request_id() -> str:
    return f"test-{next(_ids)}"


def decode_output(data: bytes, output_type: type[Any] | None) -> Any:
    """An encoded output as a caller reads it: JSON-decoded, or validated as `output_type`."""
    if output_type is None:
        return msgspec.json.decode(data)
    if is_pydantic_model(output_type):
        return output_type.model_validate_json(data)
    return msgspec.json.decode(data, type=output_type)


async def _as_caller_sees(coro: Coroutine[Any, Any, Any]) -> Any:
    """Awaits a handler call; an exception that is not a FalrtError becomes the
    RunnerServerError a caller receives."""
    try:
        return await coro
    except FalrtError:
        raise
    except Exception as exc:
        raise handler_error(exc) from exc


class AppClient(Generic[A]):
    """Runs one instance of an App class in-process; use it as a context manager."""

    def __init__(self, app_class: type[A], *, threads: int = 4) -> None:
        """`threads`: the pool sync handlers run in (the runner sizes it to
        max_multiplexing)."""
        self.app_class = app_class
        self._threads = threads
        self._app: A | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._loop_thread: threading.Thread | None = None
        self._pool: ThreadPoolExecutor | None = None
        self._invoker: Invoker | None = None
        self._batchers: dict[str, Batcher] = {}
        self._endpoints = dict(app_class.endpoints())

    @property
    def app(self) -> A:
        """The app instance (after `setup()`), for assertions on its state."""
        if self._app is None:
            raise RuntimeError("the AppClient is not open: use it in a `with` block")
        return self._app

    def __enter__(self) -> AppClient[A]:
        """Instantiates the app and runs `setup()` (its exception propagates, and nothing
        is left running)."""
        app = instantiate(self.app_class)
        self._start_loop()
        try:
            app.setup()
        except BaseException:
            self._stop_loop()
            raise
        self._app = app
        # As in a runner: per-thread settings setup() made hold in the handler threads.
        self._pool = ThreadPoolExecutor(self._threads, thread_name_prefix="falrt-test-handler",
                                        initializer=handler_thread_initializer())
        self._invoker = Invoker(app, self._pool)
        self._batchers = {path: Batcher(ep, self._invoker)
                          for path, ep in self._endpoints.items() if ep.batched}
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        """Runs `teardown()` (its exception propagates) and stops the loop and the pool."""
        app = self._app
        try:
            if self._batchers:
                self._submit(self._close_batchers()).result()
            self._app = None
            if app is not None:
                app.teardown()
        finally:
            self._app = None
            self._stop_loop()
            if self._pool is not None:
                self._pool.shutdown(wait=True, cancel_futures=True)

    # -- calls ------------------------------------------------------------------------

    def call(
        self, path: str, arguments: Any, *, output_type: type[Any] | None = None,
        timeout: float | None = None,
    ) -> Any:
        """Calls a unary endpoint (batched ones too) and returns its output as a caller
        gets it. Raises what a caller would get (the module docstring)."""
        ep = self._endpoint(path, EndpointKind.UNARY)
        data = encode_arguments(arguments).data
        output = self._submit(self._unary(ep, data)).result(timeout)
        return decode_output(output, output_type)

    def stream(
        self, path: str, arguments: Any, *, output_type: type[Any] | None = None,
    ) -> Generator[Any, None, None]:
        """Calls a streaming endpoint: each partial output as it is produced. Closing the
        generator early cancels the handler, as a caller that goes away does."""
        ep = self._endpoint(path, EndpointKind.STREAM)
        data = encode_arguments(arguments).data
        items: queue.SimpleQueue[Any] = queue.SimpleQueue()
        cancel = threading.Event()

        async def send(chunk: bytes) -> None:
            items.put(chunk)

        future = self._submit(self._stream(ep, data, send, cancel))
        future.add_done_callback(lambda _: items.put(_END))
        try:
            while (item := items.get()) is not _END:
                yield decode_output(item, output_type)
            future.result()  # the handler's error, if any
        finally:
            cancel.set()
            future.cancel()

    def realtime(
        self, path: str = "/realtime", *, output_type: type[Any] | None = None,
    ) -> RealtimeSession:
        """Opens a session with a realtime endpoint (close it, or use `with`)."""
        ep = self._endpoint(path, EndpointKind.REALTIME)
        return RealtimeSession(self, ep, output_type)

    # -- inside --------------------------------------------------------------------------

    def _endpoint(self, path: str, kind: EndpointKind) -> Endpoint:
        path = normalize_path(path)
        ep = self._endpoints.get(path)
        if ep is None:
            known = ", ".join(sorted(self._endpoints))
            raise NotFoundError(f"path {path!r} not found (known paths: {known})")
        if ep.kind is not kind:
            raise InvalidArgumentError(
                f"{path} is a {ep.kind.value} endpoint, not a {kind.value} one")
        return ep

    def _submit(self, coro: Coroutine[Any, Any, Any]) -> Future[Any]:
        if self._loop is None or self._app is None:
            coro.close()
            raise RuntimeError("the AppClient is not open: use it in a `with` block")
        return asyncio.run_coroutine_threadsafe(coro, self._loop)

    async def _unary(self, ep: Endpoint, data: bytes) -> bytes:
        assert self._invoker is not None
        request_var.set(RequestContext(_request_id(), ep.path, threading.Event()))
        value = ep.input_codec.decode(data, False)
        if ep.batched:
            output = await _as_caller_sees(self._batchers[ep.path].call(value))
            return ep.output_codec.encode(output, False)
        result: bytes = await _as_caller_sees(self._invoker.unary(ep, value, False))
        return result

    async def _stream(self, ep: Endpoint, data: bytes, send: Any, cancel: threading.Event) -> None:
        assert self._invoker is not None
        request_var.set(RequestContext(_request_id(), ep.path, cancel))
        value = ep.input_codec.decode(data, False)
        await _as_caller_sees(self._invoker.stream(ep, value, False, send, cancel))

    async def _close_batchers(self) -> None:
        for batcher in self._batchers.values():
            batcher.close()

    def _start_loop(self) -> None:
        loop = asyncio.new_event_loop()
        thread = threading.Thread(target=loop.run_forever, name="falrt-test-loop", daemon=True)
        thread.start()
        self._loop, self._loop_thread = loop, thread

    def _stop_loop(self) -> None:
        loop, thread = self._loop, self._loop_thread
        self._loop = self._loop_thread = None
        if loop is None or thread is None:
            return
        # Tasks left behind (a batcher's loop, a stream the test did not finish) end first.
        asyncio.run_coroutine_threadsafe(_cancel_all(), loop).result(_STOP_TIMEOUT_S)
        loop.call_soon_threadsafe(loop.stop)
        thread.join()
        loop.close()


class RealtimeSession:
    """One session with a realtime endpoint: `send()` inputs, `receive()` outputs.

    The handler runs from the session's opening until `close()` ends its input (or it
    returns). `receive()` raises the handler's error as a caller would see it.
    """

    def __init__(self, client: AppClient[Any], ep: Endpoint, output_type: type[Any] | None):
        assert client._loop is not None
        self._loop = client._loop
        self._ep = ep
        self._output_type = output_type
        self._outputs: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._inputs = RealtimeInputs(ep, _no_credit)
        self._cancel = threading.Event()
        self._task: asyncio.Task[Any] | None = None  # the handler's, once it runs
        self._future = client._submit(self._serve(client.app))
        self._future.add_done_callback(lambda _: self._outputs.put(_END))

    def send(self, arguments: Any) -> None:
        """Queues one input for the handler (validated when the handler takes it)."""
        data = encode_arguments(arguments).data
        self._loop.call_soon_threadsafe(self._put, data)

    def receive(self, timeout: float | None = 10.0) -> Any:
        """The next output. Raises the handler's error once it failed, EOFError once it
        ended, TimeoutError after `timeout` seconds without an output."""
        try:
            item = self._outputs.get(timeout=timeout)
        except queue.Empty:
            raise TimeoutError(f"no output within {timeout} s") from None
        if item is _END:
            self._outputs.put(_END)  # for the next receive too
            self._future.result()
            raise EOFError("the realtime session has ended")
        return decode_output(item, self._output_type)

    def close(self, timeout: float | None = 10.0) -> list[Any]:
        """Ends the input and waits for the handler to return; the outputs not received
        yet. Raises the handler's error. Idempotent."""
        self._loop.call_soon_threadsafe(self._inputs.end)
        self._future.result(timeout)
        rest = []
        while (item := self._outputs.get()) is not _END:
            rest.append(decode_output(item, self._output_type))
        self._outputs.put(_END)
        return rest

    def __iter__(self) -> Iterator[Any]:
        """The outputs until the handler ends."""
        while True:
            try:
                yield self.receive(timeout=None)
            except EOFError:
                return

    def __enter__(self) -> RealtimeSession:
        return self

    def __exit__(self, *exc_info: object) -> None:
        if self._future.done():
            return
        self._loop.call_soon_threadsafe(self._inputs.end)
        try:
            self._future.result(10.0)
        except Exception:  # a failure the test did not ask for is not raised over its own
            if exc_info[0] is None:
                raise

    def _put(self, data: bytes) -> None:
        if not self._inputs.put(data, JSON) and self._task is not None:
            self._task.cancel()  # the buffer is full: the session closes, as on a runner

    async def _serve(self, app: App) -> None:
        request_var.set(RequestContext(_request_id(), self._ep.path, self._cancel))
        handler = getattr(app, self._ep.name)

        async def outputs() -> None:
            async for output in handler(self._inputs):
                self._outputs.put(self._ep.output_codec.encode(output, self._inputs.msgpack))

        self._task = asyncio.current_task()
        if self._inputs.overflow is not None:  # (too much was sent before the handler began)
            raise self._inputs.overflow
        try:
            await _as_caller_sees(outputs())
        except asyncio.CancelledError:
            if self._inputs.overflow is None or self._task is None:
                raise
            self._task.uncancel()
            raise self._inputs.overflow from None


async def _cancel_all() -> None:
    """Cancels every other task of the running loop and waits for them to end."""
    tasks = [task for task in asyncio.all_tasks() if task is not asyncio.current_task()]
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)


async def _no_credit() -> None:
    """A runner gives the server credit here; in-process there is no server to tell."""
