"""The one map from falrt's error tree to HTTP: status code, envelope, `X-Fal-Error-Type`.

Every HTTP route module answers a `FalrtError` through `error_response` (or, for a body that
is sent inside a stream, `error_body`), so a reason has one status on every route. The
statuses are fal's (fal-semantics 2.7); the envelope is fal's infrastructure envelope
`{"detail": "...", "error_type": "..."}`, except for a validation failure, which answers 422
with FastAPI's field list `{"detail": [{"loc", "msg", "type"}], "error_type": ...}`.
"""

from __future__ import annotations

import json
import re
from typing import Any

from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import ExceptionHandler

from falrt import errors

ERROR_TYPE_HEADER = "x-fal-error-type"
REQUEST_ID_HEADER = "x-fal-request-id"
# fal marks a start deadline that passed (X-Fal-Request-Timeout) as the caller's own.
TIMEOUT_TYPE_HEADER = "x-fal-request-timeout-type"

# error_type -> HTTP status; a type not listed (an error type a newer runner reports) is 500.
STATUS_BY_TYPE: dict[str, int] = {
    errors.InternalError.error_type: 500,
    errors.InvalidArgumentError.error_type: 400,
    errors.OutOfRangeError.error_type: 416,  # (a Range past a file's end)
    errors.NotFoundError.error_type: 404,
    # fal answers 400 "Request is still in progress" for a result asked too early.
    errors.NotCompletedError.error_type: 400,
    errors.FailedPreconditionError.error_type: 400,
    errors.InsecureConnectionError.error_type: 400,
    errors.AlreadyExistsError.error_type: 409,
    errors.UnauthenticatedError.error_type: 401,
    errors.PermissionDeniedError.error_type: 403,
    # fal answers 429 for a full queue (fal_max_queue_length) and for concurrency limits.
    errors.ResourceExhaustedError.error_type: 429,
    errors.PayloadTooLargeError.error_type: 413,
    # The store cannot write now; it will once the operator frees space: try again later.
    errors.StoreFullError.error_type: 503,
    errors.UnavailableError.error_type: 503,
    errors.RequestCancelledError.error_type: 499,
    errors.RequestTimeoutError.error_type: 504,
    errors.StartupTimeoutError.error_type: 504,
    errors.RunnerDisconnectedError.error_type: 503,
    errors.RunnerRefusedError.error_type: 503,
    # The app's runners fail to start: it cannot serve until its code or setup is fixed.
    errors.StartupFailedError.error_type: 503,
    errors.RunnerServerError.error_type: 500,
}

VALIDATION_STATUS = 422
_PATH_PART = re.compile(r"\.([^.\[]+)|\[(\d+)\]")


def status_of(error: errors.FalrtError) -> int:
    """The HTTP status that answers `error`."""
    if isinstance(error, errors.ValidationFailedError) or (
        error.field_errors and isinstance(error, errors.InvalidArgumentError)
    ):
        return VALIDATION_STATUS
    return STATUS_BY_TYPE.get(error.error_type, 500)


def field_location(location: str) -> list[str | int]:
    """A field error's JSON path as FastAPI's `loc`: "$.items[2].size" -> ["body", "items",
    2, "size"]; "$" alone (the whole body) -> ["body"]; another form is kept as one part."""
    if location in ("", "$"):
        return ["body"]
    if not location.startswith("$"):
        return ["body", location]
    parts: list[str | int] = ["body"]
    for name, index in _PATH_PART.findall(location[1:]):
        parts.append(int(index) if index else name)
    return parts


def envelope(error: errors.FalrtError) -> dict[str, object]:
    """The JSON envelope of `error` (fal's shape; a field list for validation failures)."""
    if status_of(error) == VALIDATION_STATUS:
        detail: object = [
            {"loc": field_location(loc), "msg": msg, "type": "value_error"}
            for loc, msg in error.field_errors
        ] or [{"loc": ["body"], "msg": error.message, "type": "value_error"}]
    else:
        detail = error.message
    return {"detail": detail, "error_type": error.error_type}


def error_body(error: errors.FalrtError) -> bytes:
    """`envelope(error)` as JSON bytes."""
    return json.dumps(envelope(error), separators=(",", ":")).encode()


def error_headers(
    error: errors.FalrtError, request_id: str = "", timeout_type: str = ""
) -> dict[str, str]:
    """The response headers that go with `error`: its type; the request id when known; and
    fal's `X-Fal-Request-Timeout-Type: user` for a start deadline the caller set (fal's
    clients do not retry those)."""
    headers = {ERROR_TYPE_HEADER: error.error_type}
    if request_id:
        headers[REQUEST_ID_HEADER] = request_id
    if timeout_type:
        headers[TIMEOUT_TYPE_HEADER] = timeout_type
    return headers


def error_response(
    error: errors.FalrtError, request_id: str = "", timeout_type: str = ""
) -> Response:
    """The whole HTTP answer to `error`: status, envelope and headers."""
    return Response(
        error_body(error),
        status_code=status_of(error),
        headers=error_headers(error, request_id, timeout_type),
        media_type="application/json",
    )


async def _falrt_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, errors.FalrtError)
    return error_response(exc)


async def _http_exception(request: Request, exc: Exception) -> Response:
    """Starlette's own refusals (no such route, wrong method) in the same envelope."""
    assert isinstance(exc, HTTPException)
    if exc.status_code == 404:
        detail = (f"no route {request.method} {request.url.path}; docs/http.md lists the "
                  "routes (apps: POST /OWNER/APP, queue: POST /queue/OWNER/APP)")
        error_type = errors.NotFoundError.error_type
    else:
        detail, error_type = exc.detail, _STARLETTE_TYPES.get(exc.status_code, "bad_request")
    return Response(json.dumps({"detail": detail, "error_type": error_type}).encode(),
                    exc.status_code, headers={**(exc.headers or {}), ERROR_TYPE_HEADER: error_type},
                    media_type="application/json")


async def _unexpected(request: Request, exc: Exception) -> Response:
    """A fault of falrt (Starlette logs it with its traceback after this answer)."""
    return error_response(errors.InternalError(
        "internal error of the falrt server (its log has the details)"))


_STARLETTE_TYPES = {405: "method_not_allowed"}
# The exception handlers of every HTTP app (falrt/server/http/app.py).
EXCEPTION_HANDLERS: dict[Any, ExceptionHandler] = {
    errors.FalrtError: _falrt_error,
    HTTPException: _http_exception,
    Exception: _unexpected,
}
