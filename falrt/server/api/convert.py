"""Conversions between protobuf messages and the control plane's plain records.

The only module of the server core that knows the generated types' shapes besides the
servicers; each converter has a round trip in tests/test_convert.py.
"""

from __future__ import annotations

from collections.abc import Sequence

from google.protobuf.duration_pb2 import Duration
from google.protobuf.timestamp_pb2 import Timestamp

from falrt import errors
from falrt.files import refs
from falrt.limits import MAX_DURATION_SECONDS
from falrt.requirement_stages import join_stages, split_stages
from falrt.server.queue.options import CONDITIONS, check_options
from falrt.server.queue.outcomes import SubmitOptions, Verdict
from falrt.server.state.runners import GpuFigures, RunnerHandle
from falrt.server.state.work import QueuedRequest
from falrt.store.records import (
    AppConfig,
    EndpointRecord,
    ErrorRecord,
    LogRecord,
    Outcome,
    Priority,
    Status,
)
from falrt.v1 import common_pb2, control_pb2, queue_pb2, runner_pb2

_OPTIONAL_FIELDS = (
    "num_gpus", "runners_per_gpu", "keep_alive_s", "min_concurrency", "max_concurrency",
    "concurrency_buffer", "concurrency_buffer_perc", "scaling_delay_s", "max_multiplexing",
    "request_timeout_s", "startup_timeout_s", "termination_grace_period_s",
)


def timestamp(seconds: float) -> Timestamp:
    """Seconds since the epoch as a Timestamp, to the nearest microsecond (a float holds no
    more: multiplying by 1e9 first would lose the fraction)."""
    whole = int(seconds)
    micros = round((seconds - whole) * 1e6)
    return Timestamp(seconds=whole + micros // 1_000_000, nanos=(micros % 1_000_000) * 1000)


def priority(value: int) -> Priority:
    """The queue priority a message names (unspecified is NORMAL). Raises
    InvalidArgumentError for a number the contract does not define."""
    if value in (common_pb2.PRIORITY_UNSPECIFIED, common_pb2.PRIORITY_NORMAL):
        return Priority.NORMAL
    if value == common_pb2.PRIORITY_LOW:
        return Priority.LOW
    raise errors.InvalidArgumentError(
        f"priority {value} is not one of PRIORITY_NORMAL (1) and PRIORITY_LOW (2)")


def seconds(value: Duration, name: str) -> float:
    """A Duration as seconds. Raises InvalidArgumentError for one outside protobuf's range
    (which gRPC would pass on as it is)."""
    if (abs(value.seconds) > MAX_DURATION_SECONDS or abs(value.nanos) > 999_999_999
            or (value.seconds > 0 > value.nanos) or (value.seconds < 0 < value.nanos)):
        raise errors.InvalidArgumentError(
            f"{name} is outside the range of a protobuf Duration (at most "
            f"{MAX_DURATION_SECONDS} s)")
    return value.seconds + value.nanos / 1e9


def submit_options(request: queue_pb2.SubmitRequest, *, followed: bool = False) -> SubmitOptions:
    """The caller's options of a Submit, checked (`falrt.server.queue.options`, the rules
    the HTTP edge applies too); `followed`: a Subscribe's. Raises InvalidArgumentError."""
    start_timeout_s = 0.0
    if request.HasField("start_timeout"):
        start_timeout_s = seconds(request.start_timeout, "start_timeout")
    return check_options(
        priority=priority(request.priority), no_retry=request.no_retry,
        retry_config=request.retry_config, start_timeout_s=start_timeout_s,
        webhook_url=request.webhook_url, max_queue_length=request.max_queue_length,
        idempotency_key=request.idempotency_key, followed=followed,
    )


def verdict(result: runner_pb2.Result) -> Verdict:
    """What the handler said about retrying and about its runner."""
    return Verdict(
        needs_retry=result.needs_retry if result.HasField("needs_retry") else None,
        stop_runner=result.stop_runner if result.HasField("stop_runner") else None,
    )


def log_record(line: common_pb2.LogLine) -> LogRecord:
    stamp = line.timestamp
    return LogRecord(stamp.seconds + stamp.nanos / 1e9, line.message, line.source)


def log_line(record: LogRecord) -> common_pb2.LogLine:
    return common_pb2.LogLine(
        timestamp=timestamp(record.timestamp), message=record.message, source=record.source
    )


def error_record(info: common_pb2.ErrorInfo) -> ErrorRecord:
    return ErrorRecord(
        error_type=info.error_type,
        message=info.message,
        grpc_code=info.grpc_code,
        field_errors=tuple((f.location, f.message) for f in info.field_errors),
        traceback=info.traceback,
    )


def error_info(record: ErrorRecord) -> common_pb2.ErrorInfo:
    return common_pb2.ErrorInfo(
        error_type=record.error_type,
        message=record.message,
        grpc_code=record.grpc_code,
        field_errors=[common_pb2.FieldError(location=loc, message=msg)
                      for loc, msg in record.field_errors],
        traceback=record.traceback,
    )


def outcome(result: runner_pb2.Result) -> Outcome:
    """A runner's Result as an Outcome (the output bytes are not decoded; an output the
    runner stored in a file is kept as its reference, falrt/files/refs.py)."""
    output, content_type = result.output.data, result.output.content_type
    if result.output.file_id:
        ref = refs.PayloadRef(result.output.file_id, result.output.size, result.output.url)
        output, content_type = refs.pack(ref), refs.marked(content_type or "application/json")
    return Outcome(
        output=output,
        content_type=content_type,
        error=error_record(result.error) if result.HasField("error") else None,
        inference_time_s=_seconds_of(result.inference_time),
    )


def _seconds_of(value: Duration) -> float:
    """A Duration as seconds, read from its fields (protobuf's ToNanoseconds is Python)."""
    return value.seconds + value.nanos / 1e9


def fill_payload(message: common_pb2.Payload, data: bytes, content_type: str) -> None:
    """Sets a Payload from the server's (bytes, content type) pair: the bytes as they are,
    or, for a payload kept by reference, the file's id, size and URL."""
    if refs.is_ref(content_type):
        ref = refs.unpack(data)
        message.file_id, message.size, message.url = ref.file_id, ref.size, ref.url
        message.content_type = refs.plain(content_type)
    else:
        message.data, message.content_type = data, content_type


def fill_metrics(message: common_pb2.RequestMetrics, record: Outcome) -> None:
    """Sets a reply's metrics in place (no Duration built and copied: the direct path's
    reply is made once per call)."""
    seconds, nanos = divmod(round(record.inference_time_s * 1e9), 1_000_000_000)
    message.inference_time.seconds, message.inference_time.nanos = seconds, nanos


def request_state(
    item: QueuedRequest, *, position: int, logs: Sequence[LogRecord], waiting_reason: str,
    partials: Sequence[tuple[bytes, str]] = (),
) -> queue_pb2.RequestState:
    status = item.status
    state = queue_pb2.RequestState(request_id=item.request_id,
                                   status=int(status))  # type: ignore[arg-type]
    if logs:
        state.logs.extend([log_line(r) for r in logs])
    for data, content_type in partials:
        state.partials.add(data=data, content_type=content_type)
    if status is Status.IN_QUEUE:
        state.queue_position = position
        state.waiting_reason = waiting_reason
    elif status is Status.COMPLETED and item.outcome is not None:
        _fill_outcome(state, item.outcome)
    return state


def _fill_outcome(
    message: queue_pb2.RequestState | queue_pb2.GetResultResponse, record: Outcome
) -> None:
    if record.error is not None:
        message.error.CopyFrom(error_info(record.error))
    else:
        fill_payload(message.output, record.output, record.content_type)
    fill_metrics(message.metrics, record)


def result_response(request_id: str, record: Outcome) -> queue_pb2.GetResultResponse:
    response = queue_pb2.GetResultResponse(request_id=request_id)
    _fill_outcome(response, record)
    return response


def app_config(settings: control_pb2.AppSettings) -> AppConfig:
    optional = {name: getattr(settings, name) for name in _OPTIONAL_FIELDS
                if settings.HasField(name)}  # type: ignore[arg-type]
    unknown = (set(settings.skip_retry_conditions) | set(settings.retry_config)) - CONDITIONS
    if unknown:
        raise errors.InvalidArgumentError(
            f"unknown retry condition(s) {sorted(unknown)}: use {sorted(CONDITIONS)}")
    return AppConfig(
        requirements=join_stages(split_stages(settings.requirements)),
        machine_types=tuple(settings.machine_types),
        app_auth=settings.app_auth,
        skip_retry_conditions=tuple(settings.skip_retry_conditions),
        retry_config=dict(settings.retry_config),
        secrets=tuple(settings.secrets),
        dockerfile=settings.dockerfile,
        private_logs=settings.private_logs,
        **optional,
    )


def app_settings(config: AppConfig) -> control_pb2.AppSettings:
    message = control_pb2.AppSettings(
        requirements=config.requirements, machine_types=config.machine_types,
        app_auth=config.app_auth, skip_retry_conditions=config.skip_retry_conditions,
        retry_config=config.retry_config, secrets=config.secrets, dockerfile=config.dockerfile,
        private_logs=config.private_logs,
    )
    for name in _OPTIONAL_FIELDS:
        value = getattr(config, name)
        if value is not None:
            setattr(message, name, value)
    return message


def endpoint_record(spec: control_pb2.EndpointSpec) -> EndpointRecord:
    return EndpointRecord(spec.path, spec.name, int(spec.kind), spec.input_schema_json,
                          spec.output_schema_json, int(spec.input_check))


def endpoint_spec(record: EndpointRecord) -> control_pb2.EndpointSpec:
    return control_pb2.EndpointSpec(
        path=record.path, name=record.name, kind=record.kind,  # type: ignore[arg-type]
        input_schema_json=record.input_schema_json, output_schema_json=record.output_schema_json,
        input_check=record.input_check,  # type: ignore[arg-type]
    )


def gpu_figures(stats: Sequence[common_pb2.GpuStats]) -> list[GpuFigures]:
    return [GpuFigures(g.uuid, g.memory_used_bytes, g.memory_total_bytes,
                       g.utilization_percent) for g in stats]


def runner_info(runner: RunnerHandle) -> control_pb2.RunnerInfo:
    return control_pb2.RunnerInfo(
        runner_id=runner.runner_id,
        app_name=runner.app_name,
        revision_id=runner.revision_id,
        state=int(runner.state),  # type: ignore[arg-type]
        in_flight_request_ids=list(runner.in_flight),
        max_multiplexing=runner.max_multiplexing,
        started_at=timestamp(runner.started_at),
        state_since=timestamp(runner.state_since),
        machine_type=runner.machine_type,
        transitions=[
            control_pb2.RunnerTransition(state=int(state), at=timestamp(at))  # type: ignore[arg-type]
            for state, at in runner.history()
        ],
        last_error=runner.last_error,
        served=runner.served,
        gpus=runner.process.gpus if runner.process is not None else [],
        gpu_stats=[common_pb2.GpuStats(
            uuid=g.uuid, memory_used_bytes=g.memory_used_bytes,
            memory_total_bytes=g.memory_total_bytes, utilization_percent=g.utilization_percent)
            for g in runner.gpu_stats],
        node=runner.process.node if runner.process is not None else "",
    )
