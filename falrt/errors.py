"""The one error tree of falrt.

Every exception carries its gRPC status code and a stable, machine-readable reason
(`error_type`, fal's names where fal has one). This module is also the one place that maps
errors to the wire and back: `to_proto`/`from_proto` for the ErrorInfo message that
travels inside results, `trailing_metadata`/`from_rpc_error` for gRPC statuses.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import ClassVar

import grpc

from falrt.v1 import common_pb2

ERROR_TYPE_KEY = "falrt-error-type"
# At most this many characters of what a caller sent are repeated in an error message.
QUOTE_CHARS = 80
ERROR_BIN_KEY = "falrt-error-bin"


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


class AlreadyExistsError(FalrtError):
    code = grpc.StatusCode.ALREADY_EXISTS
    error_type = "already_exists"


class FailedPreconditionError(FalrtError):
    """The system is not in a state where the operation can run (say why and what to do)."""

    code = grpc.StatusCode.FAILED_PRECONDITION
    error_type = "failed_precondition"


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
        NotFoundError,
        NotCompletedError,
        FailedPreconditionError,
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
    """Metadata that lets any gRPC client read the reason of a failed call."""
    return ((ERROR_TYPE_KEY, info.error_type), (ERROR_BIN_KEY, info.SerializeToString()))


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
