"""Errors in gRPC's standard place: a failed call's `grpc-status-details-bin` holds a
`google.rpc.Status` with an `ErrorInfo` (reason = falrt's error_type) and, for field errors,
a `BadRequest`, beside falrt's own trailers; decoded here with the stock `grpc_status`.
"""

from __future__ import annotations

import grpc
import pytest
from google.rpc import error_details_pb2, status_pb2
from grpc_status import rpc_status

from falrt import errors
from falrt.client import connection
from falrt.v1 import common_pb2, queue_pb2, queue_pb2_grpc
from tests.harness import ServerProcess


def _details(status: status_pb2.Status) -> tuple[error_details_pb2.ErrorInfo,
                                                    list[error_details_pb2.BadRequest]]:
    """The one ErrorInfo of `status`, and its BadRequests."""
    reasons, requests = [], []
    for detail in status.details:
        if detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
            reasons.append(error_details_pb2.ErrorInfo())
            detail.Unpack(reasons[-1])
        elif detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
            requests.append(error_details_pb2.BadRequest())
            detail.Unpack(requests[-1])
    (reason,) = reasons
    return reason, requests


@pytest.mark.unit
def test_the_standard_status_carries_the_reason_and_the_field_violations() -> None:
    error = errors.ValidationFailedError("input is invalid",
                                         field_errors=[("$.name", "required"), ("$.n", "int")])
    info = errors.to_proto(error)
    metadata = dict(errors.trailing_metadata(info))
    assert metadata[errors.ERROR_TYPE_KEY] == "bad_request"
    assert errors.from_proto(common_pb2.ErrorInfo.FromString(
        metadata[errors.ERROR_BIN_KEY])).field_errors == error.field_errors
    status = status_pb2.Status.FromString(metadata["grpc-status-details-bin"])
    assert status.code == grpc.StatusCode.INVALID_ARGUMENT.value[0]
    assert status.message == str(error) == errors.status_message(info)
    reason, (request,) = _details(status)
    assert (reason.reason, reason.domain) == ("bad_request", errors.ERROR_DOMAIN)
    assert reason.metadata["grpcCode"] == "INVALID_ARGUMENT"
    assert [(v.field, v.description) for v in request.field_violations] == [
        ("$.name", "required"), ("$.n", "int")]


@pytest.mark.unit
def test_an_error_without_field_errors_has_no_bad_request() -> None:
    status = status_pb2.Status.FromString(
        errors.status_details(errors.to_proto(errors.NotFoundError("no app local/x"))))
    reason, requests = _details(status)
    assert reason.reason == "not_found" and requests == []
    assert status.code == grpc.StatusCode.NOT_FOUND.value[0]


@pytest.mark.unit
def test_many_field_errors_are_cut_to_fit_the_trailers() -> None:
    many = [(f"$.field_{i}", "x" * 60) for i in range(500)]
    details = errors.status_details(errors.to_proto(
        errors.ValidationFailedError("input is invalid", field_errors=many)))
    _, (request,) = _details(status_pb2.Status.FromString(details))
    assert 0 < len(request.field_violations) < len(many)
    assert request.field_violations[0].field == "$.field_0"


@pytest.mark.e2e
def test_a_real_call_with_bad_input_decodes_with_the_stock_library(server: ServerProcess) -> None:
    hello = server.deploy("examples/hello.py::Hello")
    with connection.channel(server.address) as channel:
        stub = queue_pb2_grpc.QueueStub(channel)
        with pytest.raises(grpc.RpcError) as raw:
            stub.Run(queue_pb2.RunRequest(
                endpoint_id=hello, input=common_pb2.Payload(data=b'{"name": []}')))
        with pytest.raises(grpc.RpcError) as missing:
            stub.Submit(queue_pb2.SubmitRequest(endpoint_id="local/no-such-app"))
    status = rpc_status.from_call(raw.value)  # checks code and message match the call's
    assert status is not None
    assert status.code == grpc.StatusCode.INVALID_ARGUMENT.value[0]
    reason, (request,) = _details(status)
    assert (reason.reason, reason.domain) == ("bad_request", "falrt.dev")
    assert [v.field for v in request.field_violations] == ["$.name"]
    assert dict(raw.value.trailing_metadata())["falrt-error-type"] == "bad_request"
    not_found = rpc_status.from_call(missing.value)
    assert not_found is not None and _details(not_found)[0].reason == "not_found"
