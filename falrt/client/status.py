"""Typed request statuses (fal's `Queued`, `InProgress`, `Completed`) and their converters.

Statuses are frozen msgspec Structs tagged with fal's state names, so
`msgspec.json.encode(status)` gives `{"status": "IN_QUEUE", ...}`.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import msgspec

from falrt.client.payload import decode_payload, encode_arguments
from falrt.errors import FalrtError, InternalError, from_proto
from falrt.v1 import common_pb2, queue_pb2


class LogLine(msgspec.Struct, frozen=True):
    """One line a handler printed or logged."""

    timestamp: datetime
    message: str
    source: str


class RequestError(msgspec.Struct, frozen=True):
    """Why a completed request failed, as data (`to_exception()` gives the exception)."""

    error_type: str
    message: str
    grpc_code: int = 0
    field_errors: tuple[tuple[str, str], ...] = ()
    traceback: str = ""

    def to_exception(self) -> FalrtError:
        """The falrt exception this error describes."""
        return from_proto(error_to_proto(self))


class Queued(msgspec.Struct, frozen=True, tag_field="status", tag="IN_QUEUE"):
    """Waiting for a runner; `position` requests are ahead."""

    position: int
    waiting_reason: str = ""


class InProgress(msgspec.Struct, frozen=True, tag_field="status", tag="IN_PROGRESS"):
    """Running; `logs` are the lines new since the previous update (all, from `status`);
    `partials` the partial outputs of a streaming endpoint new since the previous update
    (decoded; watch and subscribe only)."""

    logs: tuple[LogLine, ...] = ()
    partials: tuple[Any, ...] = ()


class Completed(msgspec.Struct, frozen=True, tag_field="status", tag="COMPLETED"):
    """Finished: `output` (decoded) when it succeeded, `error` when it failed."""

    logs: tuple[LogLine, ...] = ()
    output: Any = None
    error: RequestError | None = None
    inference_time_s: float | None = None

    def output_or_raise(self) -> Any:
        """The output; raises the request's falrt exception if it failed."""
        if self.error is not None:
            raise self.error.to_exception()
        return self.output


Status = Queued | InProgress | Completed


def log_from_proto(line: common_pb2.LogLine) -> LogLine:
    return LogLine(
        timestamp=line.timestamp.ToDatetime(tzinfo=UTC),
        message=line.message,
        source=line.source,
    )


def log_to_proto(line: LogLine) -> common_pb2.LogLine:
    proto = common_pb2.LogLine(message=line.message, source=line.source)
    proto.timestamp.FromDatetime(line.timestamp)
    return proto


def error_from_proto(info: common_pb2.ErrorInfo) -> RequestError:
    return RequestError(
        error_type=info.error_type,
        message=info.message,
        grpc_code=info.grpc_code,
        field_errors=tuple((f.location, f.message) for f in info.field_errors),
        traceback=info.traceback,
    )


def error_to_proto(error: RequestError) -> common_pb2.ErrorInfo:
    return common_pb2.ErrorInfo(
        error_type=error.error_type,
        message=error.message,
        grpc_code=error.grpc_code,
        field_errors=[common_pb2.FieldError(location=loc, message=msg)
                      for loc, msg in error.field_errors],
        traceback=error.traceback,
    )


def status_from_proto(state: queue_pb2.RequestState) -> Status:
    """The typed status a RequestState describes; raises `InternalError` for UNSPECIFIED."""
    logs = tuple(log_from_proto(line) for line in state.logs)
    if state.status == common_pb2.REQUEST_STATUS_IN_QUEUE:
        return Queued(position=state.queue_position, waiting_reason=state.waiting_reason)
    if state.status == common_pb2.REQUEST_STATUS_IN_PROGRESS:
        return InProgress(logs=logs, partials=tuple(decode_payload(p) for p in state.partials))
    if state.status == common_pb2.REQUEST_STATUS_COMPLETED:
        return _completed_from_proto(state, logs)
    raise InternalError(f"server sent a request state without a status: {state.status}")


def _completed_from_proto(state: queue_pb2.RequestState, logs: tuple[LogLine, ...]) -> Completed:
    has_metrics = state.HasField("metrics") and state.metrics.HasField("inference_time")
    return Completed(
        logs=logs,
        output=decode_payload(state.output) if state.HasField("output") else None,
        error=error_from_proto(state.error) if state.HasField("error") else None,
        inference_time_s=(state.metrics.inference_time.ToTimedelta().total_seconds()
                          if has_metrics else None),
    )


def status_to_proto(status: Status, request_id: str = "") -> queue_pb2.RequestState:
    """The wire form of a status (the output re-encoded as JSON)."""
    match status:
        case Queued(position=position, waiting_reason=reason):
            return queue_pb2.RequestState(
                request_id=request_id, status=common_pb2.REQUEST_STATUS_IN_QUEUE,
                queue_position=position, waiting_reason=reason,
            )
        case InProgress(logs=logs, partials=partials):
            return queue_pb2.RequestState(
                request_id=request_id, status=common_pb2.REQUEST_STATUS_IN_PROGRESS,
                logs=[log_to_proto(line) for line in logs],
                partials=[encode_arguments(p) for p in partials],
            )
        case Completed():
            return _completed_to_proto(status, request_id)


def _completed_to_proto(status: Completed, request_id: str) -> queue_pb2.RequestState:
    state = queue_pb2.RequestState(
        request_id=request_id, status=common_pb2.REQUEST_STATUS_COMPLETED,
        logs=[log_to_proto(line) for line in status.logs],
    )
    if status.error is not None:
        state.error.CopyFrom(error_to_proto(status.error))
    else:
        state.output.CopyFrom(encode_arguments(status.output))
    if status.inference_time_s is not None:
        state.metrics.inference_time.FromNanoseconds(round(status.inference_time_s * 1e9))
    return state
