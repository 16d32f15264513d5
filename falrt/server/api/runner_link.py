"""The internal RunnerLink service: one bidirectional stream per runner.

The runner's first message must be Hello with the id and token the server gave it; any
other first message, or a wrong token, ends the stream with PERMISSION_DENIED; else the
server's first message is Welcome (a runner that may reconnect knows it was taken). After that,
one task reads the runner's messages and hands them to the dispatcher, while the RPC
itself writes the runner's outbox (assignments, cancels, drain) to the stream in order
(`_ready`: what waits goes out together). When either side ends, the runner's
in-flight work is failed over.

FetchBundle gives a runner on another host (the ray backend) its bundle, packed again from
the server's bundle folder, against the same id and token (PERMISSION_DENIED otherwise).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncGenerator, AsyncIterator
from typing import Any, NoReturn, Protocol

import grpc
from google.protobuf.message import DecodeError
from grpc import aio

from falrt import bundle, errors
from falrt.limits import ENVELOPE_BYTES
from falrt.server.api import convert
from falrt.server.api.rpc import server_stream
from falrt.server.fleet.fleet import Fleet
from falrt.server.queue.dispatch import Dispatcher
from falrt.server.state.runners import (
    AssignEvent,
    CancelEvent,
    CloseEvent,
    DrainEvent,
    OutboxEvent,
    RealtimeEndEvent,
    RealtimeInputEvent,
    RunnerHandle,
)
from falrt.server.state.work import RealtimeSession, WorkItem
from falrt.v1 import common_pb2, runner_pb2, runner_pb2_grpc

log = logging.getLogger(__name__)
Context = aio.ServicerContext[Any, Any]


class LinkContext(Protocol):
    """What Attach needs of its context: gRPC's, or a stream link's
    (falrt/server/api/runner_stream.py)."""

    async def abort(self, code: grpc.StatusCode, details: str = ...) -> NoReturn: ...


HELLO_TIMEOUT_S = 30.0
BUNDLE_CHUNK_BYTES = 1024 * 1024
# An AssignBatch: at most this many assignments, with inputs of at most this many bytes in
# all; the rest of ENVELOPE_BYTES is room for their ids, paths and trace contexts.
BATCH_ASSIGNS = 64
BATCH_INPUT_BYTES = ENVELOPE_BYTES // 2


class RunnerLinkService(runner_pb2_grpc.RunnerLinkServicer):
    def __init__(self, fleet: Fleet, dispatcher: Dispatcher, server_id: str = "") -> None:
        self._fleet = fleet
        self._dispatcher = dispatcher
        self._welcome = runner_pb2.ServerMessage(
            welcome=runner_pb2.Welcome(server_id=server_id))

    async def Attach(
        self, request_iterator: AsyncIterator[runner_pb2.RunnerMessage],
        context: Context | LinkContext,
    ) -> AsyncGenerator[runner_pb2.ServerMessage, None]:
        runner = await self._hello(request_iterator, context)
        reader = asyncio.get_running_loop().create_task(self._read(runner, request_iterator))
        try:
            yield self._welcome
            while True:
                for message in coalesce(await _ready(runner.outbox)):
                    if message is None:  # (a CloseEvent)
                        return
                    yield message
        finally:
            reader.cancel()
            self._fleet.detached(runner)

    @server_stream  # (a request that does not parse: INVALID_ARGUMENT)
    async def FetchBundle(
        self, request: runner_pb2.FetchBundleRequest, context: Context
    ) -> AsyncIterator[runner_pb2.BundleChunk]:
        """The runner's bundle folder packed again (a gzipped tar), in chunks of
        BUNDLE_CHUNK_BYTES; the first names the bundle's hash."""
        try:
            folder = self._fleet.bundle_dir(request.runner_id, request.token)
        except errors.FalrtError as exc:
            log.warning("refused a bundle fetch: %s", exc)
            await context.abort(grpc.StatusCode.PERMISSION_DENIED, str(exc))
        try:
            data = await asyncio.to_thread(bundle.pack_folder, folder)
        except OSError as exc:
            await context.abort(grpc.StatusCode.FAILED_PRECONDITION,
                                f"the bundle {folder.name} is not on this server: {exc}")
        for offset in range(0, len(data), BUNDLE_CHUNK_BYTES):
            yield runner_pb2.BundleChunk(data=data[offset:offset + BUNDLE_CHUNK_BYTES],
                                         bundle_sha256=folder.name if offset == 0 else "")

    async def _hello(
        self, messages: AsyncIterator[runner_pb2.RunnerMessage], context: Context | LinkContext
    ) -> RunnerHandle:
        try:
            first = await asyncio.wait_for(anext(messages), HELLO_TIMEOUT_S)
        except (TimeoutError, StopAsyncIteration):
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "expected Hello first")
        except DecodeError as exc:  # (anyone may dial in: no traceback logged)
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT,
                                f"the first message does not parse: {exc}")
        if first.WhichOneof("event") != "hello":
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "expected Hello first")
        hello = first.hello
        try:
            return self._fleet.attach(hello.runner_id, hello.token, hello.slots)
        except errors.FalrtError as exc:
            log.warning("refused a runner stream: %s", exc)
            await context.abort(grpc.StatusCode.PERMISSION_DENIED, str(exc))
        raise AssertionError("unreachable")

    async def _read(
        self, runner: RunnerHandle, messages: AsyncIterator[runner_pb2.RunnerMessage]
    ) -> None:
        try:
            async for message in messages:
                self._handle(runner, message)
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("runner %s stream failed", runner.runner_id)
        finally:
            runner.outbox.put_nowait(CloseEvent())

    def _handle(self, runner: RunnerHandle, message: runner_pb2.RunnerMessage) -> None:
        match message.WhichOneof("event"):
            case "result" | "results":
                self._on_results(runner, message)
            case "log":
                entry = message.log
                if entry.request_id:
                    self._dispatcher.on_log(runner, entry.request_id,
                                            convert.log_record(entry.line))
                else:
                    log.info("[%s] %s", runner.runner_id, entry.line.message)
            case "partial":
                partial = message.partial
                self._dispatcher.on_partial(runner, partial.request_id, partial.output.data,
                                           partial.output.content_type)
            case "realtime_output" | "realtime_credit" | "realtime_closed" as kind:
                self._handle_realtime(runner, kind, message)
            case "heartbeat":
                # A live stream is the liveness signal; the beat keeps proxies from idling and
                # carries the runner's GPU figures.
                runner.gpu_stats = convert.gpu_figures(message.heartbeat.gpus)
            case "state_change":
                if message.state_change.state == common_pb2.RUNNER_STATE_DRAINING:
                    self._fleet.runner_draining(runner)
            case other:
                raise errors.InvalidArgumentError(f"unexpected runner message {other!r}")

    def _on_results(self, runner: RunnerHandle, message: runner_pb2.RunnerMessage) -> None:
        """A Result, or a ResultBatch: the same results, one after the other."""
        results = ([message.result] if message.HasField("result")
                   else message.results.results)
        for result in results:
            self._dispatcher.on_result(runner, result.request_id, convert.outcome(result),
                                       convert.verdict(result))

    def _handle_realtime(
        self, runner: RunnerHandle, kind: str, message: runner_pb2.RunnerMessage
    ) -> None:
        match kind:
            case "realtime_output":
                out = message.realtime_output
                self._dispatcher.on_realtime_output(runner, out.session_id, out.output.data,
                                                   out.output.content_type)
            case "realtime_credit":
                credit = message.realtime_credit
                self._dispatcher.on_realtime_credit(runner, credit.session_id, credit.inputs)
            case "realtime_closed":
                closed = message.realtime_closed
                error = (convert.error_record(closed.error) if closed.HasField("error")
                         else None)
                self._dispatcher.on_realtime_closed(runner, closed.session_id, error)


async def _ready(outbox: asyncio.Queue[OutboxEvent]) -> list[OutboxEvent]:
    """The events waiting in the runner's outbox (at least one: waits for it).

    Each message on the stream has a fixed cost on both sides (a write, a read, a wake-up of
    the other loop), and under load many requests share one runner. So the events that wait
    when the stream can take the next message (those queued while the last one was written)
    go out together: assignments next to each other as one AssignBatch. Nothing waits to
    fill a batch; a lone event goes out at once in a message of its own (`coalesce`).
    """
    events = [await outbox.get()]
    while not outbox.empty():
        events.append(outbox.get_nowait())
    return events


def coalesce(events: list[OutboxEvent]) -> list[runner_pb2.ServerMessage | None]:
    """`events` as messages, in order. Runs of requests' assignments go in AssignBatches of
    at most BATCH_ASSIGNS with at most BATCH_INPUT_BYTES of inputs, so that a batch stays
    smaller than ENVELOPE_BYTES, the room every message has (a larger input goes alone, as
    before); a run of one is a plain Assign. A CloseEvent becomes None and ends the list."""
    messages: list[runner_pb2.ServerMessage | None] = []
    run: list[WorkItem] = []
    run_bytes = 0
    for event in events:
        if isinstance(event, AssignEvent) and not isinstance(event.item, RealtimeSession):
            size = len(event.item.input)
            if run and (len(run) >= BATCH_ASSIGNS or run_bytes + size > BATCH_INPUT_BYTES):
                messages.append(_assignments(run))
                run, run_bytes = [], 0
            run.append(event.item)
            run_bytes += size
            continue
        if run:
            messages.append(_assignments(run))
            run, run_bytes = [], 0
        if isinstance(event, CloseEvent):
            messages.append(None)
            return messages
        messages.append(_message(event))
    if run:
        messages.append(_assignments(run))
    return messages


def _assignments(items: list[WorkItem]) -> runner_pb2.ServerMessage:
    message = runner_pb2.ServerMessage()
    if len(items) == 1:
        _fill_assign(message.assign, items[0])
    else:
        assigns = message.assigns.assigns
        for item in items:
            _fill_assign(assigns.add(), item)
    return message


def _fill_assign(assign: runner_pb2.Assign, item: WorkItem) -> None:
    """The Assign of a request's attempt (its input bytes set as they are, never copied
    twice)."""
    assign.request_id, assign.path = item.request_id, item.path
    convert.fill_payload(assign.input, item.input, item.content_type)
    if item.trace is not None:
        assign.traceparent = item.trace.runner_parent


def _message(event: OutboxEvent) -> runner_pb2.ServerMessage:
    match event:
        case AssignEvent(item=RealtimeSession() as session):
            return runner_pb2.ServerMessage(realtime_start=runner_pb2.RealtimeStart(
                session_id=session.request_id, path=session.path))
        case RealtimeInputEvent(session_id=sid, data=data, content_type=ctype):
            message = runner_pb2.ServerMessage()
            message.realtime_input.session_id = sid
            message.realtime_input.input.data, message.realtime_input.input.content_type = (
                data, ctype)
            return message
        case RealtimeEndEvent(session_id=sid):
            return runner_pb2.ServerMessage(
                realtime_end=runner_pb2.RealtimeEnd(session_id=sid))
        case AssignEvent(item=item):
            return _assignments([item])
        case CancelEvent(request_id=request_id):
            return runner_pb2.ServerMessage(
                cancel=runner_pb2.CancelAssignment(request_id=request_id)
            )
        case DrainEvent():
            return runner_pb2.ServerMessage(drain=runner_pb2.Drain())
        case _:
            raise AssertionError(f"unexpected outbox event {event!r}")
