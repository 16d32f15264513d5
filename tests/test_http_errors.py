"""The HTTP edge's one error table and its wire forms, as tables: each error type's status,
the envelope (a field list for validation failures), and server-sent events' framing."""

from __future__ import annotations

import json

import pytest

from falrt import errors
from falrt.server.http.errors import envelope, error_response, field_location, status_of
from falrt.server.http.events import event

pytestmark = pytest.mark.unit


@pytest.mark.parametrize(("error", "status"), [
    (errors.InvalidArgumentError("bad header"), 400),
    (errors.ValidationFailedError("bad input", field_errors=[("$.name", "field required")]), 422),
    (errors.UnauthenticatedError("no key"), 401),
    (errors.PermissionDeniedError("not yours"), 403),
    (errors.NotFoundError("no app"), 404),
    (errors.NotCompletedError("still running"), 400),
    (errors.AlreadyExistsError("twice"), 409),
    (errors.PayloadTooLargeError("big"), 413),
    (errors.ResourceExhaustedError("queue full"), 429),
    (errors.StoreFullError("disk full"), 503),
    (errors.UnavailableError("stopping"), 503),
    (errors.RequestCancelledError("cancelled"), 499),
    (errors.RequestTimeoutError("late"), 504),
    (errors.StartupTimeoutError("slow start"), 504),
    (errors.RunnerDisconnectedError("gone"), 503),
    (errors.RunnerServerError("handler raised"), 500),
    (errors.InternalError("bug"), 500),
])
def test_each_error_type_has_fals_status(error: errors.FalrtError, status: int) -> None:
    assert status_of(error) == status
    response = error_response(error, "r-1")
    assert response.status_code == status
    assert response.headers["x-fal-error-type"] == error.error_type
    assert response.headers["x-fal-request-id"] == "r-1"
    assert json.loads(bytes(response.body))["error_type"] == error.error_type


def test_an_error_type_a_newer_runner_reports_is_a_500_that_keeps_its_name() -> None:
    info = errors.to_proto(errors.InternalError("odd"))
    info.error_type = "gpu_on_fire"
    error = errors.from_proto(info)
    assert (status_of(error), envelope(error)["error_type"]) == (500, "gpu_on_fire")


def test_a_validation_failure_has_fastapis_field_list() -> None:
    error = errors.ValidationFailedError("input failed validation", field_errors=[
        ("$.items[2].size", "Expected `int`"), ("$", "not an object")])
    assert envelope(error) == {"error_type": "bad_request", "detail": [
        {"loc": ["body", "items", 2, "size"], "msg": "Expected `int`", "type": "value_error"},
        {"loc": ["body"], "msg": "not an object", "type": "value_error"},
    ]}


@pytest.mark.parametrize(("location", "loc"), [
    ("$", ["body"]), ("", ["body"]), ("$.name", ["body", "name"]),
    ("$[0]", ["body", 0]), ("$.a.b[10].c", ["body", "a", "b", 10, "c"]),
    ("name", ["body", "name"]),
])
def test_field_locations_become_fastapi_locs(location: str, loc: list[object]) -> None:
    assert field_location(location) == loc


def test_an_infrastructure_error_has_a_flat_detail() -> None:
    assert envelope(errors.NotFoundError("no app 'x'")) == {
        "detail": "no app 'x'", "error_type": "not_found"}


@pytest.mark.parametrize(("data", "name", "framed"), [
    (b'{"a":1}', "", b'data: {"a":1}\n\n'),
    (b'{"a":\n1}', "", b'data: {"a":\ndata: 1}\n\n'),
    (b'{"a":\r\n1}', "", b'data: {"a":\ndata: 1}\n\n'),
    (b'{"detail":"x"}', "error", b'event: error\ndata: {"detail":"x"}\n\n'),
])
def test_server_sent_events_frame_json_so_readers_join_it_back(
        data: bytes, name: str, framed: bytes) -> None:
    assert event(data, name) == framed
