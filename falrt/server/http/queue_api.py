"""fal's queue API (`queue.fal.run`): submit, status, status stream, result, cancel.

Routes (docs/http.md), relative to where the API is served (`/queue` on `--http-listen`,
the root of `--http-queue-listen`):

    POST /{owner}/{app}[/{path}]                       submit
    GET  /{owner}/{app}/requests/{id}/status           202 waiting, 200 completed
    GET  /{owner}/{app}/requests/{id}/status/stream    text/event-stream until COMPLETED
    GET  /{owner}/{app}/requests/{id}                  the result, replayed with its status
    PUT  /{owner}/{app}/requests/{id}/cancel           202 / 400 / 404, fal's bodies

Submit reads fal's headers and query parameters into the options `check_options` checks for
both edges; every route checks the caller as `Authenticator` does for gRPC.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import AsyncIterator
from typing import Any

import msgspec
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route
from starlette.types import Scope

from falrt import errors
from falrt.server.api import convert
from falrt.server.http import calls, payloads
from falrt.server.http.errors import REQUEST_ID_HEADER, error_response
from falrt.server.http.events import EventStream, event
from falrt.server.http.gateway import Gateway
from falrt.server.http.statuses import status_document
from falrt.server.queue.options import check_options
from falrt.server.queue.outcomes import SubmitOptions
from falrt.server.state.work import QueuedRequest, any_done
from falrt.store.records import Priority, Status
from falrt.vocabulary import CancelOutcome

JSON = "application/json"
# Where the queue API is served on `--http-listen` (at the root of `--http-queue-listen`).
QUEUE_PREFIX = "/queue"
IDEMPOTENCY_HEADER = "x-fal-idempotency-key"
_TRUE = frozenset({"1", "true", "yes"})
_FALSE = frozenset({"0", "false", "no", ""})
_PRIORITIES = {"normal": Priority.NORMAL, "low": Priority.LOW}
_CANCEL_STATUS = {
    CancelOutcome.CANCELLATION_REQUESTED: 202,
    CancelOutcome.ALREADY_COMPLETED: 400,
    CancelOutcome.NOT_FOUND: 404,
}


def routes(gateway: Gateway) -> list[BaseRoute]:
    """The queue API's routes (request routes first: a POST to `…/requests/…` is a submit)."""
    api = QueueApi(gateway)
    requests = "/{owner}/{app}/requests/{request_id}"
    return [
        Route(requests + "/status", api.status, methods=["GET"]),
        Route(requests + "/status/stream", api.status_stream, methods=["GET"]),
        Route(requests + "/cancel", api.cancel, methods=["PUT"]),
        Route(requests, api.result, methods=["GET"]),
        Route("/{owner}/{app}", api.submit, methods=["POST"]),
        Route("/{owner}/{app}/{path:path}", api.submit, methods=["POST"]),
    ]


class QueueApi:
    """The handlers; each raises FalrtError for the app's error handler to answer."""

    def __init__(self, gateway: Gateway) -> None:
        self._gateway = gateway
        self._scheduler = gateway.scheduler

    async def submit(self, request: Request) -> Response:
        endpoint_id, app, path = calls.endpoint(request)
        await calls.authorize(self._gateway, request, app)
        options = submit_options(request)
        content_type = calls.content_type(request)
        data, by_ref = await payloads.input_of(self._gateway, request, content_type)
        if by_ref:
            options = dataclasses.replace(options, input_by_ref=True)
        request_id, position, deduplicated = await self._scheduler.submit(
            endpoint_id, path, data, content_type, options,
            calls.origin(self._scheduler, request, "submit"))
        base = self._requests_url(request) + "/" + request_id
        doc: dict[str, Any] = {
            "request_id": request_id, "response_url": base, "status_url": base + "/status",
            "cancel_url": base + "/cancel", "queue_position": position,
        }
        if options.webhook_url:
            doc["gateway_request_id"] = request_id
        if deduplicated:
            doc["deduplicated"] = True
        return Response(msgspec.json.encode(doc), media_type=JSON,
                        headers={REQUEST_ID_HEADER: request_id})

    async def status(self, request: Request) -> Response:
        item = await self._find(request)
        logs = item.logs if await self._with_logs(request, item) else None
        body = status_document(item, position=self._scheduler.position(item),
                               response_url=self._response_url(request, item), logs=logs)
        code = 200 if item.status is Status.COMPLETED else 202
        return Response(body, code, media_type=JSON,
                        headers={REQUEST_ID_HEADER: item.request_id})

    async def status_stream(self, request: Request) -> EventStream:
        item = await self._find(request)
        events = self._follow(item, self._response_url(request, item),
                              await self._with_logs(request, item))
        return EventStream(events, {REQUEST_ID_HEADER: item.request_id})

    async def _follow(
        self, item: QueuedRequest, response_url: str, with_logs: bool
    ) -> AsyncIterator[bytes]:
        """The request's status each time it changes, until COMPLETED; with logs, each
        event carries the lines since the previous one (as the gRPC Watch does)."""
        sent_logs = 0
        last: tuple[object, ...] = ()
        while True:
            position = self._scheduler.position(item)
            key = (item.status, position, item.waiting_reason,
                   len(item.logs) if with_logs else 0)
            if key != last:
                last = key
                logs = item.logs[sent_logs:] if with_logs else None
                sent_logs = len(item.logs)
                yield event(status_document(item, position=position,
                                            response_url=response_url, logs=logs))
                continue  # the request may have moved on while the event was sent
            if item.status is Status.COMPLETED:
                return
            await any_done(self._scheduler.changes(item))

    async def result(self, request: Request) -> Response:
        item = await self._find(request)
        outcome = item.outcome
        if item.status is not Status.COMPLETED or outcome is None:
            raise errors.NotCompletedError(
                f"request {item.request_id} is still {item.status.name}; follow its "
                "status_url (or status/stream) until COMPLETED, then ask again")
        headers = {REQUEST_ID_HEADER: item.request_id}
        if outcome.error is not None:
            error = errors.from_proto(convert.error_info(outcome.error))
            return error_response(error, item.request_id)
        return await payloads.output_response(
            self._gateway, outcome.output, outcome.content_type, headers)

    async def cancel(self, request: Request) -> Response:
        request_id = request.path_params["request_id"]
        try:
            await self._find(request)
            outcome = await self._scheduler.cancel(request_id)
        except errors.NotFoundError:
            outcome = CancelOutcome.NOT_FOUND
        return Response(msgspec.json.encode({"status": outcome.value}),
                        _CANCEL_STATUS[outcome], media_type=JSON,
                        headers={REQUEST_ID_HEADER: request_id})

    async def _find(self, request: Request) -> QueuedRequest:
        """The request the URL names, if the caller may see it. Raises NotFoundError (also
        for an id of another app than the URL's), or the auth errors."""
        params = request.path_params
        request_id = params["request_id"]
        item = await self._scheduler.lookup(request_id)
        if (item is None or item.app_name != params["app"]
                or params["owner"] != self._gateway.settings.owner):
            raise calls.not_found(request_id)
        caller = await self._gateway.caller(request.headers)
        self._gateway.authenticator.check_request(caller, item)
        return item

    async def _with_logs(self, request: Request, item: QueuedRequest) -> bool:
        """`?logs=1`, and the caller may see the request's logs (an app's private_logs)."""
        if not _flag(request, "logs"):
            return False
        caller = await self._gateway.caller(request.headers)
        return self._gateway.authenticator.sees_logs(caller, item)

    def _requests_url(self, request: Request) -> str:
        """`…/{owner}/{app}/requests`, absolute: under `--public-url` when it is set, else
        the scheme and Host this call came with."""
        params = request.path_params
        tail = f"/{params['owner']}/{params['app']}/requests"
        if self._gateway.public_url:
            return self._gateway.public_url + QUEUE_PREFIX + tail
        scope = request.scope
        host = request.headers.get("host") or _server_host(scope)
        return f"{scope['scheme']}://{host}{scope.get('root_path', '')}{tail}"

    def _response_url(self, request: Request, item: QueuedRequest) -> str:
        return self._requests_url(request) + "/" + item.request_id


def submit_options(request: Request) -> SubmitOptions:
    """fal's submit headers and query parameters as checked SubmitOptions (the gRPC edge's
    rules: `check_options`). Raises InvalidArgumentError (400) naming the bad value."""
    headers, query = request.headers, request.query_params
    return check_options(
        priority=_priority(headers.get("x-fal-queue-priority")),
        no_retry=_boolean(headers.get("x-fal-no-retry"), "X-Fal-No-Retry"),
        retry_config=_retry_config(headers.get("x-fal-retry-config")),
        start_timeout_s=calls.start_timeout(request),
        webhook_url=query.get("fal_webhook", ""),
        max_queue_length=_count(query.get("fal_max_queue_length")),
        idempotency_key=headers.get(IDEMPOTENCY_HEADER, ""),
    )


def _priority(value: str | None) -> Priority:
    if value is None:
        return Priority.NORMAL
    priority = _PRIORITIES.get(value.strip().lower())
    if priority is None:
        raise errors.InvalidArgumentError(
            f"X-Fal-Queue-Priority must be normal or low, not {errors.quote(value)}")
    return priority


def _boolean(value: str | None, name: str) -> bool:
    if value is None:
        return False
    text = value.strip().lower()
    if text in _TRUE or text in _FALSE:
        return text in _TRUE
    raise errors.InvalidArgumentError(
        f"{name} must be 1, true or yes (or 0, false, no), not {errors.quote(value)}")


def _count(value: str | None) -> int:
    if value is None or value == "":
        return 0
    if not value.isdigit():
        raise errors.InvalidArgumentError(
            f"fal_max_queue_length must be a whole number >= 0, not {errors.quote(value)}")
    return int(value)


def _retry_config(value: str | None) -> dict[str, int]:
    """fal's `{"timeout": {"retries": 0}, "server_error": {"retries": 3}}` as budgets."""
    if not value:
        return {}
    shape = ('X-Fal-Retry-Config must be a JSON object such as '
             '{"server_error": {"retries": 3}}')
    try:
        parsed = json.loads(value)
    except ValueError:
        raise errors.InvalidArgumentError(f"{shape}; it is not JSON") from None
    if not isinstance(parsed, dict):
        raise errors.InvalidArgumentError(shape)
    budgets = {}
    for condition, budget in parsed.items():
        retries = budget.get("retries") if isinstance(budget, dict) else None
        if not isinstance(retries, int) or isinstance(retries, bool):
            raise errors.InvalidArgumentError(
                f"{shape}; {errors.quote(condition)} has no whole number of retries")
        budgets[condition] = retries
    return budgets


def _flag(request: Request, name: str) -> bool:
    """A query flag such as `?logs=1` (fal_client sends `true`/`false`)."""
    return request.query_params.get(name, "").strip().lower() in _TRUE


def _server_host(scope: Scope) -> str:
    host, port = scope.get("server") or ("localhost", 80)
    return f"{host}:{port}"
