"""The public Queue service: the queue path (Submit, Watch, GetStatus, GetResult, Cancel)
and the direct path (Run, Stream). Converts at the edge and calls the scheduler.

Payload bytes pass through untouched: the server never decodes or re-encodes them. An input
that names a file instead (a payload by reference, docs/files.md) is checked and kept as
the file's reference (falrt/server/api/payload_refs.py).
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, TypeVar

from grpc import aio

from falrt import errors
from falrt.server.api import convert
from falrt.server.api.payload_refs import PayloadRefs, checked_input
from falrt.server.api.rpc import Guard, abort, server_stream, unary
from falrt.server.queue.scheduler import Scheduler
from falrt.server.state.work import DirectCall, QueuedRequest, RealtimeSession, any_done
from falrt.server.tracing import UNTRACED, Origin, grpc_origin
from falrt.store.records import Outcome, Status
from falrt.v1 import queue_pb2, queue_pb2_grpc
from falrt.vocabulary import CancelOutcome

Context = aio.ServicerContext[Any, Any]
R = TypeVar("R", queue_pb2.StreamResponse, queue_pb2.RealtimeResponse)
# Whether the caller of a call (its context) gets the request logs of a request it may read.
LogsPolicy = Callable[[QueuedRequest, Context], Awaitable[bool]]
_CANCEL_OUTCOMES = {
    CancelOutcome.CANCELLATION_REQUESTED: queue_pb2.CANCEL_OUTCOME_CANCELLATION_REQUESTED,
    CancelOutcome.ALREADY_COMPLETED: queue_pb2.CANCEL_OUTCOME_ALREADY_COMPLETED,
    CancelOutcome.NOT_FOUND: queue_pb2.CANCEL_OUTCOME_NOT_FOUND,
}


class QueueService(queue_pb2_grpc.QueueServicer):
    def __init__(
        self, scheduler: Scheduler, guard: Guard | None = None,
        sees_logs: LogsPolicy | None = None, payloads: PayloadRefs | None = None,
    ) -> None:
        self._scheduler = scheduler
        self._payloads = payloads  # checks inputs by reference (None: no file store)
        self.guard = guard  # who may call (falrt/server/auth.py), run before each method
        # Who gets request logs (private_logs, falrt/server/auth.py); None: every caller.
        self._sees_logs = sees_logs

    @unary
    async def Submit(
        self, request: queue_pb2.SubmitRequest, context: Context
    ) -> queue_pb2.SubmitResponse:
        request_id, position, deduplicated = await self._submit(request, context, "submit")
        return queue_pb2.SubmitResponse(
            request_id=request_id, queue_position=position, deduplicated=deduplicated)

    @server_stream
    async def Watch(
        self, request: queue_pb2.WatchRequest, context: Context
    ) -> AsyncIterator[queue_pb2.WatchResponse]:
        item = await self._find(request.request_id)
        with_logs = await self._with_logs(item, request.with_logs, context)
        async for response in self._follow(item, with_logs):
            yield response

    @server_stream
    async def Subscribe(
        self, request: queue_pb2.SubscribeRequest, context: Context
    ) -> AsyncIterator[queue_pb2.WatchResponse]:
        request_id, _, _ = await self._submit(request.submit, context, "subscribe")
        item = await self._find(request_id)  # stored: the first message says so
        if item.storing is not None:
            # Its result is there already, being stored: the acknowledgement and the
            # completion go as one message once that write ends (one write to the caller
            # less; if the write fails, the acknowledgement goes alone, as it would have).
            await asyncio.wait([item.storing])
        with_logs = await self._with_logs(item, request.with_logs, context)
        async for response in self._follow(item, with_logs):
            yield response

    async def _submit(
        self, request: queue_pb2.SubmitRequest, context: Context, call: str
    ) -> tuple[str, int, bool]:
        """Submit and Subscribe's store: (request id, queue position, deduplicated)."""
        options = convert.submit_options(request, followed=call == "subscribe")
        data, by_ref = await self._input(request.input, context)
        if by_ref:
            options = dataclasses.replace(options, input_by_ref=True)
        return await self._scheduler.submit(
            request.endpoint_id, request.path or "/", data, request.input.content_type,
            options, self._origin(context, call))

    async def _input(self, payload: Any, context: Context) -> tuple[bytes, bool]:
        """A caller's input as (bytes, by reference): its bytes, or the checked reference
        of the file it is in."""
        if not payload.file_id:
            return payload.data, False
        metadata = context.invocation_metadata()
        return await checked_input(self._payloads, payload, metadata), True

    async def _with_logs(self, item: QueuedRequest, asked: bool, context: Context) -> bool:
        """Whether an answer about `item` carries its logs: asked for, and the caller may
        see them."""
        return asked and (self._sees_logs is None or await self._sees_logs(item, context))

    async def _follow(
        self, item: QueuedRequest, with_logs: bool
    ) -> AsyncIterator[queue_pb2.WatchResponse]:
        """The request's states as they change, until COMPLETED (with each partial output of
        a streaming endpoint as it comes)."""
        sent_logs = sent_partials = 0
        last: tuple[Any, ...] = ()
        while True:
            position = self._scheduler.position(item)
            key = (item.status, position, len(item.logs) if with_logs else 0,
                   item.waiting_reason, len(item.partials))
            if key != last:
                logs = item.logs[sent_logs:] if with_logs else []
                partials = item.partials[sent_partials:]
                sent_logs, sent_partials = len(item.logs), len(item.partials)
                last = key
                yield queue_pb2.WatchResponse(state=convert.request_state(
                    item, position=position, logs=logs, waiting_reason=item.waiting_reason,
                    partials=partials,
                ))
                continue  # the request may have moved on while this update was sent
            if item.status is Status.COMPLETED:
                return
            await any_done(self._scheduler.changes(item))

    @unary
    async def GetStatus(
        self, request: queue_pb2.GetStatusRequest, context: Context
    ) -> queue_pb2.GetStatusResponse:
        item = await self._find(request.request_id)
        with_logs = await self._with_logs(item, request.with_logs, context)
        return queue_pb2.GetStatusResponse(state=convert.request_state(
            item, position=self._scheduler.position(item),
            logs=item.logs if with_logs else [], waiting_reason=item.waiting_reason,
        ))

    @unary
    async def GetResult(
        self, request: queue_pb2.GetResultRequest, context: Context
    ) -> queue_pb2.GetResultResponse:
        item = await self._find(request.request_id)
        if item.status is not Status.COMPLETED or item.outcome is None:
            raise errors.NotCompletedError(
                f"request {item.request_id} is not completed yet (status "
                f"{item.status.name}); watch it or ask again later"
            )
        return convert.result_response(item.request_id, item.outcome)

    @unary
    async def Cancel(
        self, request: queue_pb2.CancelRequest, context: Context
    ) -> queue_pb2.CancelResponse:
        outcome = await self._scheduler.cancel(request.request_id)
        return queue_pb2.CancelResponse(outcome=_CANCEL_OUTCOMES[outcome])

    @unary
    async def Run(self, request: queue_pb2.RunRequest, context: Context) -> queue_pb2.RunResponse:
        data, by_ref = await self._input(request.input, context)
        call = self._scheduler.call_direct(
            request.endpoint_id, request.path or "/", data, request.input.content_type,
            stream=False, origin=self._origin(context, "run"), by_ref=by_ref,
        )
        outcome = await self._wait(call)
        if outcome.error is not None:
            await _raise_error(context, outcome)
        response = queue_pb2.RunResponse(request_id=call.request_id)
        convert.fill_payload(response.output, outcome.output, outcome.content_type)
        convert.fill_metrics(response.metrics, outcome)
        return response

    @server_stream
    async def Stream(
        self, request: queue_pb2.StreamRequest, context: Context
    ) -> AsyncIterator[queue_pb2.StreamResponse]:
        data, by_ref = await self._input(request.input, context)
        call = self._scheduler.call_direct(
            request.endpoint_id, request.path or "/", data, request.input.content_type,
            stream=True, origin=self._origin(context, "stream"), by_ref=by_ref,
        )
        async for response in self._outputs(call, queue_pb2.StreamResponse):
            yield response
        await _raise_error(context, call.done.result())

    @server_stream
    async def Realtime(
        self, request_iterator: AsyncIterator[queue_pb2.RealtimeRequest], context: Context
    ) -> AsyncIterator[queue_pb2.RealtimeResponse]:
        first = await anext(request_iterator, None)
        if first is None or first.WhichOneof("item") != "open":
            raise errors.InvalidArgumentError("a realtime stream starts with RealtimeOpen")
        if self.guard is not None:  # the app's auth, now that the endpoint is known
            await self.guard("RealtimeOpen", first.open, context)
        session = self._scheduler.open_realtime(first.open.endpoint_id, first.open.path or "/")
        pump = asyncio.get_running_loop().create_task(self._pump(session, request_iterator))
        try:
            async for response in self._outputs(session, queue_pb2.RealtimeResponse):
                yield response
        finally:
            pump.cancel()
        await _raise_error(context, session.done.result())

    def _origin(self, context: Context, call: str) -> Origin:
        """Where a call came from, for its trace (read only when tracing is on)."""
        return grpc_origin(context, call) if self._scheduler.tracing.enabled else UNTRACED

    async def _outputs(self, call: DirectCall, response_type: type[R]) -> AsyncIterator[R]:
        """The outputs of a direct call or a realtime session as they come, each in a
        `response_type` message; if the caller goes away, the work is abandoned."""
        assert call.partials is not None
        try:
            while (output := await call.partials.get()) is not None:
                response = response_type()
                response.output.data, response.output.content_type = output
                yield response
        except asyncio.CancelledError:
            self._scheduler.abandon(call)
            raise

    async def _pump(
        self, session: RealtimeSession, requests: AsyncIterator[queue_pb2.RealtimeRequest]
    ) -> None:
        """Forwards the caller's inputs to the session's runner once it has one."""
        await session.started.wait()
        async for message in requests:
            if message.WhichOneof("item") == "input":
                # Backpressure: no more inputs in flight than the runner's buffer; while
                # this waits, the caller's stream is not read and gRPC slows the caller.
                await session.credit.acquire()
                self._scheduler.realtime_input(
                    session, message.input.data, message.input.content_type)
        self._scheduler.realtime_end(session)

    async def _wait(self, call: DirectCall) -> Outcome:
        try:
            return await asyncio.shield(call.done)
        except asyncio.CancelledError:
            self._scheduler.abandon(call)
            raise

    async def _find(self, request_id: str) -> QueuedRequest:
        item = await self._scheduler.lookup(request_id)
        if item is None:
            raise errors.NotFoundError(f"no request with id {errors.quote(request_id)}")
        return item


async def _raise_error(context: Context, outcome: Outcome) -> None:
    if outcome.error is not None:
        await abort(context, convert.error_info(outcome.error))
