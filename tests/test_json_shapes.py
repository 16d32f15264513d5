"""`--output json`'s shapes (cli/json_shapes.py, documented in docs/cli-json.md): protobuf
messages as plain JSON, without protobuf's JSON mapping."""

from __future__ import annotations

import json

import click
import pytest
from falrt.cli.json_shapes import enum_word, message_json, timestamp_json
from falrt.cli.main import main
from falrt.cli.runners import STATE_NAMES
from google.protobuf.duration_pb2 import Duration
from google.protobuf.timestamp_pb2 import Timestamp

from falrt.v1 import common_pb2, control_pb2

pytestmark = pytest.mark.unit


def _runner() -> control_pb2.RunnerInfo:
    runner = control_pb2.RunnerInfo(
        runner_id="r-1", app_name="hello", state=common_pb2.RUNNER_STATE_IDLE, served=2**40,
        max_multiplexing=2, gpus=["GPU-1"],
        gpu_stats=[common_pb2.GpuStats(memory_used_bytes=2**33, memory_total_bytes=2**35)],
        transitions=[control_pb2.RunnerTransition(state=common_pb2.RUNNER_STATE_PENDING)])
    runner.started_at.FromNanoseconds(1_700_000_000_250_000_000)
    return runner


def test_int64_fields_are_numbers_and_enums_are_the_words_the_flags_take() -> None:
    shaped = message_json(_runner())
    assert shaped["served"] == 2**40 and shaped["max_multiplexing"] == 2
    assert shaped["gpu_stats"][0]["memory_used_bytes"] == 2**33
    assert shaped["state"] == "idle"
    assert shaped["transitions"] == [{"state": "pending", "at": None}]


def test_timestamps_are_iso_8601_in_utc_and_null_when_unset() -> None:
    shaped = message_json(_runner())
    assert shaped["started_at"] == "2023-11-14T22:13:20.250000Z"
    assert shaped["state_since"] is None
    assert timestamp_json(Timestamp(seconds=1_700_000_000)) == "2023-11-14T22:13:20Z"


def test_every_runner_state_is_a_choice_of_the_state_flag() -> None:
    words = [enum_word(common_pb2.RunnerState.DESCRIPTOR, n)
             for n in common_pb2.RunnerState.values()]
    assert words == [None, *STATE_NAMES]


def test_endpoint_kinds_are_lower_case_words_and_unspecified_is_null() -> None:
    kinds = control_pb2.EndpointKind.DESCRIPTOR
    assert [enum_word(kinds, n) for n in range(4)] == [None, "unary", "stream", "realtime"]


def test_schemas_are_nested_objects_under_names_without_json() -> None:
    schema = {"type": "object", "properties": {"name": {"type": "string"}}}
    spec = control_pb2.EndpointSpec(path="/", name="run", kind=control_pb2.ENDPOINT_KIND_UNARY,
                                    input_schema_json=json.dumps(schema))
    assert message_json(spec) == {"path": "/", "name": "run", "kind": "unary",
                                  "input_schema": schema, "output_schema": None,
                                  "input_check": None}
    spec.input_check = control_pb2.INPUT_CHECK_SHAPE
    assert message_json(spec)["input_check"] == "shape"


def test_unset_optional_fields_are_null_and_maps_are_objects() -> None:
    info = control_pb2.AppInfo(name="hello", queue_size=3)
    info.scale_overrides.max_multiplexing = 4
    info.settings.retry_config["timeout"] = 2
    shaped = message_json(info)
    assert shaped["queue_size"] == 3 and shaped["active_runners"] == 0
    assert shaped["scale_overrides"]["max_multiplexing"] == 4
    assert shaped["scale_overrides"]["keep_alive_s"] is None
    assert shaped["settings"]["retry_config"] == {"timeout": 2}
    assert shaped["effective"] is None
    assert shaped["created_at"] is None


def test_durations_are_seconds() -> None:
    metrics = common_pb2.RequestMetrics(inference_time=Duration(seconds=1, nanos=500_000_000))
    assert message_json(metrics)["inference_time"] == 1.5


def test_the_shape_is_plain_json() -> None:
    text = json.dumps(message_json(_runner()))
    assert "RUNNER_STATE" not in text and json.loads(text)["served"] == 2**40


# Commands without --output json: their answer is already JSON (call, requests result, apps
# openapi), a stream of log lines (runners logs, and run: a dev loop in a terminal), a
# server, or local files and credentials.
NO_OUTPUT_FORMAT = {"server", "call", "requests result", "apps openapi", "runners logs",
                    "login", "logout", "certs dev", "run"}


def test_every_command_that_answers_or_changes_something_takes_output_json() -> None:
    def commands(group: click.Group, path: str = "") -> dict[str, click.Command]:
        found: dict[str, click.Command] = {}
        for name, command in group.commands.items():
            full = f"{path} {name}".strip()
            found |= (commands(command, full) if isinstance(command, click.Group)
                      else {full: command})
        return found

    missing = [name for name, command in commands(main).items()
               if name not in NO_OUTPUT_FORMAT
               and "output" not in {p.name for p in command.params}]
    assert missing == []
