"""The RunnerLink protocol as the shim sees it: server events in, runner messages out.

Incoming `ServerMessage`s become a closed union of small frozen events (`ServerEvent`; an
AssignBatch becomes its Assigns, in order); outgoing messages are built by the functions
below. A request's end is a plain `Result`, built into a message only when it is written
(`results_message`), so that results ready together share one message without being
copied. This is the only shim module that touches the generated protobuf classes of
RunnerLink.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import msgspec

from falrt.errors import FalrtError, to_proto
from falrt.v1 import common_pb2, files_pb2, runner_pb2

__all__ = [
    "Assign",
    "Cancel",
    "Drain",
    "Result",
    "ServerEvent",
    "Welcome",
    "error_result",
    "event_from_proto",
    "events_from_proto",
    "heartbeat",
    "hello",
    "log_message",
    "ok_result",
    "partial",
    "ref_result",
    "results_message",
    "state_change",
]


class Assign(msgspec.Struct, frozen=True):
    """Serve `data` (encoded as `content_type`) on endpoint `path`; with `file_id`, the
    input is that file's bytes instead (shim/payloads.py)."""

    request_id: str
    path: str
    data: bytes
    content_type: str
    traceparent: str = ""  # the server's span of this attempt ("": not traced)
    file_id: str = ""


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


def events_from_proto(message: runner_pb2.ServerMessage) -> list[ServerEvent]:
    """The events a ServerMessage carries, in order (several for an AssignBatch). Raises
    UnknownEvent."""
    if message.WhichOneof("event") == "assigns":
        return [_assign(a) for a in message.assigns.assigns]
    return [event_from_proto(message)]


def _assign(a: runner_pb2.Assign) -> Assign:
    return Assign(a.request_id, a.path, a.input.data, a.input.content_type, a.traceparent,
                  a.input.file_id)


def event_from_proto(message: runner_pb2.ServerMessage) -> ServerEvent:
    """The event a ServerMessage carries. Raises UnknownEvent."""
    match message.WhichOneof("event"):
        case "assign":
            return _assign(message.assign)
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


@dataclass(slots=True)
class Result:
    """The end of a request on this runner, as the `Result` message will carry it."""

    request_id: str
    output: bytes | None = None  # None: no output (a failure, or a stream's end)
    content_type: str = ""
    error: FalrtError | None = None
    inference_s: float | None = None
    # What the handler said about a retry and about its runner (None: nothing).
    needs_retry: bool | None = None
    stop_runner: bool | None = None
    # The output by reference: the file holding it (`output` is then b"").
    output_file: files_pb2.FileInfo | None = None

    @property
    def size(self) -> int:
        """Its bytes in a message, less its fixed-size fields and its id."""
        error = 0 if self.error is None else to_proto(self.error).ByteSize()
        return len(self.output or b"") + len(self.content_type) + error


def ok_result(
    request_id: str, data: bytes | None, content_type: str, inference_s: float
) -> Result:
    """A successful Result; `data` None for streams (no output payload)."""
    return Result(request_id, data, content_type, inference_s=inference_s)


def ref_result(
    request_id: str, file: files_pb2.FileInfo, content_type: str, inference_s: float
) -> Result:
    """A successful Result whose output is in `file` (shim/payloads.py)."""
    return Result(request_id, b"", content_type, inference_s=inference_s, output_file=file)


def error_result(
    request_id: str, error: FalrtError, inference_s: float | None = None
) -> Result:
    """A failed Result carrying `error` as ErrorInfo."""
    return Result(request_id, error=error, inference_s=inference_s)


def results_message(results: list[Result]) -> runner_pb2.RunnerMessage:
    """One message carrying `results`: a Result for one, else a ResultBatch."""
    out = runner_pb2.RunnerMessage()
    if len(results) == 1:
        _fill_result(out.result, results[0])
    else:
        batch = out.results.results
        for result in results:
            _fill_result(batch.add(), result)
    return out


def _fill_result(message: runner_pb2.Result, result: Result) -> None:
    message.request_id = result.request_id
    if result.output is not None:
        message.output.data = result.output
        message.output.content_type = result.content_type
    if result.output_file is not None:
        file = result.output_file
        message.output.file_id, message.output.size = file.file_id, file.size
        message.output.url = file.url
    if result.error is not None:
        message.error.CopyFrom(to_proto(result.error))
    if result.inference_s is not None:
        message.inference_time.FromNanoseconds(int(result.inference_s * 1e9))
    if result.needs_retry is not None:
        message.needs_retry = result.needs_retry
    if result.stop_runner is not None:
        message.stop_runner = result.stop_runner


def heartbeat(
    free_slots: int, gpus: list[common_pb2.GpuStats] | None = None
) -> runner_pb2.RunnerMessage:
    return runner_pb2.RunnerMessage(
        heartbeat=runner_pb2.Heartbeat(free_slots=free_slots, gpus=gpus or []))


def state_change(state: common_pb2.RunnerState.ValueType) -> runner_pb2.RunnerMessage:
    return runner_pb2.RunnerMessage(state_change=runner_pb2.StateChange(state=state))
