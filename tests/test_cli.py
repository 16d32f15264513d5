"""The `falrt` command: argument parsing, error messages and exit codes.

Commands that need a server talk to a minimal grpc.aio Queue servicer written for these
tests (on port 0, on its own loop in a thread), or to an address where nothing listens.
End-to-end tests against the real server live with the server's tests.
"""

from __future__ import annotations

from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import grpc
import msgspec
import pytest
from click.testing import CliRunner, Result
from falrt.cli.errors import to_cli_error
from falrt.cli.main import main
from falrt.cli.server import build_settings

from falrt.client import Completed, InProgress, LogLine, Queued, RequestError, Status
from falrt.client.status import status_to_proto
from falrt.errors import (
    FalrtError,
    InternalError,
    InvalidArgumentError,
    NotCompletedError,
    NotFoundError,
    RequestTimeoutError,
    RunnerServerError,
    UnavailableError,
    ValidationFailedError,
    to_proto,
    trailing_metadata,
)
from falrt.v1 import common_pb2, queue_pb2, queue_pb2_grpc

pytestmark = pytest.mark.unit

UNREACHABLE = "127.0.0.1:1"
LOG = LogLine(datetime(2025, 1, 1, tzinfo=UTC), "warming up", "stdout")
SCRIPTS: dict[str, list[Status]] = {
    "ok": [Queued(position=1), InProgress(logs=()),
           Completed(output={"greeting": "hi"}, inference_time_s=0.01)],
    "fail": [Completed(error=RequestError("runner_server_error", "boom", 13, (), "Trace"))],
}


def _abort(context: Any, error: FalrtError) -> None:
    context.set_trailing_metadata(trailing_metadata(to_proto(error)))
    context.abort(error.code, error.message)


class CallQueue(queue_pb2_grpc.QueueServicer):
    """`local/<script>` runs a script of SCRIPTS; `local/invalid` fails validation."""

    def Submit(self, request: Any, context: Any) -> queue_pb2.SubmitResponse:
        if request.endpoint_id == "local/invalid":
            error = ValidationFailedError("input is invalid", field_errors=[("$.name", "required")])
            _abort(context, error)
        return queue_pb2.SubmitResponse(request_id=request.endpoint_id.split("/")[1])

    def Watch(self, request: Any, context: Any) -> Iterator[queue_pb2.WatchResponse]:
        for status in SCRIPTS[request.request_id]:
            yield queue_pb2.WatchResponse(state=status_to_proto(status, request.request_id))

    def Subscribe(self, request: Any, context: Any) -> Iterator[queue_pb2.WatchResponse]:
        submitted = self.Submit(request.submit, context)
        yield from self.Watch(queue_pb2.WatchRequest(request_id=submitted.request_id), context)

    def GetStatus(self, request: Any, context: Any) -> queue_pb2.GetStatusResponse:
        state = status_to_proto(InProgress(logs=(LOG,)), request.request_id)
        return queue_pb2.GetStatusResponse(state=state)

    def GetResult(self, request: Any, context: Any) -> queue_pb2.GetResultResponse:
        error = NotCompletedError(f"request {request.request_id} is IN_PROGRESS")
        _abort(context, error)
        raise AssertionError("abort returns only by raising")

    def Cancel(self, request: Any, context: Any) -> queue_pb2.CancelResponse:
        outcome = (queue_pb2.CANCEL_OUTCOME_NOT_FOUND if request.request_id == "nope"
                   else queue_pb2.CANCEL_OUTCOME_ALREADY_COMPLETED)
        return queue_pb2.CancelResponse(outcome=outcome)

    def Run(self, request: Any, context: Any) -> queue_pb2.RunResponse:
        return queue_pb2.RunResponse(output=request.input)

    def Stream(self, request: Any, context: Any) -> Iterator[queue_pb2.StreamResponse]:
        for index in range(2):
            data = msgspec.json.encode({"i": index, "path": request.path})
            yield queue_pb2.StreamResponse(output=common_pb2.Payload(data=data))


@pytest.fixture(scope="module")
def host() -> Iterator[str]:
    """Address of a CallQueue server on port 0.

    A sync gRPC server: an asyncio one stopped on another thread's loop shuts gRPC's asyncio
    layer down and cancels the sync channels of later tests in this process.
    """
    server = grpc.server(ThreadPoolExecutor(max_workers=4))
    queue_pb2_grpc.add_QueueServicer_to_server(CallQueue(), server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    yield f"127.0.0.1:{port}"
    server.stop(None)


def falrt(*args: str, env: dict[str, str] | None = None) -> Result:
    return CliRunner().invoke(main, list(args), env=env)


# --- usage errors (exit 2) ------------------------------------------------------------------

def test_invalid_json_in_data_is_a_usage_error() -> None:
    result = falrt("--host", UNREACHABLE, "call", "local/hello", "--data", "{bad")
    assert result.exit_code == 2
    assert "Invalid value for '--data': not valid JSON" in result.stderr


def test_a_missing_data_file_is_a_usage_error(tmp_path: Path) -> None:
    result = falrt("call", "local/hello", "--data", f"@{tmp_path / 'missing.json'}")
    assert result.exit_code == 2
    assert "cannot read" in result.stderr


def test_an_endpoint_id_without_an_app_is_a_usage_error() -> None:
    result = falrt("--host", UNREACHABLE, "call", "hello")
    assert result.exit_code == 2
    assert "is not of the form owner/app[/path]" in result.stderr


def test_an_unknown_output_format_is_a_usage_error() -> None:
    assert falrt("apps", "list", "--output", "yaml").exit_code == 2


def test_deploying_a_file_that_does_not_exist_is_a_usage_error(tmp_path: Path) -> None:
    result = falrt("deploy", f"{tmp_path / 'nope.py'}::App")
    assert result.exit_code == 2
    assert "is not a Python file" in result.stderr


def test_deploying_a_file_without_an_app_class_is_invalid(tmp_path: Path) -> None:
    app_file = tmp_path / "noapps_for_cli_test.py"
    app_file.write_text("X = 1\n")
    result = falrt("deploy", str(app_file))
    assert result.exit_code == 4
    assert "defines 0 App classes" in result.stderr


def test_deploying_a_file_that_raises_on_import_is_invalid(tmp_path: Path) -> None:
    app_file = tmp_path / "broken_for_cli_test.py"
    app_file.write_text("raise RuntimeError('no model here')\n")
    result = falrt("deploy", f"{app_file}::App")
    assert result.exit_code == 4
    assert "RuntimeError: no model here" in result.stderr


# --- an unreachable server (exit 6) ---------------------------------------------------------

@pytest.mark.parametrize(
    "command",
    [["apps", "list"], ["runners", "list"], ["requests", "status", "r1"],
     ["call", "local/hello"], ["call", "local/hello", "--sync"]],
)
def test_an_unreachable_server_gets_a_hint_and_exit_code_6(command: list[str]) -> None:
    result = falrt("--host", UNREACHABLE, *command)
    assert result.exit_code == 6
    assert f"cannot reach the falrt server at {UNREACHABLE}" in result.stderr
    assert "is `falrt server` running? set --host or FALRT_HOST" in result.stderr


def test_the_host_can_come_from_the_environment() -> None:
    result = falrt("apps", "list", env={"FALRT_HOST": UNREACHABLE})
    assert result.exit_code == 6
    assert UNREACHABLE in result.stderr


# --- the global options, before or after the subcommand ------------------------------------

@pytest.mark.parametrize(
    "command",
    [["deploy"], ["call"], ["login"], ["logout"], ["apps", "list"], ["apps", "scale"],
     ["runners", "logs"], ["requests", "status"], ["queue", "size"], ["envs", "list"],
     ["secrets", "set"], ["keys", "create"]],
)
def test_every_server_command_lists_the_global_options(command: list[str]) -> None:
    help_text = falrt(*command, "--help").stdout
    for option in ("--host", "--tls-ca", "--tls-client-cert", "--tls-client-key"):
        assert option in help_text
    assert "FALRT_HOST" in help_text and "127.0.0.1:50051" in help_text


def test_the_host_can_follow_the_subcommand() -> None:
    result = falrt("apps", "list", "--host", UNREACHABLE, env={"FALRT_HOST": "127.0.0.1:2"})
    assert result.exit_code == 6
    assert f"cannot reach the falrt server at {UNREACHABLE}" in result.stderr


def test_the_host_after_the_subcommand_wins_over_the_one_before() -> None:
    result = falrt("--host", "127.0.0.1:2", "runners", "list", "--host", UNREACHABLE)
    assert result.exit_code == 6
    assert f"cannot reach the falrt server at {UNREACHABLE}" in result.stderr


def test_the_host_before_the_subcommand_stands_when_none_follows_it() -> None:
    result = falrt("--host", UNREACHABLE, "runners", "list", env={"FALRT_HOST": "127.0.0.1:2"})
    assert result.exit_code == 6
    assert f"cannot reach the falrt server at {UNREACHABLE}" in result.stderr


def test_half_a_client_certificate_pair_after_the_subcommand_is_a_usage_error(
    tmp_path: Path,
) -> None:
    pem = tmp_path / "client.pem"
    pem.write_text("")
    result = falrt("apps", "list", "--tls-client-cert", str(pem))
    assert result.exit_code == 2
    assert "--tls-client-cert and --tls-client-key go together" in result.stderr


def test_a_call_takes_the_host_after_its_arguments(host: str) -> None:
    result = falrt("call", "local/ok", "--data", '{"name": "x"}', "--host", host)
    assert result.exit_code == 0, result.stderr
    assert msgspec.json.decode(result.stdout) == {"greeting": "hi"}


# --- calls against a server -----------------------------------------------------------------

def test_a_queued_call_prints_progress_on_stderr_and_the_output_on_stdout(host: str) -> None:
    result = falrt("--host", host, "call", "local/ok", "--data", '{"name": "x"}')
    assert result.exit_code == 0, result.stderr
    assert msgspec.json.decode(result.stdout) == {"greeting": "hi"}
    assert "in queue, position 1" in result.stderr
    assert "completed" in result.stderr


def test_a_failed_request_exits_5_with_its_error_and_traceback(host: str) -> None:
    result = falrt("--host", host, "call", "local/fail")
    assert result.exit_code == 5
    assert "runner_server_error: boom" in result.stderr
    assert "Trace" in result.stderr
    assert result.stdout == ""


def test_a_validation_failure_exits_4_and_names_the_field(host: str) -> None:
    result = falrt("--host", host, "call", "local/invalid")
    assert result.exit_code == 4
    assert "$.name: required" in result.stderr


def test_a_direct_call_reads_data_from_a_file(host: str, tmp_path: Path) -> None:
    data = tmp_path / "input.json"
    data.write_text('{"n": [1, 2]}')
    result = falrt("--host", host, "call", "local/echo", "--sync", "--data", f"@{data}")
    assert result.exit_code == 0, result.stderr
    assert msgspec.json.decode(result.stdout) == {"n": [1, 2]}


def test_a_stream_prints_one_json_line_per_partial_and_takes_the_path_from_the_id(
    host: str,
) -> None:
    result = falrt("--host", host, "call", "local/tokens/sub/path", "--stream")
    assert result.exit_code == 0, result.stderr
    assert result.stdout.splitlines() == ['{"i":0,"path":"/sub/path"}',
                                          '{"i":1,"path":"/sub/path"}']


def test_requests_status_renders_for_people_and_for_scripts(host: str) -> None:
    table = falrt("--host", host, "requests", "status", "r1", "--logs")
    assert table.exit_code == 0
    assert "IN_PROGRESS" in table.stdout and "warming up" in table.stdout
    as_json = msgspec.json.decode(falrt("--host", host, "requests", "status", "r1",
                                        "--output", "json").stdout)
    assert as_json["status"] == "IN_PROGRESS"


def test_the_result_of_an_unfinished_request_exits_7(host: str) -> None:
    result = falrt("--host", host, "requests", "result", "r1")
    assert result.exit_code == 7
    assert "is IN_PROGRESS" in result.stderr


def test_cancel_prints_fal_words_and_exits_3_for_an_unknown_request(host: str) -> None:
    done = falrt("--host", host, "requests", "cancel", "r1")
    assert (done.exit_code, done.stdout.strip()) == (0, "ALREADY_COMPLETED")
    assert falrt("--host", host, "requests", "cancel", "nope").exit_code == 3


def test_cancel_as_json_gives_the_request_and_the_outcome_in_lower_case(host: str) -> None:
    done = falrt("--host", host, "requests", "cancel", "r1", "--output", "json")
    assert done.exit_code == 0
    assert msgspec.json.decode(done.stdout) == {"request_id": "r1",
                                                "outcome": "already_completed"}


# --- the mapping and the server's settings --------------------------------------------------

@pytest.mark.parametrize(
    ("error", "exit_code"),
    [
        (NotFoundError("no app"), 3),
        (InvalidArgumentError("bad"), 4),
        (ValidationFailedError("bad", field_errors=[("$.a", "missing")]), 4),
        (RunnerServerError("boom"), 5),
        (RequestTimeoutError("slow"), 5),
        (UnavailableError("down"), 6),
        (NotCompletedError("wait"), 7),
        (InternalError("bug"), 1),
    ],
)
def test_each_error_class_has_its_exit_code(error: FalrtError, exit_code: int) -> None:
    assert to_cli_error(error, "h:1").exit_code == exit_code


def test_server_settings_keep_defaults_for_options_not_given(tmp_path: Path) -> None:
    settings = build_settings(listen="0.0.0.0:6000", data_dir=None, owner="alice")
    assert (settings.listen, settings.owner) == ("0.0.0.0:6000", "alice")
    assert settings.data_dir.name == "falrt"
    assert build_settings(listen="x:1", data_dir=tmp_path, owner="o").data_dir == tmp_path
