"""The RunnerLink protocol as the shim sees it: server events in, runner messages out.

Incoming `ServerMessage`s become a closed union of small frozen events (`ServerEvent`);
outgoing messages are built by the functions below. This is the only shim module that
touches the generated protobuf classes of RunnerLink.
"""

from __future__ import annotations

import time

import msgspec

from falrt.errors import FalrtError, to_proto
from falrt.v1 import common_pb2, runner_pb2

__all__ = [
    "Assign",
    "Cancel",
    "Drain",
    "ServerEvent",
    "Welcome",
    "error_result",
    "event_from_proto",
    "heartbeat",
    "hello",
    "log_message",
    "ok_result",
    "partial",
    "state_change",
]


class Assign(msgspec.Struct, frozen=True):
    """Serve `data` (encoded as `content_type`) on endpoint `path`."""

    request_id: str
    path: str
    data: bytes
    content_type: str
    traceparent: str = ""  # the server's span of this attempt ("": not traced)


class Cancel(msgspec.Struct, frozen=True):
    """Stop serving a request."""

    request_id: str


class Drain(msgspec.Struct, frozen=True):
    """Take no new work, finish in-flight requests, tear down and exit."""


class RealtimeStart(msgspec.Struct, frozen=True):
    """Open a realtime session on endpoint `path` (it holds a slot until it closes)."""

    session_id: str
    path: str


class RealtimeInput(msgspec.Struct, frozen=True):
    session_id: str
    data: bytes
    content_type: str


class RealtimeEnd(msgspec.Struct, frozen=True):
    """The caller sent its last input."""

    session_id: str


class Welcome(msgspec.Struct, frozen=True):
    """The server accepted this runner's Hello."""

    server_id: str


ServerEvent = Assign | Cancel | Drain | RealtimeStart | RealtimeInput | RealtimeEnd | Welcome


class UnknownEvent(ValueError):
    """A ServerMessage with no event the shim knows (a newer server)."""


def event_from_proto(message: runner_pb2.ServerMessage) -> ServerEvent:
    """The event a ServerMessage carries. Raises UnknownEvent."""
    match message.WhichOneof("event"):
        case "assign":
            a = message.assign
            return Assign(a.request_id, a.path, a.input.data, a.input.content_type,
                          a.traceparent)
        case "cancel":
            return Cancel(message.cancel.request_id)
        case "drain":
            return Drain()
        case "realtime_start":
            start = message.realtime_start
            return RealtimeStart(start.session_id, start.path)
        case "realtime_input":
            item = message.realtime_input
            return RealtimeInput(item.session_id, item.input.data, item.input.content_type)
        case "realtime_end":
            return RealtimeEnd(message.realtime_end.session_id)
        case "welcome":
            return Welcome(message.welcome.server_id)
        case other:
            raise UnknownEvent(f"unknown server message {other!r}")


def hello(runner_id: str, token: str, slots: int, paths: list[str]) -> runner_pb2.RunnerMessage:
    return runner_pb2.RunnerMessage(
        hello=runner_pb2.Hello(runner_id=runner_id, token=token, slots=slots, endpoint_paths=paths)
    )


def log_message(request_id: str, message: str, source: str) -> runner_pb2.RunnerMessage:
    """A RunnerLog of one line, stamped now. `request_id` empty for runner-level lines."""
    out = runner_pb2.RunnerMessage()
    entry = out.log
    entry.request_id = request_id
    entry.line.timestamp.FromNanoseconds(time.time_ns())
    entry.line.message = message
    entry.line.source = source
    return out


def realtime_output(session_id: str, data: bytes, content_type: str) -> runner_pb2.RunnerMessage:
    out = runner_pb2.RunnerMessage()
    out.realtime_output.session_id = session_id
    out.realtime_output.output.data = data
    out.realtime_output.output.content_type = content_type
    return out


def realtime_credit(session_id: str, inputs: int) -> runner_pb2.RunnerMessage:
    out = runner_pb2.RunnerMessage()
    out.realtime_credit.session_id = session_id
    out.realtime_credit.inputs = inputs
    return out


def realtime_closed(session_id: str, error: FalrtError | None) -> runner_pb2.RunnerMessage:
    out = runner_pb2.RunnerMessage()
    out.realtime_closed.session_id = session_id
    if error is not None:
        out.realtime_closed.error.CopyFrom(to_proto(error))
    return out


def partial(request_id: str, data: bytes, content_type: str) -> runner_pb2.RunnerMessage:
    out = runner_pb2.RunnerMessage()
    out.partial.request_id = request_id
    out.partial.output.data = data
    out.partial.output.content_type = content_type
    return out


def ok_result(
    request_id: str, data: bytes | None, content_type: str, inference_s: float
) -> runner_pb2.RunnerMessage:
    """A successful Result; `data` None for streams (no output payload)."""
    out = runner_pb2.RunnerMessage()
    result = out.result
    result.request_id = request_id
    if data is not None:
        result.output.data = data
        result.output.content_type = content_type
    result.inference_time.FromNanoseconds(int(inference_s * 1e9))
    return out


def error_result(
    request_id: str, error: FalrtError, inference_s: float | None = None
) -> runner_pb2.RunnerMessage:
    """A failed Result carrying `error` as ErrorInfo."""
    out = runner_pb2.RunnerMessage()
    result = out.result
    result.request_id = request_id
    result.error.CopyFrom(to_proto(error))
    if inference_s is not None:
        result.inference_time.FromNanoseconds(int(inference_s * 1e9))
    return out


def add_verdict(
    message: runner_pb2.RunnerMessage, needs_retry: bool | None, stop_runner: bool | None
) -> None:
    """Carries what the handler said about retrying and about its runner, when it said it."""
    if needs_retry is not None:
        message.result.needs_retry = needs_retry
    if stop_runner is not None:
        message.result.stop_runner = stop_runner


def heartbeat(
    free_slots: int, gpus: list[common_pb2.GpuStats] | None = None
) -> runner_pb2.RunnerMessage:
    return runner_pb2.RunnerMessage(
        heartbeat=runner_pb2.Heartbeat(free_slots=free_slots, gpus=gpus or []))


def state_change(state: common_pb2.RunnerState.ValueType) -> runner_pb2.RunnerMessage:
    return runner_pb2.RunnerMessage(state_change=runner_pb2.StateChange(state=state))
