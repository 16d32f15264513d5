"""fal's direct API (`fal.run`): `POST /{owner}/{app}[/{path}]` answered on the same
connection, by the scheduler's direct path (not stored, never retried).

A unary endpoint answers its output with the output's content type (within the caller's
`X-Fal-Request-Timeout`, if given, a runner must take it: else 504 `request_timeout` with
`X-Fal-Request-Timeout-Type: user`, as fal); a streaming endpoint
answers server-sent events, one `data:` event per partial output (what `fal_client.stream`
reads). A realtime endpoint is reached over a WebSocket instead (`realtime.py`). When the
caller goes away, the call is abandoned: dropped from the queue, or cancelled on its runner,
as on the gRPC edge.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route
from starlette.types import Receive

from falrt import errors
from falrt.sdk.endpoints import EndpointKind
from falrt.server.api import convert
from falrt.server.http import calls, payloads
from falrt.server.http.errors import REQUEST_ID_HEADER, error_response
from falrt.server.http.events import EventStream, disconnected, event
from falrt.server.http.gateway import Gateway
from falrt.server.queue.options import check_options
from falrt.server.state.work import DirectCall, any_done
from falrt.store.records import Outcome

CLIENT_CLOSED = 499  # nobody reads it: the caller went away
NOT_STARTED = Outcome()  # (a marker: the start deadline passed)
START_TIMEOUT = errors.RequestTimeoutError(
    "no runner took the call within its X-Fal-Request-Timeout; try again, or allow longer")


def routes(gateway: Gateway) -> list[BaseRoute]:
    """The catch-all direct routes: they go after every other route of the listener."""
    api = DirectApi(gateway)
    return [Route("/{owner}/{app}", api.run, methods=["POST"]),
            Route("/{owner}/{app}/{path:path}", api.run, methods=["POST"])]


class DirectApi:
    def __init__(self, gateway: Gateway) -> None:
        self._gateway = gateway
        self._scheduler = gateway.scheduler

    async def run(self, request: Request) -> Response | EventStream:
        endpoint_id, app, path = calls.endpoint(request)
        await calls.authorize(self._gateway, request, app)
        content_type = calls.content_type(request)
        data, by_ref = await payloads.input_of(self._gateway, request, content_type)
        kind = self._kind(endpoint_id, path)
        if kind is EndpointKind.REALTIME:
            raise errors.InvalidArgumentError(
                f"{path} of {app} is a realtime endpoint: open a WebSocket to "
                f"/{endpoint_id}/realtime (or /{endpoint_id}{path}) instead of a POST")
        if kind is EndpointKind.STREAM:
            if content_type != calls.JSON:
                raise errors.InvalidArgumentError(
                    f"{path} of {app} streams server-sent events, which carry JSON: send "
                    "the input as application/json")
            call = self._scheduler.call_direct(
                endpoint_id, path, data, content_type, stream=True,
                origin=calls.origin(self._scheduler, request, "stream"), by_ref=by_ref)
            return EventStream(self._outputs(call), {REQUEST_ID_HEADER: call.request_id},
                               on_gone=lambda: self._scheduler.abandon(call))
        deadline_s = check_options(start_timeout_s=calls.start_timeout(request)).start_timeout_s
        call = self._scheduler.call_direct(endpoint_id, path, data, content_type, stream=False,
                                           origin=calls.origin(self._scheduler, request, "run"),
                                           by_ref=by_ref)
        outcome = await self._outcome(call, request.receive, deadline_s)
        if outcome is None:
            return Response(status_code=CLIENT_CLOSED)
        if outcome is NOT_STARTED:
            return error_response(START_TIMEOUT, call.request_id, timeout_type="user")
        if outcome.error is not None:
            return error_response(errors.from_proto(convert.error_info(outcome.error)),
                                  call.request_id)
        return await payloads.output_response(
            self._gateway, outcome.output, outcome.content_type,
            {REQUEST_ID_HEADER: call.request_id})

    def _kind(self, endpoint_id: str, path: str) -> EndpointKind:
        """The endpoint's kind. Raises NotFoundError for an unknown app or path."""
        app = self._scheduler.resolve(endpoint_id, path)
        number = next(e.kind for e in app.revision.endpoints if e.path == path)
        return EndpointKind.from_number(number)

    async def _outcome(
        self, call: DirectCall, receive: Receive, start_timeout_s: float
    ) -> Outcome | None:
        """The call's outcome; None when the caller went away first, NOT_STARTED when no
        runner took it within `start_timeout_s` (0: no limit). The call is then abandoned,
        as it is when this wait is cancelled."""
        loop = asyncio.get_running_loop()
        gone = loop.create_task(disconnected(receive))
        late: asyncio.Future[None] = loop.create_future()
        timer = loop.call_later(start_timeout_s, _late, call, late) if start_timeout_s else None
        try:
            await any_done((call.done, gone, late))
        except asyncio.CancelledError:
            self._scheduler.abandon(call)
            raise
        finally:
            gone.cancel()
            if timer is not None:
                timer.cancel()
        if call.done.done():
            return call.done.result()
        self._scheduler.abandon(call)
        return NOT_STARTED if late.done() else None

    @staticmethod
    async def _outputs(call: DirectCall) -> AsyncIterator[bytes]:
        """Each partial output as an event; the call's error, if it ended with one."""
        assert call.partials is not None
        while (output := await call.partials.get()) is not None:
            yield event(output[0])
        outcome = call.done.result()
        if outcome.error is not None:
            raise errors.from_proto(convert.error_info(outcome.error))


def _late(call: DirectCall, late: asyncio.Future[None]) -> None:
    """The start deadline passed: the call is late unless a runner has it already."""
    if not call.runner_id and not late.done():
        late.set_result(None)
