"""Request builders and reply readers shared by the sync and asyncio clients."""

from __future__ import annotations

import time
from typing import Any, Literal

from falrt.client.endpoint import normalize_path
from falrt.client.payload import decode_payload, encode_arguments
from falrt.errors import InvalidArgumentError, from_proto
from falrt.v1 import common_pb2, queue_pb2

PriorityName = Literal["normal", "low"]
CancelOutcome = Literal["CANCELLATION_REQUESTED", "ALREADY_COMPLETED", "NOT_FOUND"]

_PRIORITIES = {"normal": common_pb2.PRIORITY_NORMAL, "low": common_pb2.PRIORITY_LOW}
_OUTCOMES: dict[int, CancelOutcome] = {
    queue_pb2.CANCEL_OUTCOME_CANCELLATION_REQUESTED: "CANCELLATION_REQUESTED",
    queue_pb2.CANCEL_OUTCOME_ALREADY_COMPLETED: "ALREADY_COMPLETED",
    queue_pb2.CANCEL_OUTCOME_NOT_FOUND: "NOT_FOUND",
}


def submit_request(
    endpoint_id: str, arguments: Any, path: str, priority: str
) -> queue_pb2.SubmitRequest:
    """Raises `InvalidArgumentError` for an unknown priority or non-JSON arguments."""
    if priority not in _PRIORITIES:
        raise InvalidArgumentError(f"priority must be 'normal' or 'low', not {priority!r}")
    return queue_pb2.SubmitRequest(
        endpoint_id=endpoint_id,
        path=normalize_path(path),
        input=encode_arguments(arguments),
        priority=_PRIORITIES[priority],
    )


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
    return _OUTCOMES.get(reply.outcome, "NOT_FOUND")


def remaining_s(started: float, timeout: float | None) -> float | None:
    """Seconds left of `timeout` since the monotonic time `started` (never negative)."""
    if timeout is None:
        return None
    return max(0.0, timeout - (time.monotonic() - started))
