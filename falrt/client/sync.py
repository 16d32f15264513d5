"""The blocking Python client of the Queue service.

A `SyncClient` owns one gRPC channel; it is safe to use from several threads. Every gRPC
failure surfaces as a falrt exception (`falrt.errors`); a server that cannot be reached
raises `UnavailableError`.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Generator, Iterable, Iterator
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Unpack

from falrt.client.connection import ConnectOptions, channel, resolve_target
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
from falrt.limits import PAYLOAD_REF_BYTES
from falrt.v1 import common_pb2, queue_pb2, queue_pb2_grpc


@dataclass(frozen=True)
class RequestHandle:
    """A submitted request: its id, its position when stored, and shortcuts to the client."""

    client: SyncClient
    request_id: str
    queue_position: int

    def status(self, *, with_logs: bool = False) -> Status:
        return self.client.status(self.request_id, with_logs=with_logs)

    def watch(self, *, with_logs: bool = True) -> Generator[Status, None, None]:
        return self.client.watch(self.request_id, with_logs=with_logs)

    def result(self) -> Any:
        return self.client.result(self.request_id)

    def cancel(self) -> CancelOutcome:
        return self.client.cancel(self.request_id)

    def get(self) -> Any:
        """Waits until the request completes; its output, or its error raised."""
        return self.client.wait(self.request_id).output_or_raise()


class SyncClient:
    """Calls deployed apps through the queue or directly. Close it (or use `with`)."""

    def __init__(self, host: str | None = None, **connect: Unpack[ConnectOptions]) -> None:
        """`host`: `HOST:PORT` or `https://HOST:PORT` (default `$FALRT_HOST`, else
        127.0.0.1:50051); `connect`: TLS files and the API key (`ConnectOptions`).
        Raises InsecureConnectionError rather than send a key in clear to another
        machine."""
        self.target = resolve_target(host, **connect)
        self.host = self.target.address
        self._channel = channel(self.target)
        self._stub = queue_pb2_grpc.QueueStub(self._channel)
        self._files = FilesClient(self._channel)
        # An encoded input over this many bytes is sent by file reference (docs/files.md,
        # "Payloads by reference"; 0: always inline).
        self.payload_ref_bytes = PAYLOAD_REF_BYTES

    def close(self) -> None:
        """Closes the channel; calls in flight are cancelled. Idempotent."""
        self._channel.close()

    def upload_file(
        self, path: str | os.PathLike[str], *, content_type: str = "", expires_in_s: int = 0
    ) -> str:
        """fal_client's `upload_file`: uploads the file at `path` to the server's file store
        (streamed, resumed after an interruption) and returns its signed URL, which fetches
        it without a key until it expires (`expires_in_s`; 0: the server's default).
        Raises FailedPreconditionError when the server serves no HTTP edge (docs/files.md)."""
        info = FilesClient(self._channel).upload(
            path, content_type=content_type, expires_in_s=expires_in_s)
        return url_of(info)

    def __enter__(self) -> SyncClient:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def submit(
        self, endpoint_id: str, arguments: Any, *, path: str = "/",
        **options: Unpack[QueueOptions],
    ) -> RequestHandle:
        """Stores a request durably on the server; returns once it is stored.

        `options` are the queue's per-request options (see `QueueOptions`).
        """
        request = submit_request(endpoint_id, arguments, path, options)
        with translate_rpc_errors():
            self._send(request.input)
            reply = self._stub.Submit(request)
        return RequestHandle(self, reply.request_id, reply.queue_position)

    def watch(
        self, request_id: str, *, with_logs: bool = True, timeout: float | None = None
    ) -> Generator[Status, None, None]:
        """Yields the request's statuses until (and including) `Completed`.

        `timeout` bounds the whole watch (`RequestTimeoutError` when it passes). Closing the
        iterator early cancels the underlying stream.
        """
        call = self._stub.Watch(
            queue_pb2.WatchRequest(request_id=request_id, with_logs=with_logs), timeout=timeout
        )
        try:
            with translate_rpc_errors():
                for reply in call:
                    fetch_reference(self._files, reply.state.output)
                    status = status_from_proto(reply.state)
                    yield status
                    if isinstance(status, Completed):
                        return
        finally:
            call.cancel()
        raise InternalError(f"watch of request {request_id} ended before it completed")

    def wait(self, request_id: str, *, timeout: float | None = None) -> Completed:
        """Blocks until the request completes; its final status."""
        return self._follow(request_id, False, None, timeout)

    def status(self, request_id: str, *, with_logs: bool = False) -> Status:
        """The request's current status (with all its log lines when `with_logs`)."""
        with translate_rpc_errors():
            reply = self._stub.GetStatus(
                queue_pb2.GetStatusRequest(request_id=request_id, with_logs=with_logs)
            )
            fetch_reference(self._files, reply.state.output)
        return status_from_proto(reply.state)

    def result(self, request_id: str) -> Any:
        """The decoded output of a completed request.

        Raises the request's own error if it failed, `NotCompletedError` if it has not
        completed, `NotFoundError` for an unknown id.
        """
        with translate_rpc_errors():
            reply = self._stub.GetResult(queue_pb2.GetResultRequest(request_id=request_id))
            fetch_reference(self._files, reply.output)
        return read_result(reply)

    def cancel(self, request_id: str) -> CancelOutcome:
        """Asks for cancellation; fal's answer word. Idempotent."""
        with translate_rpc_errors():
            reply = self._stub.Cancel(queue_pb2.CancelRequest(request_id=request_id))
        return read_cancel(reply)

    def run(
        self, endpoint_id: str, arguments: Any, *, path: str = "/", timeout: float | None = None
    ) -> Any:
        """Direct call (no queue record, no retries); the decoded output."""
        request = run_request(endpoint_id, arguments, path)
        with translate_rpc_errors():
            self._send(request.input)
            reply = self._stub.Run(request, timeout=timeout)
            fetch_reference(self._files, reply.output)
        return decode_payload(reply.output)

    def stream(
        self, endpoint_id: str, arguments: Any, *, path: str = "/", timeout: float | None = None
    ) -> Generator[Any, None, None]:
        """Direct call of a streaming endpoint: each partial output, decoded, in order."""
        request = stream_request(endpoint_id, arguments, path)
        self._send(request.input)
        call = self._stub.Stream(request, timeout=timeout)
        try:
            with translate_rpc_errors():
                for reply in call:
                    yield decode_payload(reply.output)
        finally:
            call.cancel()

    def realtime(
        self, endpoint_id: str, inputs: Iterable[Any], *, path: str = "/",
        timeout: float | None = None,
    ) -> Generator[Any, None, None]:
        """A realtime session (Queue.Realtime): sends each of `inputs` (JSON-encoded) as the
        iterable yields it, and yields each output of the handler, decoded, as it comes. The
        session ends when the handler returns after `inputs` ran out."""

        def requests() -> Iterator[queue_pb2.RealtimeRequest]:
            yield realtime_open(endpoint_id, path)
            for item in inputs:
                yield realtime_input(item)

        call = self._stub.Realtime(requests(), timeout=timeout)
        try:
            with translate_rpc_errors():
                for reply in call:
                    yield decode_payload(reply.output)
        finally:
            call.cancel()

    def subscribe(
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
        self._send(submit.input)
        # One call (Queue.Subscribe): stored, then followed to completion.
        call = self._stub.Subscribe(
            queue_pb2.SubscribeRequest(submit=submit, with_logs=with_logs),
            timeout=client_timeout)
        subscription = Subscription(on_enqueue, on_queue_update, client_timeout)
        try:
            with translate_rpc_errors():
                for reply in call:
                    fetch_reference(self._files, reply.state.output)
                    if (completed := subscription.update(reply.state)) is not None:
                        return completed.output_or_raise()
        except RequestTimeoutError:
            if subscription.request_id:
                self._cancel_quietly(subscription.request_id)
            raise subscription.timed_out() from None
        finally:
            call.cancel()
        raise subscription.ended_early()

    def _follow(
        self, request_id: str, with_logs: bool,
        on_queue_update: Callable[[Status], None] | None, timeout: float | None,
    ) -> Completed:
        statuses = self.watch(request_id, with_logs=with_logs, timeout=timeout)
        with contextlib.closing(statuses):
            for status in statuses:
                if on_queue_update is not None:
                    on_queue_update(status)
                if isinstance(status, Completed):
                    return status
        raise InternalError(f"watch of request {request_id} ended before it completed")

    def _send(self, payload: common_pb2.Payload) -> None:
        """An input over `payload_ref_bytes` goes into a file first (falrt/client/refs.py)."""
        send_by_reference(self._files, payload, self.payload_ref_bytes)

    def _cancel_quietly(self, request_id: str) -> None:
        with contextlib.suppress(FalrtError):
            self.cancel(request_id)

