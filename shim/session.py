"""One runner's life on the RunnerLink stream: attach, serve, drain, tear down.

`RunnerSession.run()` dials the server, opens `RunnerLink.Attach`, sends Hello, and then:
- reads server events: Assign starts a request task (kept in `_inflight` by request id),
  CancelAssignment cancels one, Drain starts the shutdown sequence;
- beats every `heartbeat_s` with the free slot count;
- sends everything through one `Outbox` (one writer: order is guaranteed).

Admission (take capacity before work): an Assign is refused with a Result, never queued,
when the runner is draining or all `max_multiplexing` slots are busy (RunnerRefusedError:
the server re-queues it without counting an attempt), or when the path is unknown
(NotFoundError). A slot is released exactly once, when the handler has really stopped, just
before the request's Result is queued.

Cancellation of a request: an async handler's task is cancelled; a sync handler's
`RequestContext.cancelled` turns true and the thread runs on until the handler returns.
Either way the request then ends with a RequestCancelledError Result.

Shutdown (SIGTERM or Drain; a lost stream skips `handle_exit`), idempotent:
`handle_exit()` (in a thread) -> StateChange DRAINING -> no new work -> in-flight requests
finish within the grace period (then their tasks are cancelled, no Result: the server fails
them over) -> FALRT_RUNNER_STATE=TERMINATING, StateChange TERMINATING -> `teardown()` ->
flush -> half-close -> wait for the server to close. If the stream breaks at any point,
in-flight work is cancelled at once, `teardown()` runs, and `run()` returns.

Reconnection (FALRT_RECONNECT_S > 0; the docker backend sets it, since a container outlives
its server): every stream starts with the server's Welcome. When a welcomed stream is lost
and no shutdown was asked for, the runner abandons its in-flight work (no Result: the
restarted server re-queues what was in progress) and dials again, backing off from 0.1 s to
1 s, sending the same Hello, until a stream is welcomed or `reconnect_s` has passed since the
loss; then it shuts down as above. The app stays loaded throughout: a restarted server adopts
the runner warm.

The session's state (connecting, welcomed, reconnecting, failed, draining, terminating,
closed) is one `SessionState` in `self._lifecycle`, changed only through its transition
table (shim/lifecycle.py); an illegal move raises IllegalTransition.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import threading
import time
import traceback
from collections.abc import AsyncIterator, Callable
from concurrent.futures import Executor
from typing import Any

import grpc
from grpc import aio

from falrt.errors import (
    FalrtError,
    InvalidArgumentError,
    NotFoundError,
    RequestCancelledError,
    RunnerRefusedError,
    RunnerServerError,
)
from falrt.limits import by_reference, check_payload, payload_limit
from falrt.sdk.app import App
from falrt.sdk.codec import is_msgpack
from falrt.sdk.context import RequestContext, request_var
from falrt.sdk.endpoints import Endpoint, EndpointKind
from falrt.v1 import common_pb2, runner_pb2, runner_pb2_grpc

from . import logcapture, stream_call, wire
from .batching import Batcher
from .files import FilesConnection, RunnerFiles
from .gpu_errors import is_gpu_failure
from .gpu_stats import GpuProbe
from .invoke import Invoker
from .lifecycle import DIALLING, LINKED, SHUTTING_DOWN, Lifecycle, SessionState
from .outbox import Outbox
from .payloads import PayloadFiles
from .realtime import RealtimeInputs
from .settings import ShimSettings
from .tracing import HandlerTracing

__all__ = ["EXIT_REFUSED", "RunnerSession"]

log = logging.getLogger(__name__)

EXIT_OK = 0
EXIT_REFUSED = 4  # the server refused the runner (bad token, bad Hello)
EXIT_UNHEALTHY = 5  # the app's health check failed failure_threshold times in a row
CLOSE_TIMEOUT_S = 5.0
RECONNECT_DELAY_S = 0.1  # the first wait before dialling a lost server again; doubles
MAX_RECONNECT_DELAY_S = 1.0
_REFUSED_CODES = (
    grpc.StatusCode.PERMISSION_DENIED,
    grpc.StatusCode.UNAUTHENTICATED,
    grpc.StatusCode.INVALID_ARGUMENT,
)


class _Inflight:
    """A request being served. `client_cancelled`: the server cancelled it (answer with
    client_cancelled). `abandoned`: shutdown gave up on it (no answer)."""

    __slots__ = ("abandoned", "cancel", "client_cancelled", "in_thread", "log", "task")

    def __init__(self, request_id: str, outbox: Outbox, in_thread: bool) -> None:
        self.cancel = threading.Event()
        self.log = logcapture.LogTarget(request_id, outbox.offer_from_any_thread)
        self.in_thread = in_thread
        self.client_cancelled = False
        self.abandoned = False
        self.task: asyncio.Task[None] | None = None


def handler_error(exc: BaseException) -> RunnerServerError:
    """The error a handler exception travels as: "ExcType: msg" plus its traceback."""
    text = "".join(traceback.format_exception(exc))
    return RunnerServerError(f"{type(exc).__name__}: {exc}", traceback=text)


class RunnerSession:
    """Serves one App instance over one Attach stream. Loop-affine; see the module docstring."""

    def __init__(
        self, settings: ShimSettings, app: App, pool: Executor,
        tracing: HandlerTracing | None = None,
    ) -> None:
        self._settings = settings
        self._tracing = tracing or HandlerTracing()
        self._payload_limit = payload_limit(settings.max_message_bytes)
        self._payload_ref_bytes = settings.payload_ref_bytes
        # One Files client for the app's File fields and its large payloads (shim/payloads.py).
        files = FilesConnection(local=settings.files_local)
        self._payloads = PayloadFiles(settings.payload_expiry_s, files)
        self._app = app
        self._endpoints: dict[str, Endpoint] = dict(type(app).endpoints())
        inline = settings.sync_handlers == "loop"
        self._invoker = Invoker(app, None if inline else pool,
                                RunnerFiles.for_app(type(app), files))
        self._batchers = {path: Batcher(ep, self._invoker)
                          for path, ep in self._endpoints.items() if ep.batched}
        self._in_thread = not inline
        self._inflight: dict[str, _Inflight] = {}
        self._sessions: dict[str, RealtimeInputs] = {}  # realtime sessions' inputs
        self._lifecycle = Lifecycle()
        self._shutdown: asyncio.Task[None] | None = None  # the shutdown sequence, once started
        self._call: Any = None
        self._outbox: Outbox | None = None
        self._lost = asyncio.Event()  # the current stream has ended
        self._gpu_probe: GpuProbe | None = None
        self.exit_code = EXIT_OK
        self.threads_abandoned = False

    @property
    def _state(self) -> SessionState:
        return self._lifecycle.state

    @property
    def outbox(self) -> Outbox:
        assert self._outbox is not None, "the session is not running"
        return self._outbox

    # -- the stream ------------------------------------------------------------------

    async def run(self) -> int:
        """Serves until shutdown completed, or the server is gone for good; returns the exit
        code. With `reconnect_s`, a lost stream is dialled again (the module docstring)."""
        loop = asyncio.get_running_loop()
        health = self._health_endpoint()
        checker = asyncio.create_task(self._check_health(health)) if health else None
        reconnect_s = self._settings.reconnect_s
        window_end: float | None = None  # dial until then (from the last welcomed stream's end)
        delay = RECONNECT_DELAY_S
        while True:
            await self._attach(refusal_is_final=window_end is None)
            welcomed = self._state is SessionState.WELCOMED
            if welcomed or window_end is None:  # (a first dial may meet a restarting server)
                window_end, delay = loop.time() + reconnect_s, RECONNECT_DELAY_S
            if not self._may_redial(window_end):
                break
            if welcomed:
                self._lifecycle.move_to(SessionState.RECONNECTING)
                log.warning("lost the server; its in-flight requests are abandoned (the server "
                            "retries them); dialling %s again for %g s", self._settings.server,
                            reconnect_s)
                await self._abandon_inflight()
            with contextlib.suppress(TimeoutError):  # a shutdown or a failure ends the wait
                wait = min(delay, window_end - loop.time())
                await asyncio.wait_for(self._lifecycle.leaves(DIALLING), wait)
            delay = min(delay * 2, MAX_RECONNECT_DELAY_S)
        if reconnect_s and self._state in LINKED:
            log.warning("the server did not take this runner back within %g s; exiting",
                        reconnect_s)
        await self._start_shutdown(handle_exit=False)
        if checker is not None:
            checker.cancel()
            await asyncio.gather(checker, return_exceptions=True)
        return self.exit_code

    def _may_redial(self, window_end: float) -> bool:
        return asyncio.get_running_loop().time() < window_end and self._state in LINKED

    def _fail(self, exit_code: int) -> None:
        """The runner cannot go on: it exits with `exit_code`, dialling no more. During
        shutdown only the exit code changes (the sequence already runs)."""
        self.exit_code = exit_code
        if self._state in LINKED:
            self._lifecycle.move_to(SessionState.FAILED)

    async def _attach(self, refusal_is_final: bool) -> None:
        """One Attach stream: Hello, then server events until it ends (the state is then
        still WELCOMED if the server welcomed this runner on it)."""
        self._outbox = Outbox(asyncio.get_running_loop())
        self._lost = asyncio.Event()
        async with _dial(self._settings) as call:
            self._call = call
            await self.outbox.send(self._hello())
            helpers = [
                asyncio.create_task(self.outbox.pump(self._call)),
                asyncio.create_task(self._heartbeat()),
            ]
            await self._read(self._call, refusal_is_final)
            self._lost.set()
            for task in helpers:
                task.cancel()
            await asyncio.gather(*helpers, return_exceptions=True)

    def _hello(self) -> runner_pb2.RunnerMessage:
        s = self._settings
        return wire.hello(s.runner_id, s.token, s.max_multiplexing, list(self._endpoints))

    async def _read(self, call: Any, refusal_is_final: bool) -> None:
        """Handles server events until the stream ends (for any reason)."""
        try:
            async for message in call:
                try:
                    events = wire.events_from_proto(message)
                except wire.UnknownEvent as exc:
                    log.warning("%s", exc)
                    continue
                for event in events:
                    await self._on_event(event)
        except aio.AioRpcError as exc:
            self._report_stream_end(exc, refusal_is_final)
        except asyncio.CancelledError:
            task = asyncio.current_task()
            if task is None or task.cancelling():
                raise
            # Not this task: the session cancelled the call (a failed health check, a server
            # that did not close in time), and grpc ends the iteration so. The stream is over.

    def _report_stream_end(self, exc: aio.AioRpcError, refusal_is_final: bool) -> None:
        code = exc.code()
        if code in _REFUSED_CODES and refusal_is_final:
            log.error("the server refused this runner: %s: %s", code.name, exc.details())
            self._fail(EXIT_REFUSED)
        elif self._state is not SessionState.WELCOMED and not refusal_is_final:
            # dialling again: not back yet
            log.debug("the server did not take this runner: %s: %s", code.name, exc.details())
        elif self._state not in SHUTTING_DOWN:
            log.warning("runner stream ended: %s: %s", code.name, exc.details())

    async def _on_event(self, event: wire.ServerEvent) -> None:
        match event:
            case wire.Welcome(server_id=server_id):
                self._on_welcome(server_id)
            case wire.Assign():
                await self._admit(event)
            case wire.Cancel(request_id=request_id):
                self._cancel(request_id)
            case wire.Drain():
                self.request_shutdown()  # as in fal, every stop of a runner calls handle_exit
            case wire.RealtimeStart():
                await self._open_realtime(event)
            case wire.RealtimeInput() | wire.RealtimeEnd():
                self._realtime_input(event)
            case _:
                raise AssertionError(f"unhandled server event {event!r}")

    def _on_welcome(self, server_id: str) -> None:
        if self._state is SessionState.RECONNECTING:
            log.info("the server (%s) took this runner back", server_id)
        if self._state in DIALLING:  # (once shutting down or failed, a Welcome changes nothing)
            self._lifecycle.move_to(SessionState.WELCOMED)

    def _realtime_input(self, event: wire.RealtimeInput | wire.RealtimeEnd) -> None:
        inputs = self._sessions.get(event.session_id)
        if inputs is None:
            return
        if isinstance(event, wire.RealtimeEnd):
            inputs.end()
        elif not inputs.put(event.data, event.content_type):
            self._cancel(event.session_id)  # the buffer is full: the session closes with why

    async def _heartbeat(self) -> None:
        if self._gpu_probe is None:
            self._gpu_probe = await asyncio.to_thread(GpuProbe)
        probe = self._gpu_probe
        while True:
            await asyncio.sleep(self._settings.heartbeat_s)
            free = self._settings.max_multiplexing - len(self._inflight)
            gpus = await asyncio.to_thread(probe.read) if probe.active else []
            await self.outbox.send(wire.heartbeat(max(free, 0), gpus))

    # -- realtime sessions (shim/realtime.py) -----------------------------------------

    async def _open_realtime(self, start: wire.RealtimeStart) -> None:
        sid = start.session_id
        refusal = self._refusal(start)
        ep = self._endpoints.get(start.path)
        if refusal is None and ep is not None and ep.kind is not EndpointKind.REALTIME:
            refusal = InvalidArgumentError(f"{start.path} is not a realtime endpoint")
        if refusal is not None or ep is None or sid in self._inflight:
            error = refusal or InvalidArgumentError(f"session {sid} is open already")
            await self.outbox.send(wire.realtime_closed(sid, error))
            return
        entry = _Inflight(sid, self.outbox, in_thread=False)
        async def taken() -> None:  # never dropped: the server waits for this credit
            await self.outbox.send(wire.realtime_credit(sid, 1))

        inputs = self._sessions[sid] = RealtimeInputs(ep, taken)
        self._inflight[sid] = entry
        entry.task = asyncio.create_task(self._serve_realtime(sid, ep, entry, inputs))

    async def _serve_realtime(
        self, sid: str, ep: Endpoint, entry: _Inflight, inputs: RealtimeInputs
    ) -> None:
        request_var.set(RequestContext(sid, ep.path, entry.cancel))
        logcapture.bind(entry.log)
        error: FalrtError | None = None
        try:
            async for output in getattr(self._app, ep.name)(inputs):
                ctype = "application/msgpack" if inputs.msgpack else "application/json"
                data = ep.output_codec.encode(output, inputs.msgpack)
                check_payload(len(data), self._payload_limit, "realtime output")
                await self.outbox.send(wire.realtime_output(sid, data, ctype))
        except asyncio.CancelledError:
            task = asyncio.current_task()
            if entry.abandoned or task is None:
                raise
            task.uncancel()
            error = inputs.overflow or RequestCancelledError("the session was cancelled")
        except FalrtError as exc:
            error = exc
        except Exception as exc:
            error = handler_error(exc)
        finally:
            entry.log.flush()
            del self._inflight[sid]
            self._sessions.pop(sid, None)
        await self.outbox.send(wire.realtime_closed(sid, error))

    # -- the health check ------------------------------------------------------------

    def _health_endpoint(self) -> Endpoint | None:
        for ep in self._endpoints.values():
            if ep.health_check is not None and ep.health_check.call_regularly:
                return ep
        return None

    async def _check_health(self, ep: Endpoint) -> None:
        """Calls the health check endpoint regularly; after failure_threshold failures in a
        row the runner stops (the server replaces it and retries its requests)."""
        check = ep.health_check
        assert check is not None
        await asyncio.sleep(check.start_period_seconds)
        failures = 0
        while self._state not in SHUTTING_DOWN:
            reason = await self._probe(ep, check.timeout_seconds)
            failures = failures + 1 if reason else 0
            if reason:
                log.warning("health check %s failed (%d of %d): %s", ep.path, failures,
                            check.failure_threshold, reason)
            if failures >= check.failure_threshold:
                log.error("health check failed %d times in a row (last: %s); this runner "
                          "stops", failures, reason)
                self._fail(EXIT_UNHEALTHY)
                self._call.cancel()  # the server sees the runner go and retries its requests
                return
            await asyncio.sleep(check.period_seconds)

    async def _probe(self, ep: Endpoint, timeout_s: float) -> str:
        """"" when the health check passes, else why it failed."""
        try:
            value = ep.input_codec.decode(b"{}", False)
            await asyncio.wait_for(self._invoker.unary(ep, value, False), timeout_s)
        except TimeoutError:
            return f"no answer within {timeout_s:g} s"
        except Exception as exc:
            return f"{type(exc).__name__}: {exc}"
        return ""

    # -- requests --------------------------------------------------------------------

    def _refusal(self, assign: wire.Assign | wire.RealtimeStart) -> FalrtError | None:
        if self._state in SHUTTING_DOWN:
            return RunnerRefusedError("runner is draining; retry on another runner")
        if len(self._inflight) >= self._settings.max_multiplexing:
            slots = self._settings.max_multiplexing
            return RunnerRefusedError(f"runner has no free slot ({slots} in flight)")
        if assign.path not in self._endpoints:
            known = ", ".join(sorted(self._endpoints))
            return NotFoundError(f"path {assign.path!r} not found (known paths: {known})")
        realtime = self._endpoints[assign.path].kind is EndpointKind.REALTIME
        if isinstance(assign, wire.Assign) and realtime:
            return InvalidArgumentError(
                f"{assign.path} is a realtime endpoint: open a Queue.Realtime stream to it")
        return None

    async def _admit(self, assign: wire.Assign) -> None:
        if assign.request_id in self._inflight:
            log.warning("ignored a second Assign of request %s", assign.request_id)
            return
        refusal = self._refusal(assign)
        if refusal is not None:
            await self.outbox.send(wire.error_result(assign.request_id, refusal))
            return
        ep = self._endpoints[assign.path]
        in_thread = self._in_thread and not ep.is_async and not ep.batched
        entry = _Inflight(assign.request_id, self.outbox, in_thread)
        self._inflight[assign.request_id] = entry
        entry.task = asyncio.create_task(self._serve(assign, ep, entry))

    def _cancel(self, request_id: str) -> None:
        entry = self._inflight.get(request_id)
        if entry is None or entry.client_cancelled:
            return
        entry.client_cancelled = True
        entry.cancel.set()
        if not entry.in_thread:
            # Scheduled, not immediate: a task cancelled before its first step would never
            # enter _serve's try block, and its slot would leak.
            asyncio.get_running_loop().call_soon(self._cancel_task, request_id, entry)

    def _cancel_task(self, request_id: str, entry: _Inflight) -> None:
        if self._inflight.get(request_id) is entry and entry.task is not None:
            entry.task.cancel()

    async def _serve(self, assign: wire.Assign, ep: Endpoint, entry: _Inflight) -> None:
        """One request, in its own task: validate, run, answer. Frees the slot exactly once."""
        context = RequestContext(assign.request_id, assign.path, entry.cancel)
        request_var.set(context)
        logcapture.bind(entry.log)
        try:
            with self._tracing.span(assign.traceparent, assign.request_id, assign.path):
                result = await self._outcome(assign, ep, entry)
        except asyncio.CancelledError:
            task = asyncio.current_task()
            if entry.abandoned or not entry.client_cancelled or task is None:
                raise
            task.uncancel()
            result = wire.error_result(assign.request_id, RequestCancelledError("cancelled"))
        finally:
            entry.log.flush()
            del self._inflight[assign.request_id]
        result.needs_retry, result.stop_runner = context.needs_retry, context.stop_runner
        await self.outbox.send(result)

    async def _outcome(
        self, assign: wire.Assign, ep: Endpoint, entry: _Inflight
    ) -> wire.Result:
        request_id = assign.request_id
        started = time.perf_counter()
        try:
            msgpack = is_msgpack(assign.content_type)
            data = await self._payloads.read(assign.file_id) if assign.file_id else assign.data
            value = ep.input_codec.decode(data, msgpack)
            del data  # (a large input is not held while the handler runs)
            started = time.perf_counter()
            output = await self._run_handler(assign, ep, entry, value, msgpack)
            if output is not None and by_reference(len(output), self._payload_ref_bytes):
                return await self._by_reference(assign, output, started)
            if output is not None:
                check_payload(len(output), self._payload_limit, "output")
        except FalrtError as exc:
            return wire.error_result(request_id, exc, time.perf_counter() - started)
        except Exception as exc:
            context = request_var.get()
            if is_gpu_failure(exc) and context is not None:
                # fal: the runner is replaced and the request retried elsewhere
                log.error("request %s hit a GPU failure (%s: %s); this runner will stop",
                          request_id, type(exc).__name__, exc)
                context.needs_retry, context.stop_runner = True, True
            return wire.error_result(request_id, handler_error(exc), time.perf_counter() - started)
        if entry.client_cancelled:
            return wire.error_result(request_id, RequestCancelledError("cancelled"))
        content_type = assign.content_type or "application/json"
        return wire.ok_result(request_id, output, content_type, time.perf_counter() - started)

    async def _by_reference(
        self, assign: wire.Assign, output: bytes, started: float
    ) -> wire.Result:
        """The Result of an output over the size that travels inline: stored in a file
        first. When the file cannot be stored (the store's disk is full, say) an output that
        fits in a message goes inline after all, as it would without references."""
        content_type = assign.content_type or "application/json"
        try:
            file = await self._payloads.store(output, content_type)
        except FalrtError as exc:
            if len(output) > self._payload_limit:
                raise
            log.warning("request %s: %s; it goes inline", assign.request_id, exc)
            return wire.ok_result(assign.request_id, output, content_type,
                                  time.perf_counter() - started)
        return wire.ref_result(assign.request_id, file, content_type,
                               time.perf_counter() - started)

    async def _run_handler(
        self, assign: wire.Assign, ep: Endpoint, entry: _Inflight, value: Any, msgpack: bool
    ) -> bytes | None:
        if ep.batched:
            output = await self._batchers[ep.path].call(value)
            return ep.output_codec.encode(output, msgpack)
        if ep.kind is EndpointKind.UNARY:
            return await self._invoker.unary(ep, value, msgpack)
        content_type = assign.content_type or "application/json"

        async def send(data: bytes) -> None:
            check_payload(len(data), self._payload_limit, "partial output")
            await self.outbox.send(wire.partial(assign.request_id, data, content_type))

        await self._invoker.stream(ep, value, msgpack, send, entry.cancel)
        return None

    # -- shutdown --------------------------------------------------------------------

    def request_shutdown(self, handle_exit: bool = True) -> None:
        """Starts the shutdown sequence (SIGTERM: with handle_exit): the state moves to
        DRAINING. Idempotent: once shutting down, it does nothing. Loop thread only."""
        if self._state not in SHUTTING_DOWN:
            self._lifecycle.move_to(SessionState.DRAINING)
            self._shutdown = asyncio.create_task(self._shut_down(handle_exit))

    async def _start_shutdown(self, handle_exit: bool) -> None:
        self.request_shutdown(handle_exit)
        assert self._shutdown is not None
        await self._shutdown

    async def _shut_down(self, handle_exit: bool) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self._settings.grace_period_s
        exit_hook = _in_thread(self._app.handle_exit) if handle_exit else None
        await self._send_state(common_pb2.RUNNER_STATE_DRAINING)
        await self._wait_inflight(deadline)
        if exit_hook is not None:
            await _finish_hook(exit_hook, "handle_exit", max(deadline - loop.time(), 0.0))
        self._lifecycle.move_to(SessionState.TERMINATING)
        os.environ["FALRT_RUNNER_STATE"] = "TERMINATING"
        await self._send_state(common_pb2.RUNNER_STATE_TERMINATING)
        for batcher in self._batchers.values():
            batcher.close()
        await _finish_hook(_in_thread(self._app.teardown), "teardown", None)
        await self._close_stream()
        self._lifecycle.move_to(SessionState.CLOSED)

    async def _send_state(self, state: common_pb2.RunnerState.ValueType) -> None:
        if not self._lost.is_set():
            await self.outbox.send(wire.state_change(state))

    async def _wait_inflight(self, deadline: float) -> None:
        """Waits for in-flight requests until `deadline` or the stream is lost, then
        abandons what is left."""
        loop = asyncio.get_running_loop()
        lost = asyncio.create_task(self._lost.wait())
        try:
            while self._inflight and not self._lost.is_set():
                remaining = deadline - loop.time()
                if remaining <= 0:
                    break
                tasks = {e.task for e in self._inflight.values() if e.task is not None}
                await asyncio.wait({*tasks, lost}, timeout=remaining, return_when="FIRST_COMPLETED")
        finally:
            lost.cancel()
        await self._abandon_inflight()

    async def _abandon_inflight(self) -> None:
        tasks = []
        for entry in list(self._inflight.values()):
            entry.abandoned = True
            entry.cancel.set()
            self.threads_abandoned |= entry.in_thread
            if entry.task is not None:
                entry.task.cancel()
                tasks.append(entry.task)
        if tasks:
            await asyncio.wait(tasks, timeout=CLOSE_TIMEOUT_S)

    async def _close_stream(self) -> None:
        if self._lost.is_set() or self._call is None:
            return
        if await self.outbox.flush(CLOSE_TIMEOUT_S):
            try:
                await self._call.done_writing()
            except Exception as exc:  # the stream is already gone
                log.debug("half-close failed: %r", exc)
        try:
            await asyncio.wait_for(self._lost.wait(), CLOSE_TIMEOUT_S)
        except TimeoutError:
            self._call.cancel()


def _in_thread(hook: Callable[[], None]) -> asyncio.Future[None]:
    """Runs a lifecycle hook in a one-off thread (not the handler pool, which may be busy)."""
    return asyncio.ensure_future(asyncio.to_thread(hook))


async def _finish_hook(future: asyncio.Future[None], name: str, timeout_s: float | None) -> None:
    """Awaits a hook; its exception or overrun is logged, never raised."""
    try:
        await asyncio.wait_for(asyncio.shield(future), timeout_s)
    except TimeoutError:
        log.warning("%s() still running after the grace period; going on", name)
    except Exception:
        log.exception("%s() raised", name)


def _dial(settings: ShimSettings) -> contextlib.AbstractAsyncContextManager[Any]:
    """The Attach call, over the link the settings name (FALRT_SERVER), closed at the end."""
    if settings.link == "stream":
        return stream_call.dial(settings.server, settings.max_message_bytes)
    return _grpc_call(settings)


@contextlib.asynccontextmanager
async def _grpc_call(settings: ShimSettings) -> AsyncIterator[Any]:
    limit = settings.max_message_bytes
    options = [
        ("grpc.max_send_message_length", limit),
        ("grpc.max_receive_message_length", limit),
    ]
    async with _channel(settings, options) as channel:
        yield runner_pb2_grpc.RunnerLinkStub(channel).Attach()


def _channel(settings: ShimSettings, options: list[tuple[str, Any]]) -> aio.Channel:
    """The channel to the server: TLS verified against the roots the server gave (with the
    runner's own certificate under mutual TLS), else plaintext."""
    tls = settings.tls
    if tls is None:
        return aio.insecure_channel(settings.server, options=options)
    credentials = grpc.ssl_channel_credentials(
        tls.roots.encode(), tls.key.encode() or None, tls.cert.encode() or None)
    if tls.server_name:
        options = [*options, ("grpc.ssl_target_name_override", tls.server_name)]
    return aio.secure_channel(settings.server, credentials, options=options)
