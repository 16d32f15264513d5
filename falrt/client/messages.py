"""Request builders and reply readers shared by the sync and asyncio clients."""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from typing import Any, Literal, TypedDict

from falrt.client.endpoint import normalize_path
from falrt.client.payload import decode_payload, encode_arguments
from falrt.client.status import Completed, Status, status_from_proto
from falrt.errors import InternalError, InvalidArgumentError, RequestTimeoutError, from_proto
from falrt.v1 import common_pb2, queue_pb2
from falrt.vocabulary import CancelOutcome as CancelOutcome  # (re-exported to the clients)

PriorityName = Literal["normal", "low"]

_PRIORITIES = {"normal": common_pb2.PRIORITY_NORMAL, "low": common_pb2.PRIORITY_LOW}
_OUTCOMES: dict[int, CancelOutcome] = {
    queue_pb2.CANCEL_OUTCOME_CANCELLATION_REQUESTED: CancelOutcome.CANCELLATION_REQUESTED,
    queue_pb2.CANCEL_OUTCOME_ALREADY_COMPLETED: CancelOutcome.ALREADY_COMPLETED,
    queue_pb2.CANCEL_OUTCOME_NOT_FOUND: CancelOutcome.NOT_FOUND,
}


class QueueOptions(TypedDict, total=False):
    """What a caller may ask of the queue for one request (fal's headers and parameters).

    - `priority`: "normal" (default) or "low" (waits while any normal request is queued);
    - `start_timeout`: seconds from Submit within which the request must start, queue wait
      and failed attempts included (fal's X-Fal-Request-Timeout), else it completes with
      request_timeout;
    - `no_retry`: never retry this request (fal's X-Fal-No-Retry);
    - `retry_config`: extra attempts per condition ("timeout", "server_error",
      "connection_error"), e.g. {"timeout": 0} (fal's X-Fal-Retry-Config);
    - `webhook_url`: POSTed the signed result on completion (fal's fal_webhook);
    - `max_queue_length`: refuse (ResourceExhaustedError) when the app's queue is longer;
    - `idempotency_key`: the same key returns the same request id, so a Submit may be retried.
    """

    priority: PriorityName
    start_timeout: float | None
    no_retry: bool
    retry_config: Mapping[str, int]
    webhook_url: str
    max_queue_length: int
    idempotency_key: str


def submit_request(
    endpoint_id: str, arguments: Any, path: str, options: QueueOptions
) -> queue_pb2.SubmitRequest:
    """Raises `InvalidArgumentError` for an unknown priority or non-JSON arguments."""
    priority = options.get("priority", "normal")
    if priority not in _PRIORITIES:
        raise InvalidArgumentError(f"priority must be 'normal' or 'low', not {priority!r}")
    request = queue_pb2.SubmitRequest(
        endpoint_id=endpoint_id,
        path=normalize_path(path),
        input=encode_arguments(arguments),
        priority=_PRIORITIES[priority],
        no_retry=options.get("no_retry", False),
        retry_config=dict(options.get("retry_config") or {}),
        webhook_url=options.get("webhook_url", ""),
        max_queue_length=options.get("max_queue_length", 0),
        idempotency_key=options.get("idempotency_key", ""),
    )
    start_timeout = options.get("start_timeout")
    if start_timeout is not None:
        request.start_timeout.FromNanoseconds(int(start_timeout * 1e9))
    return request


def subscribe_options(options: QueueOptions, client_timeout: float | None) -> QueueOptions:
    """As fal's client: a client timeout without a start timeout becomes the start timeout,
    so a request the caller stopped waiting for does not start later."""
    if client_timeout is not None and options.get("start_timeout") is None:
        return {**options, "start_timeout": client_timeout}
    return options


def realtime_open(endpoint_id: str, path: str) -> queue_pb2.RealtimeRequest:
    return queue_pb2.RealtimeRequest(
        open=queue_pb2.RealtimeOpen(endpoint_id=endpoint_id, path=normalize_path(path)))


def realtime_input(arguments: Any) -> queue_pb2.RealtimeRequest:
    return queue_pb2.RealtimeRequest(input=encode_arguments(arguments))


def run_request(endpoint_id: str, arguments: Any, path: str) -> queue_pb2.RunRequest:
    return queue_pb2.RunRequest(
        endpoint_id=endpoint_id, path=normalize_path(path), input=encode_arguments(arguments)
    )


def stream_request(endpoint_id: str, arguments: Any, path: str) -> queue_pb2.StreamRequest:
    return queue_pb2.StreamRequest(
        endpoint_id=endpoint_id, path=normalize_path(path), input=encode_arguments(arguments)
    )


def read_result(reply: queue_pb2.GetResultResponse) -> Any:
    """The decoded output; raises the request's falrt exception if it failed."""
    if reply.HasField("error"):
        raise from_proto(reply.error)
    return decode_payload(reply.output)


def read_cancel(reply: queue_pb2.CancelResponse) -> CancelOutcome:
    """fal's word for a cancel outcome (an unknown one reads as NOT_FOUND)."""
    return _OUTCOMES.get(reply.outcome, CancelOutcome.NOT_FOUND)


def remaining_s(started: float, timeout: float | None) -> float | None:
    """Seconds left of `timeout` since the monotonic time `started` (never negative)."""
    if timeout is None:
        return None
    return max(0.0, timeout - (time.monotonic() - started))


class Subscription:
    """What `subscribe` (sync and asyncio clients alike) makes of the updates of the request
    it submitted: `on_enqueue(request_id)` once it is stored, `on_queue_update(status)` for
    every status, and the Completed status when it comes."""

    def __init__(
        self, on_enqueue: Callable[[str], None] | None,
        on_queue_update: Callable[[Status], None] | None, client_timeout: float | None,
    ) -> None:
        self.request_id = ""
        self._on_enqueue = on_enqueue
        self._on_queue_update = on_queue_update
        self._client_timeout = client_timeout

    def update(self, state: queue_pb2.RequestState) -> Completed | None:
        if not self.request_id:
            self.request_id = state.request_id
            if self._on_enqueue is not None:
                self._on_enqueue(self.request_id)
        status = status_from_proto(state)
        if self._on_queue_update is not None:
            self._on_queue_update(status)
        return status if isinstance(status, Completed) else None

    def timed_out(self) -> RequestTimeoutError:
        return RequestTimeoutError(
            f"request {self.request_id or '(not stored yet)'} did not complete within "
            f"{self._client_timeout} s")

    def ended_early(self) -> InternalError:
        return InternalError(
            f"the subscription to request {self.request_id} ended before it completed")
