"""How a realtime WebSocket closes (`falrt/server/http/realtime.py`): the close code of each
kind of error, and a reason that always fits in a close frame."""

from __future__ import annotations

import pytest

from falrt import errors
from falrt.server.http.realtime import CLOSE_REASON_BYTES, close_code, close_reason

pytestmark = pytest.mark.unit


@pytest.mark.parametrize(("error", "code"), [
    (errors.UnauthenticatedError, 1008),
    (errors.PermissionDeniedError, 1008),
    (errors.NotFoundError, 1008),
    (errors.InvalidArgumentError, 1008),
    (errors.PayloadTooLargeError, 1009),
    (errors.ResourceExhaustedError, 1013),
    (errors.RunnerDisconnectedError, 1013),
    (errors.UnavailableError, 1013),
    (errors.RunnerServerError, 1011),
    (errors.RequestTimeoutError, 1011),
    (errors.InternalError, 1011),
])
def test_each_kind_of_error_closes_with_its_code(error: type[errors.FalrtError], code: int
                                                 ) -> None:
    assert close_code(error.error_type) == code


def test_an_error_type_the_gateway_does_not_know_is_a_server_error() -> None:
    assert close_code("some_new_runner_error") == 1011


def test_the_reason_names_the_error_type_and_is_cut_on_a_character_boundary() -> None:
    assert close_reason("not_found", "no app 'x'") == "not_found: no app 'x'"
    long = close_reason("runner_server_error", "é" * 200)
    assert long.startswith("runner_server_error: é")
    assert len(long.encode()) <= CLOSE_REASON_BYTES
    assert len(long.encode()) >= CLOSE_REASON_BYTES - 1
