"""The asyncio Python client of the Queue service (the twin of `falrt.client.sync`).

An `AsyncClient` opens its channel on first use, inside the running event loop, and must
only be used from that loop. Every gRPC failure surfaces as a falrt exception.
Cancelling a task that awaits a call cancels the call.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import AsyncGenerator, AsyncIterable, AsyncIterator, Callable
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Unpack

import grpc

from falrt.client.connection import ConnectOptions, aio_channel, channel, resolve_target
from falrt.client.files import FilesClient, url_of
from falrt.client.messages import (
    CancelOutcome,
    QueueOptions,
    Subscription,
    read_cancel,
    read_result,
    realtime_input,
    realtime_open,
    run_request,
    stream_request,
    submit_request,
    subscribe_options,
)
from falrt.client.payload import decode_payload
from falrt.client.refs import fetch_reference, send_by_reference
from falrt.client.rpc_errors import translate_rpc_errors
from falrt.client.status import Completed, Status, status_from_proto
from falrt.errors import FalrtError, InternalError, RequestTimeoutError
from falrt.limits import PAYLOAD_REF_BYTES, by_reference
from falrt.v1 import common_pb2, queue_pb2, queue_pb2_grpc


@dataclass(frozen=True)
class AsyncRequestHandle:
    """A submitted request: its id, its position when stored, and shortcuts to the client."""

    client: AsyncClient
    request_id: str
    queue_position: int

    async def status(self, *, with_logs: bool = False) -> Status:
        return await self.client.status(self.request_id, with_logs=with_logs)

    def watch(self, *, with_logs: bool = True) -> AsyncGenerator[Status, None]:
        return self.client.watch(self.request_id, with_logs=with_logs)

    async def result(self) -> Any:
        return await self.client.result(self.request_id)

    async def cancel(self) -> CancelOutcome:
        return await self.client.cancel(self.request_id)

    async def get(self) -> Any:
        """Waits until the request completes; its output, or its error raised."""
        return (await self.client.wait(self.request_id)).output_or_raise()


class AsyncClient:
    """Calls deployed apps through the queue or directly. Close it (or use `async with`)."""

    def __init__(self, host: str | None = None, **connect: Unpack[ConnectOptions]) -> None:
        """`host`: `HOST:PORT` or `https://HOST:PORT` (default `$FALRT_HOST`, else
        127.0.0.1:50051); `connect`: TLS files and the API key (`ConnectOptions`).
        Raises InsecureConnectionError rather than send a key in clear to another
        machine."""
        self.target = resolve_target(host, **connect)
        self.host = self.target.address
        self._channel: grpc.aio.Channel | None = None
        # The generated stub's overload on an aio channel gives the async type.
        self._stub_cache: queue_pb2_grpc.QueueAsyncStub | None = None
        # An encoded input over this many bytes is sent by file reference (docs/files.md,
        # "Payloads by reference"; 0: always inline).
        self.payload_ref_bytes = PAYLOAD_REF_BYTES

    @property
    def _stub(self) -> queue_pb2_grpc.QueueAsyncStub:
        if self._stub_cache is None:
            self._channel = aio_channel(self.target)
            self._stub_cache = queue_pb2_grpc.QueueStub(self._channel)
        return self._stub_cache

    async def close(self) -> None:
        """Closes the channel; calls in flight are cancelled. Idempotent."""
        if self._channel is not None:
            await self._channel.close()
        self._channel, self._stub_cache = None, None

    async def upload_file(
        self, path: str | os.PathLike[str], *, content_type: str = "", expires_in_s: int = 0
    ) -> str:
        """`SyncClient.upload_file`, on a thread with a channel of its own (the file's reads
        block)."""
        def upload() -> str:
            sync = channel(self.target)
            try:
                return url_of(FilesClient(sync).upload(
                    path, content_type=content_type, expires_in_s=expires_in_s))
            finally:
                sync.close()

        return await asyncio.to_thread(upload)

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    async def submit(
        self, endpoint_id: str, arguments: Any, *, path: str = "/",
        **options: Unpack[QueueOptions],
    ) -> AsyncRequestHandle:
        """Stores a request durably on the server; returns once it is stored.

        `options` are the queue's per-request options (see `QueueOptions`).
        """
        request = submit_request(endpoint_id, arguments, path, options)
        await self._send(request.input)
        with translate_rpc_errors():
            reply = await self._stub.Submit(request)
        return AsyncRequestHandle(self, reply.request_id, reply.queue_position)

    async def watch(
        self, request_id: str, *, with_logs: bool = True, timeout: float | None = None
    ) -> AsyncGenerator[Status, None]:
        """Yields the request's statuses until (and including) `Completed`.

        `timeout` bounds the whole watch (`RequestTimeoutError` when it passes). Closing the
        iterator early (`aclose()`) cancels the underlying stream.
        """
        call = self._stub.Watch(
            queue_pb2.WatchRequest(request_id=request_id, with_logs=with_logs), timeout=timeout
        )
        try:
            with translate_rpc_errors():
                async for reply in call:
                    await self._fetch(reply.state.output)
                    status = status_from_proto(reply.state)
                    yield status
                    if isinstance(status, Completed):
                        return
        finally:
            call.cancel()
        raise InternalError(f"watch of request {request_id} ended before it completed")

    async def wait(self, request_id: str, *, timeout: float | None = None) -> Completed:
        """Waits until the request completes; its final status."""
        return await self._follow(request_id, False, None, timeout)

    async def status(self, request_id: str, *, with_logs: bool = False) -> Status:
        """The request's current status (with all its log lines when `with_logs`)."""
        with translate_rpc_errors():
            reply = await self._stub.GetStatus(
                queue_pb2.GetStatusRequest(request_id=request_id, with_logs=with_logs)
            )
        await self._fetch(reply.state.output)
        return status_from_proto(reply.state)

    async def result(self, request_id: str) -> Any:
        """The decoded output of a completed request.

        Raises the request's own error if it failed, `NotCompletedError` if it has not
        completed, `NotFoundError` for an unknown id.
        """
        with translate_rpc_errors():
            reply = await self._stub.GetResult(queue_pb2.GetResultRequest(request_id=request_id))
        await self._fetch(reply.output)
        return read_result(reply)

    async def cancel(self, request_id: str) -> CancelOutcome:
        """Asks for cancellation; fal's answer word. Idempotent."""
        with translate_rpc_errors():
            reply = await self._stub.Cancel(queue_pb2.CancelRequest(request_id=request_id))
        return read_cancel(reply)

    async def run(
        self, endpoint_id: str, arguments: Any, *, path: str = "/", timeout: float | None = None
    ) -> Any:
        """Direct call (no queue record, no retries); the decoded output."""
        request = run_request(endpoint_id, arguments, path)
        await self._send(request.input)
        with translate_rpc_errors():
            reply = await self._stub.Run(request, timeout=timeout)
        await self._fetch(reply.output)
        return decode_payload(reply.output)

    async def stream(
        self, endpoint_id: str, arguments: Any, *, path: str = "/", timeout: float | None = None
    ) -> AsyncGenerator[Any, None]:
        """Direct call of a streaming endpoint: each partial output, decoded, in order."""
        request = stream_request(endpoint_id, arguments, path)
        await self._send(request.input)
        call = self._stub.Stream(request, timeout=timeout)
        try:
            with translate_rpc_errors():
                async for reply in call:
                    yield decode_payload(reply.output)
        finally:
            call.cancel()

    async def realtime(
        self, endpoint_id: str, inputs: AsyncIterable[Any], *, path: str = "/",
        timeout: float | None = None,
    ) -> AsyncGenerator[Any, None]:
        """A realtime session (Queue.Realtime): sends each of `inputs` as it comes and yields
        each output of the handler, decoded, as it comes."""

        async def requests() -> AsyncIterator[queue_pb2.RealtimeRequest]:
            yield realtime_open(endpoint_id, path)
            async for item in inputs:
                yield realtime_input(item)

        call = self._stub.Realtime(requests(), timeout=timeout)
        try:
            with translate_rpc_errors():
                async for reply in call:
                    yield decode_payload(reply.output)
        finally:
            call.cancel()

    async def subscribe(
        self,
        endpoint_id: str,
        arguments: Any,
        *,
        path: str = "/",
        with_logs: bool = False,
        on_enqueue: Callable[[str], None] | None = None,
        on_queue_update: Callable[[Status], None] | None = None,
        client_timeout: float | None = None,
        **options: Unpack[QueueOptions],
    ) -> Any:
        """Submits, follows the request to completion, returns its output or raises its error.

        `on_enqueue(request_id)` runs once stored; `on_queue_update(status)` for every status.
        After `client_timeout` seconds the request is cancelled (best effort) and
        `RequestTimeoutError` is raised.
        """
        submit = submit_request(
            endpoint_id, arguments, path, subscribe_options(options, client_timeout))
        await self._send(submit.input)
        # One call (Queue.Subscribe): stored, then followed to completion.
        call = self._stub.Subscribe(
            queue_pb2.SubscribeRequest(submit=submit, with_logs=with_logs),
            timeout=client_timeout)
        subscription = Subscription(on_enqueue, on_queue_update, client_timeout)
        try:
            with translate_rpc_errors():
                async for reply in call:
                    await self._fetch(reply.state.output)
                    if (completed := subscription.update(reply.state)) is not None:
                        return completed.output_or_raise()
        except RequestTimeoutError:
            if subscription.request_id:
                await self._cancel_quietly(subscription.request_id)
            raise subscription.timed_out() from None
        finally:
            call.cancel()
        raise subscription.ended_early()

    async def _follow(
        self, request_id: str, with_logs: bool,
        on_queue_update: Callable[[Status], None] | None, timeout: float | None,
    ) -> Completed:
        statuses = self.watch(request_id, with_logs=with_logs, timeout=timeout)
        async with contextlib.aclosing(statuses):
            async for status in statuses:
                if on_queue_update is not None:
                    on_queue_update(status)
                if isinstance(status, Completed):
                    return status
        raise InternalError(f"watch of request {request_id} ended before it completed")

    async def _send(self, payload: common_pb2.Payload) -> None:
        """An input over `payload_ref_bytes` goes into a file first (falrt/client/refs.py),
        on a thread with a channel of its own."""
        if by_reference(len(payload.data), self.payload_ref_bytes):
            await asyncio.to_thread(
                self._with_files, send_by_reference, payload, self.payload_ref_bytes)

    async def _fetch(self, payload: common_pb2.Payload) -> None:
        """The bytes of an output answered by reference, into `payload`."""
        if payload.file_id:
            await asyncio.to_thread(self._with_files, fetch_reference, payload)

    def _with_files(self, call: Callable[..., None], *args: Any) -> None:
        sync = channel(self.target)
        try:
            call(FilesClient(sync), *args)
        finally:
            sync.close()

    async def _cancel_quietly(self, request_id: str) -> None:
        with contextlib.suppress(FalrtError):
            await self.cancel(request_id)
