"""The ASGI apps of the HTTP edge: which routes each listener serves, in which order.

`--http-listen` serves fal's two hosts on one listener: the queue API under `/queue` and the
direct API at the root, so `FAL_RUN_HOST=HOST:PORT` and `FAL_QUEUE_RUN_HOST=HOST:PORT/queue`
point fal's clients at falrt. `--http-queue-listen` serves the queue API at its root, for
operators who give fal's two host names two listeners. `/metrics` and `/healthz` are on
`--http-listen` and on `--metrics-listen` (`observe`, no key). One middleware besides Starlette's
error handling: CORS for any origin (as fal's apps answer), so a web page can call with
its key; keys travel in a header, never in cookies, so a page only acts with a key it was
given. Every route module answers errors through `falrt.server.http.errors`.
"""

from __future__ import annotations

from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.middleware.cors import CORSMiddleware
from starlette.routing import BaseRoute, Mount

from falrt.server.http import direct_api, files_api, observe, openapi, queue_api, realtime
from falrt.server.http.errors import ERROR_TYPE_HEADER, EXCEPTION_HANDLERS, REQUEST_ID_HEADER
from falrt.server.http.gateway import Gateway
from falrt.server.http.observe import Observed
from falrt.server.http.queue_api import QUEUE_PREFIX
from falrt.server.http.ui import routes as ui

CORS = [Middleware(
    CORSMiddleware, allow_origins=["*"], allow_methods=["GET", "HEAD", "POST", "PUT"],
    allow_headers=["*"], expose_headers=[REQUEST_ID_HEADER, ERROR_TYPE_HEADER], max_age=600,
)]


def build_app(gateway: Gateway) -> Starlette:
    """The app of `--http-listen`. The direct API's POST routes catch every path, so they
    come after every route with a POST; WebSocket routes never match an HTTP call, nor the
    other way round."""
    routes: list[BaseRoute] = [
        Mount(QUEUE_PREFIX, routes=queue_api.routes(gateway)),
        *(files_api.routes(gateway, gateway.files) if gateway.files else []),
        *realtime.routes(gateway),
        *openapi.routes(gateway),
        *(observe.routes(gateway.observed) if gateway.observed else []),
        *direct_api.routes(gateway),
        # GET only, after the POST catch-all: an owner named "ui" keeps its direct API.
        *(ui.routes(gateway, gateway.dashboard) if gateway.dashboard else []),
    ]
    return Starlette(routes=routes, exception_handlers=EXCEPTION_HANDLERS, middleware=CORS)


def build_metrics_app(observed: Observed) -> Starlette:
    """The app of `--metrics-listen`: `/metrics` and `/healthz` only, no CORS (a scraper
    is no web page)."""
    return Starlette(routes=observe.routes(observed), exception_handlers=EXCEPTION_HANDLERS)


def build_queue_app(gateway: Gateway) -> Starlette:
    """The app of `--http-queue-listen`: the queue API at the root."""
    return Starlette(routes=queue_api.routes(gateway), exception_handlers=EXCEPTION_HANDLERS,
                     middleware=CORS)
