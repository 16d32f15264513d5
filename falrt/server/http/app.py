"""The ASGI apps of the HTTP edge: which routes each listener serves, in which order.

`--http-listen` serves fal's two hosts on one listener: the queue API under `/queue` and the
direct API at the root, so `FAL_RUN_HOST=HOST:PORT` and `FAL_QUEUE_RUN_HOST=HOST:PORT/queue`
point fal's clients at falrt. `--http-queue-listen` serves the queue API at its root, for
operators who give fal's two host names two listeners. One middleware besides Starlette's
error handling: CORS for any origin (as fal's apps answer), so a web page can call with
its key; keys travel in a header, never in cookies, so a page only acts with a key it was
given. Every route module answers errors through `falrt.server.http.errors`.
"""

from __future__ import annotations

from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.middleware.cors import CORSMiddleware
from starlette.routing import BaseRoute, Mount

from falrt.server.http import direct_api, openapi, queue_api, realtime
from falrt.server.http.errors import ERROR_TYPE_HEADER, EXCEPTION_HANDLERS, REQUEST_ID_HEADER
from falrt.server.http.gateway import Gateway
from falrt.server.http.queue_api import QUEUE_PREFIX

CORS = [Middleware(
    CORSMiddleware, allow_origins=["*"], allow_methods=["GET", "POST", "PUT"],
    allow_headers=["*"], expose_headers=[REQUEST_ID_HEADER, ERROR_TYPE_HEADER], max_age=600,
)]


def build_app(gateway: Gateway) -> Starlette:
    """The app of `--http-listen`. The direct API's POST routes catch every path, so they
    come last; WebSocket routes never match an HTTP call, nor the other way round."""
    routes: list[BaseRoute] = [
        Mount(QUEUE_PREFIX, routes=queue_api.routes(gateway)),
        *realtime.routes(gateway),
        *openapi.routes(gateway),
        *direct_api.routes(gateway),
    ]
    return Starlette(routes=routes, exception_handlers=EXCEPTION_HANDLERS, middleware=CORS)


def build_queue_app(gateway: Gateway) -> Starlette:
    """The app of `--http-queue-listen`: the queue API at the root."""
    return Starlette(routes=queue_api.routes(gateway), exception_handlers=EXCEPTION_HANDLERS,
                     middleware=CORS)
