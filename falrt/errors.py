"""The one error tree of falrt.

Every exception carries its gRPC status code and a stable, machine-readable reason
(`error_type`, fal's names where fal has one). This module is also the one place that maps
errors to the wire and back: `to_proto`/`from_proto` for the ErrorInfo message that
travels inside results, `trailing_metadata`/`from_rpc_error` for gRPC statuses.

A failed call carries its error twice in its trailers: falrt's own (`falrt-error-type`, and
`falrt-error-bin`, the ErrorInfo, which falrt's clients read), and gRPC's standard place,
`grpc-status-details-bin`: a `google.rpc.Status` with a `google.rpc.ErrorInfo` (reason =
`error_type`, domain `falrt.dev`) and, for field errors, a `google.rpc.BadRequest`, which
clients in any language decode with their stock libraries (Python: `grpc_status.rpc_status`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, ClassVar

import grpc

from falrt.v1 import common_pb2

ERROR_TYPE_KEY = "falrt-error-type"
# At most this many characters of what a caller sent are repeated in an error message.
QUOTE_CHARS = 80
ERROR_BIN_KEY = "falrt-error-bin"
STATUS_DETAILS_KEY = "grpc-status-details-bin"  # gRPC's standard place (google.rpc.Status)
ERROR_DOMAIN = "falrt.dev"  # google.rpc.ErrorInfo.domain: the reasons below are falrt's
# Field violations the standard details repeat, in bytes: trailers have a size limit (gRPC's
# clients refuse more than 8 KiB by default), and falrt-error-bin carries them all anyway.
FIELD_VIOLATIONS_BYTES = 2048


def quote(value: object, limit: int = QUOTE_CHARS) -> str:
    """`value` as an error message repeats what a caller sent: quoted, and cut to `limit`
    characters with its length said (a long input repeated whole would not fit in a gRPC
    status's trailers, and the caller would see RESOURCE_EXHAUSTED instead of the error)."""
    text = str(value)
    if len(text) <= limit:
        return repr(text)
    return f"{text[:limit]!r}... ({len(text)} characters)"


class FalrtError(Exception):
    """Base of all falrt errors. `code` and `error_type` are per class."""

    code: ClassVar[grpc.StatusCode] = grpc.StatusCode.INTERNAL
    error_type: ClassVar[str] = "internal_error"

    def __init__(
        self,
        message: str,
        *,
        field_errors: Sequence[tuple[str, str]] = (),
        traceback: str = "",
    ) -> None:
        super().__init__(message)
        self.message = message
        self.field_errors = tuple(field_errors)
        self.traceback = traceback

    def __str__(self) -> str:
        if not self.field_errors:
            return self.message
        fields = "; ".join(f"{loc}: {msg}" for loc, msg in self.field_errors)
        return f"{self.message} ({fields})"


class InternalError(FalrtError):
    """A fault of falrt itself."""


class InvalidArgumentError(FalrtError):
    """The caller sent something malformed (bad endpoint id, bad bundle, bad flag)."""

    code = grpc.StatusCode.INVALID_ARGUMENT
    error_type = "bad_request"


class ValidationFailedError(InvalidArgumentError):
    """The input did not match the endpoint's input type; `field_errors` names the fields."""


class NotFoundError(FalrtError):
    code = grpc.StatusCode.NOT_FOUND
    error_type = "not_found"


class NotCompletedError(FalrtError):
    """The result of a request that has not completed yet was asked for."""

    code = grpc.StatusCode.FAILED_PRECONDITION
    error_type = "not_completed"


class ResourceExhaustedError(FalrtError):
    code = grpc.StatusCode.RESOURCE_EXHAUSTED
    error_type = "resource_exhausted"


class PayloadTooLargeError(ResourceExhaustedError):
    """An input or an output is larger than one message may carry (falrt/limits.py). Only
    the request at fault fails; its runner and the other requests go on."""

    error_type = "payload_too_large"


class StoreFullError(ResourceExhaustedError):
    """The server's store cannot write: its disk (or its database) is out of space. Nothing
    is lost: what was acknowledged stays stored, a result that could not be stored is kept
    and written once there is room, and the server answers NOT_SERVING on its health
    service meanwhile (docs/security.md)."""

    error_type = "store_full"


class UnavailableError(FalrtError):
    """The server cannot take the call now (it is shutting down, or unreachable)."""

    code = grpc.StatusCode.UNAVAILABLE
    error_type = "unavailable"


class RequestCancelledError(FalrtError):
    """The request was cancelled by its caller. A handler may raise it to end cleanly."""

    code = grpc.StatusCode.CANCELLED
    error_type = "client_cancelled"


class RequestTimeoutError(FalrtError):
    code = grpc.StatusCode.DEADLINE_EXCEEDED
    error_type = "request_timeout"


class StartupTimeoutError(FalrtError):
    code = grpc.StatusCode.DEADLINE_EXCEEDED
    error_type = "startup_timeout"


class RunnerDisconnectedError(FalrtError):
    """The runner serving the request went away before it answered."""

    code = grpc.StatusCode.UNAVAILABLE
    error_type = "runner_disconnected"


class RunnerRefusedError(FalrtError):
    """The runner refused an assignment before running it (draining, or no free slot): the
    server queues the request again without counting an attempt."""

    code = grpc.StatusCode.UNAVAILABLE
    error_type = "runner_refused"


class RunnerServerError(FalrtError):
    """The app's handler raised. The traceback travels in `traceback`."""

    code = grpc.StatusCode.INTERNAL
    error_type = "runner_server_error"


class UnauthenticatedError(FalrtError):
    """No valid API key came with a call that needs one."""

    code = grpc.StatusCode.UNAUTHENTICATED
    error_type = "unauthenticated"


class PermissionDeniedError(FalrtError):
    """The caller's key may not do this."""

    code = grpc.StatusCode.PERMISSION_DENIED
    error_type = "permission_denied"


class OutOfRangeError(InvalidArgumentError):
    """An offset or range past the end of what it reads (a file's bytes)."""

    code = grpc.StatusCode.OUT_OF_RANGE
    error_type = "out_of_range"


class AlreadyExistsError(FalrtError):
    code = grpc.StatusCode.ALREADY_EXISTS
    error_type = "already_exists"


class FailedPreconditionError(FalrtError):
    """The system is not in a state where the operation can run (say why and what to do)."""

    code = grpc.StatusCode.FAILED_PRECONDITION
    error_type = "failed_precondition"


class StartupFailedError(FailedPreconditionError):
    """The app's runners fail to start (its `setup()` raised, say): a call that needs one
    now is answered with the startup error instead of waiting out its deadline."""

    error_type = "startup_failed"


class InsecureConnectionError(FailedPreconditionError):
    """The client refused to send an API key over plaintext to a server that is not on this
    machine (gRPC sends call credentials in clear only to a local address); raised before
    any call, by the client itself."""

    error_type = "insecure_connection"


_BY_TYPE: dict[str, type[FalrtError]] = {
    cls.error_type: cls
    for cls in (
        InternalError,
        InvalidArgumentError,
        OutOfRangeError,
        NotFoundError,
        NotCompletedError,
        FailedPreconditionError,
        StartupFailedError,
        InsecureConnectionError,
        AlreadyExistsError,
        UnauthenticatedError,
        PermissionDeniedError,
        ResourceExhaustedError,
        PayloadTooLargeError,
        StoreFullError,
        UnavailableError,
        RequestCancelledError,
        RequestTimeoutError,
        StartupTimeoutError,
        RunnerDisconnectedError,
        RunnerRefusedError,
        RunnerServerError,
    )
}


def to_proto(error: FalrtError) -> common_pb2.ErrorInfo:
    """The wire form of an error, as stored in results and sent in status details."""
    return common_pb2.ErrorInfo(
        error_type=error.error_type,
        message=error.message,
        grpc_code=error.code.value[0],
        field_errors=[
            common_pb2.FieldError(location=loc, message=msg) for loc, msg in error.field_errors
        ],
        traceback=error.traceback,
    )


def from_proto(info: common_pb2.ErrorInfo) -> FalrtError:
    """Rebuilds the exception an ErrorInfo describes (InternalError for unknown types)."""
    cls = _BY_TYPE.get(info.error_type, InternalError)
    if info.field_errors and cls is InvalidArgumentError:
        cls = ValidationFailedError
    error = cls(
        info.message,
        field_errors=[(f.location, f.message) for f in info.field_errors],
        traceback=info.traceback,
    )
    if cls is InternalError and info.error_type:
        # Keep an unknown reason readable instead of replacing it with internal_error.
        error.error_type = info.error_type  # type: ignore[misc]
    return error


def status_code_of(info: common_pb2.ErrorInfo) -> grpc.StatusCode:
    """The gRPC status code an ErrorInfo carries."""
    for code in grpc.StatusCode:
        if code.value[0] == info.grpc_code:
            return code
    return grpc.StatusCode.UNKNOWN


def trailing_metadata(info: common_pb2.ErrorInfo) -> tuple[tuple[str, str | bytes], ...]:
    """Metadata that lets any gRPC client read the reason of a failed call: falrt's trailers
    and the standard `grpc-status-details-bin`. The call's status message must be
    `status_message(info)`, as stock decoders check that it matches the details."""
    return (
        (ERROR_TYPE_KEY, info.error_type),
        (ERROR_BIN_KEY, info.SerializeToString()),
        (STATUS_DETAILS_KEY, status_details(info)),
    )


def status_message(info: common_pb2.ErrorInfo) -> str:
    """The gRPC status message of a call failed with `info`."""
    return str(from_proto(info))


def status_details(info: common_pb2.ErrorInfo) -> bytes:
    """The serialized `google.rpc.Status` of a call failed with `info`: its code and message,
    an ErrorInfo (reason, domain, metadata `grpcCode`), and a BadRequest with the field errors
    (those that fit in FIELD_VIOLATIONS_BYTES; falrt-error-bin has every one)."""
    # Imported here, not at the top: runner images carry this module without
    # googleapis-common-protos, and runners never build a status.
    from google.protobuf import any_pb2
    from google.rpc import error_details_pb2, status_pb2

    reason = error_details_pb2.ErrorInfo(
        reason=info.error_type, domain=ERROR_DOMAIN,
        metadata={"grpcCode": status_code_of(info).name})
    details = [reason]
    violations = _field_violations(info)
    if violations:
        details.append(error_details_pb2.BadRequest(field_violations=violations))
    status = status_pb2.Status(code=info.grpc_code, message=status_message(info))
    for detail in details:
        packed = any_pb2.Any()
        packed.Pack(detail)
        status.details.append(packed)
    return bytes(status.SerializeToString())


def _field_violations(info: common_pb2.ErrorInfo) -> list[Any]:
    from google.rpc import error_details_pb2

    violations: list[Any] = []
    size = 0
    for field in info.field_errors:
        violation = error_details_pb2.BadRequest.FieldViolation(
            field=field.location, description=field.message)
        size += violation.ByteSize()
        if size > FIELD_VIOLATIONS_BYTES:
            break
        violations.append(violation)
    return violations


def from_rpc_error(error: grpc.RpcError) -> FalrtError:
    """The falrt exception behind a failed call (client side)."""
    metadata: dict[str, str | bytes] = dict(error.trailing_metadata() or ())  # type: ignore[arg-type, attr-defined, unused-ignore]
    raw = metadata.get(ERROR_BIN_KEY)
    if isinstance(raw, bytes):
        return from_proto(common_pb2.ErrorInfo.FromString(raw))
    code: grpc.StatusCode = error.code()  # type: ignore[attr-defined, unused-ignore]
    details: str = error.details() or code.name  # type: ignore[attr-defined, unused-ignore]
    for cls in _BY_TYPE.values():
        if cls.code is code and cls.error_type == metadata.get(ERROR_TYPE_KEY, cls.error_type):
            return cls(details)
    if code is grpc.StatusCode.UNAVAILABLE:
        return UnavailableError(details)
    return InternalError(f"{code.name}: {details}")
