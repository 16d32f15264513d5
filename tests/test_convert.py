"""Round trips of the server's edge converters (protobuf <-> plain records)."""

from __future__ import annotations

import pytest

from falrt import errors
from falrt.files import refs
from falrt.server.api import convert
from falrt.server.queue.outcomes import content_type_of
from falrt.server.state.apps import check_config
from falrt.store.records import AppConfig, EndpointRecord, ErrorRecord, LogRecord, Priority
from falrt.v1 import common_pb2, control_pb2, queue_pb2, runner_pb2

pytestmark = pytest.mark.unit


def test_app_settings_round_trip_keeping_unset_fields_unset() -> None:
    config = AppConfig(requirements=("six",), machine_types=("GPU-H100", "GPU-A100"),
                       app_auth="public", keep_alive_s=0.0, max_multiplexing=4,
                       skip_retry_conditions=("timeout",), retry_config={"server_error": 2})
    message = convert.app_settings(config)
    assert not message.HasField("min_concurrency") and message.HasField("keep_alive_s")
    assert convert.app_config(message) == config


def test_requirement_stages_and_private_logs_round_trip_in_one_normal_form() -> None:
    config = AppConfig(requirements=("torch==2.5.0", "", "flash-attn", "--no-build-isolation"),
                       private_logs=True)
    message = convert.app_settings(config)
    assert list(message.requirements) == list(config.requirements) and message.private_logs
    assert convert.app_config(message) == config
    # Empty stages and blank specifiers an older or other client sends are dropped.
    sloppy = control_pb2.AppSettings(requirements=["", " six ", "", "", "idna", ""])
    assert convert.app_config(sloppy).requirements == ("six", "", "idna")
    assert convert.app_config(control_pb2.AppSettings()).private_logs is False


def test_unknown_retry_conditions_in_app_settings_are_invalid() -> None:
    with pytest.raises(errors.InvalidArgumentError, match="unknown retry condition"):
        convert.app_config(control_pb2.AppSettings(skip_retry_conditions=["sometimes"]))


def test_endpoint_error_and_log_round_trips() -> None:
    endpoint = EndpointRecord("/embed", "embed", 2, '{"type": "object"}', "{}")
    assert convert.endpoint_record(convert.endpoint_spec(endpoint)) == endpoint
    error = ErrorRecord("bad_request", "input failed validation", 3, (("$.name", "missing"),),
                        "Traceback")
    assert convert.error_record(convert.error_info(error)) == error
    line = LogRecord(1_700_000_000.25, "hello", "stdout")
    assert convert.log_record(convert.log_line(line)) == line


def test_submit_options_are_read_and_checked() -> None:
    request = queue_pb2.SubmitRequest(priority=common_pb2.PRIORITY_LOW, no_retry=True,
                                      retry_config={"timeout": 1}, max_queue_length=5,
                                      idempotency_key="k", webhook_url="https://example.test/h")
    request.start_timeout.FromMilliseconds(1500)
    options = convert.submit_options(request)
    assert (options.priority, options.no_retry, dict(options.retry_config),
            options.start_timeout_s, options.max_queue_length, options.idempotency_key,
            options.webhook_url) == (Priority.LOW, True, {"timeout": 1}, 1.5, 5, "k",
                                     "https://example.test/h")
    for bad in (queue_pb2.SubmitRequest(retry_config={"later": 1}),
                queue_pb2.SubmitRequest(retry_config={"timeout": -1}),
                queue_pb2.SubmitRequest(max_queue_length=-1),
                queue_pb2.SubmitRequest(idempotency_key="k" * 257),
                queue_pb2.SubmitRequest(webhook_url="ftp://example.test/")):
        with pytest.raises(errors.InvalidArgumentError):
            convert.submit_options(bad)


def test_gpu_figures_round_trip_through_a_runners_info() -> None:
    from falrt.server.state.runners import RunnerHandle

    sent = [common_pb2.GpuStats(uuid="GPU-1", memory_used_bytes=5, memory_total_bytes=80,
                                utilization_percent=42)]
    runner = RunnerHandle(runner_id="r-1", app_name="a", revision_id="rev", token="t",
                          max_multiplexing=1, machine_type="GPU-H100")
    runner.gpu_stats = convert.gpu_figures(sent)
    assert list(convert.runner_info(runner).gpu_stats) == sent


def test_submit_options_refuse_a_priority_the_contract_does_not_define() -> None:
    for value, expected in ((0, Priority.NORMAL), (1, Priority.NORMAL), (2, Priority.LOW)):
        request = queue_pb2.SubmitRequest(priority=value)  # type: ignore[arg-type]
        assert convert.submit_options(request).priority is expected
    with pytest.raises(errors.InvalidArgumentError, match="priority 7 is not one of"):
        convert.submit_options(queue_pb2.SubmitRequest(priority=7))  # type: ignore[arg-type]


def test_submit_options_refuse_a_duration_outside_protobufs_range() -> None:
    from google.protobuf.duration_pb2 import Duration

    fine = queue_pb2.SubmitRequest(start_timeout=Duration(seconds=2, nanos=500_000_000))
    assert convert.submit_options(fine).start_timeout_s == 2.5
    for bad in (Duration(seconds=10**15), Duration(seconds=1, nanos=-5),
                Duration(nanos=2_000_000_000)):
        with pytest.raises(errors.InvalidArgumentError, match="start_timeout is outside"):
            convert.submit_options(queue_pb2.SubmitRequest(start_timeout=bad))


@pytest.mark.parametrize("config", [
    AppConfig(keep_alive_s=float("nan")), AppConfig(request_timeout_s=float("inf")),
    AppConfig(termination_grace_period_s=315_576_000_001.0), AppConfig(num_gpus=-1),
    AppConfig(scaling_delay_s=-0.5), AppConfig(runners_per_gpu=0),
    AppConfig(runners_per_gpu=2, num_gpus=2),
])
def test_app_settings_must_be_finite_durations_in_protobufs_range(config: AppConfig) -> None:
    with pytest.raises(errors.InvalidArgumentError, match="must be"):
        check_config(config)
    check_config(AppConfig(keep_alive_s=0.0, request_timeout_s=315_576_000_000.0))


def test_a_payload_kept_by_reference_goes_out_as_its_file_and_comes_back_the_same() -> None:
    """falrt/files/refs.py: the runner's Result with a file id, kept as a marked pair, is
    answered as the same file id, size and URL; an inline payload stays as it was."""
    result = runner_pb2.Result(request_id="r", output=common_pb2.Payload(
        file_id="ab" * 16, size=70_000_000, url="http://h/files/x?signature=s",
        content_type="application/msgpack"))
    kept = convert.outcome(result)
    assert refs.is_ref(kept.content_type) and len(kept.output) < 100
    answer = common_pb2.Payload()
    convert.fill_payload(answer, kept.output, kept.content_type)
    assert answer == result.output
    inline = common_pb2.Payload()
    convert.fill_payload(inline, b'{"a":1}', "application/json")
    assert inline == common_pb2.Payload(data=b'{"a":1}', content_type="application/json")


def test_a_caller_cannot_send_the_marker_of_a_reference_as_a_content_type() -> None:
    """Only the edge that checked a file marks an input as a reference."""
    with pytest.raises(errors.InvalidArgumentError, match="unsupported content type"):
        content_type_of(refs.marked("application/json"))
    assert content_type_of("application/json", by_ref=True) == refs.marked("application/json")


@pytest.mark.parametrize("inference_s", [0.0, 0.000123, 1.5, 3601.999999999])
def test_inference_time_round_trips_from_a_result_to_a_reply(inference_s: float) -> None:
    result = runner_pb2.Result(request_id="r")
    result.inference_time.FromNanoseconds(round(inference_s * 1e9))
    outcome = convert.outcome(result)
    assert outcome.inference_time_s == pytest.approx(inference_s, abs=1e-9)
    reply = queue_pb2.RunResponse()
    convert.fill_metrics(reply.metrics, outcome)
    assert reply.metrics.inference_time == result.inference_time
