"""What both of fal's APIs read the same way from a call of an app: the endpoint its URL
names, the caller's key checked against the app's auth mode, and the payload.

The payload is read as bytes, bounded by the payload limit (`falrt.limits`) while it
arrives, and passed on untouched (the scheduler checks JSON against the endpoint's schema;
the runner decodes and validates it).
"""

from __future__ import annotations

from starlette.requests import Request

from falrt import errors
from falrt.limits import check_payload
from falrt.server.http.gateway import Gateway
from falrt.server.queue.scheduler import Scheduler
from falrt.server.tracing import UNTRACED, Origin, http_origin

MSGPACK = "application/msgpack"
JSON = "application/json"
_MSGPACK_TYPES = frozenset({MSGPACK, "application/x-msgpack"})


def endpoint(request: Request) -> tuple[str, str, str]:
    """(endpoint id `owner/app`, app name, endpoint path) of a call's URL."""
    params = request.path_params
    owner, app = params["owner"], params["app"]
    return f"{owner}/{app}", app, "/" + params.get("path", "").strip("/")


async def authorize(gateway: Gateway, request: Request, app_name: str) -> None:
    """Checks the caller's key against the app's auth mode, as the gRPC edge does. Raises
    UnauthenticatedError or PermissionDeniedError (an unknown app passes: the scheduler
    answers NOT_FOUND)."""
    caller = await gateway.caller(request.headers)
    gateway.authenticator.check_app(caller, app_name)


def content_type(request: Request) -> str:
    """The payload's content type as falrt knows it: msgpack when the caller says so, else
    JSON (curl's `-d` says `application/x-www-form-urlencoded` for a JSON body)."""
    value = request.headers.get("content-type", "")
    media = value.partition(";")[0].strip().lower()
    return MSGPACK if media in _MSGPACK_TYPES else JSON


async def payload(gateway: Gateway, request: Request) -> bytes:
    """The call's body, refused with PayloadTooLargeError (413) as soon as it is over the
    payload limit: a declared Content-Length is checked before anything is read."""
    limit = gateway.payload_limit
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit():
        check_payload(int(declared), limit, "input")
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        check_payload(size, limit, "input")
        chunks.append(chunk)
    return chunks[0] if len(chunks) == 1 else b"".join(chunks)


def start_timeout(request: Request) -> float:
    """`X-Fal-Request-Timeout`: seconds the call may wait before it starts (0: no limit).
    Raises InvalidArgumentError for anything but a number > 0."""
    value = request.headers.get("x-fal-request-timeout")
    if value is None:
        return 0.0
    try:
        seconds = float(value)
    except ValueError:
        seconds = float("nan")
    if not seconds > 0:  # (NaN, a word, zero or less)
        raise errors.InvalidArgumentError(
            f"X-Fal-Request-Timeout must be a number of seconds > 0, not {errors.quote(value)}")
    return seconds


def not_found(request_id: str) -> errors.NotFoundError:
    return errors.NotFoundError(f"no request with id {errors.quote(request_id)}")


def origin(scheduler: Scheduler, request: Request, call: str) -> Origin:
    """Where a call came from, for its trace: its `traceparent` header (read only when
    tracing is on)."""
    return http_origin(request.headers, call) if scheduler.tracing.enabled else UNTRACED
