"""The dashboard's routes: a static page under `/ui` and its JSON API under `/ui/api`.

    GET /ui, /ui/                      the page (static: no data, no key)
    GET /ui/static/{app.js,style.css}  its script and style
    GET /ui/api/overview               apps, runners, the last hour's charts
    GET /ui/api/apps/{app}             an app: endpoints with schemas and forms, runners
    GET /ui/api/requests/{id}          a request: statuses, logs, attempts, result or error

The page holds no data: it asks for a key once, keeps it in the tab's `sessionStorage`
(gone when the tab closes; never a cookie, so no other site's page can make the browser
use it; never in a URL, so it is in no log or history) and sends it as
`Authorization: Key KEY_ID:SECRET` on every API call. The API needs an ADMIN key of the
server's owner, as the Control plane does: it shows every app, runner and request. The
page builds its DOM from the API's JSON with `textContent` and attributes (never HTML
text), and a Content-Security-Policy allows only its own script.
"""

from __future__ import annotations

import time
from importlib import resources

import msgspec
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response
from starlette.routing import BaseRoute, Mount, Route

from falrt import errors
from falrt.server.http.gateway import Gateway
from falrt.server.http.ui import views
from falrt.server.http.ui.dashboard import Dashboard
from falrt.server.http.ui.history import SAMPLE_INTERVAL_S

PREFIX = "/ui"
_STATIC = {"index.html": "text/html", "app.js": "text/javascript", "style.css": "text/css"}
_PAGE_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src * data: blob:; "
        "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-cache",
}
_API_HEADERS = {"Cache-Control": "no-store", "X-Content-Type-Options": "nosniff"}


def routes(gateway: Gateway, dashboard: Dashboard) -> list[BaseRoute]:
    """The dashboard's routes, to be placed before the direct API's catch-all routes."""
    api = DashboardApi(gateway, dashboard)
    files = {name: (resources.files(__package__) / "static" / name).read_bytes()
             for name in _STATIC}

    async def page(request: Request) -> Response:
        return Response(files["index.html"], media_type=_STATIC["index.html"],
                        headers=_PAGE_HEADERS)

    async def static(request: Request) -> Response:
        name = request.path_params["name"]
        if name not in files or name == "index.html":
            raise errors.NotFoundError(f"the dashboard has no file {errors.quote(name)}")
        return Response(files[name], media_type=_STATIC[name], headers=_PAGE_HEADERS)

    async def to_page(request: Request) -> Response:
        return RedirectResponse(PREFIX + "/", status_code=308)

    return [
        Route(PREFIX, to_page, methods=["GET"]),
        Mount(PREFIX, routes=[
            Route("/", page, methods=["GET"]),
            Route("/static/{name}", static, methods=["GET"]),
            Route("/api/overview", api.overview, methods=["GET"]),
            Route("/api/apps/{app}", api.app, methods=["GET"]),
            Route("/api/requests/{request_id}", api.request, methods=["GET"]),
        ]),
    ]


class DashboardApi:
    """The JSON handlers; each checks the caller's key first and raises FalrtError for
    the app's error handler to answer with fal's envelope."""

    def __init__(self, gateway: Gateway, dashboard: Dashboard) -> None:
        self._gateway = gateway
        self._dashboard = dashboard

    async def overview(self, request: Request) -> Response:
        await self._admin(request)
        now = time.time()
        runners = list(self._dashboard.runners())
        sampler = self._dashboard.sampler
        samples = [*sampler.history.samples(), sampler.current()]
        apps = [views.app_summary(app, [r for r in runners if r.app_name == app.name],
                                  self._gateway.scheduler.queue_size(app.name))
                for app in self._gateway.apps]
        return _json({
            "owner": self._gateway.settings.owner, "now": now, "apps": apps,
            "runners": [views.runner_view(r, now) for r in runners],
            "history": views.history_view(samples, SAMPLE_INTERVAL_S),
        })

    async def app(self, request: Request) -> Response:
        await self._admin(request)
        name = request.path_params["app"]
        app = self._gateway.apps.get(name)
        if app is None:
            raise errors.NotFoundError(f"no app named {errors.quote(name)}")
        runners = [r for r in self._dashboard.runners() if r.app_name == name]
        return _json(views.app_detail(app, self._gateway.settings.owner, runners,
                                      self._gateway.scheduler.queue_size(name), time.time()))

    async def request(self, request: Request) -> Response:
        await self._admin(request)
        request_id = request.path_params["request_id"]
        scheduler = self._gateway.scheduler
        item = await scheduler.lookup(request_id)
        if item is None:
            raise errors.NotFoundError(f"no request {errors.quote(request_id)}")
        record = await self._dashboard.request_record(request_id)
        doc = views.request_view(item, record, scheduler.position(item))
        doc["endpoint_id"] = f"{self._gateway.settings.owner}/{item.app_name}"
        return _json(doc)

    async def _admin(self, request: Request) -> None:
        """Raises UnauthenticatedError or PermissionDeniedError unless the caller's key is
        an ADMIN key of the server's owner."""
        caller = await self._gateway.caller(request.headers)
        self._gateway.authenticator.check_admin(caller)


def _json(doc: views.Doc) -> Response:
    return Response(msgspec.json.encode(doc), media_type="application/json",
                    headers=_API_HEADERS)
