"""`GET /metrics` (Prometheus' text format) and `GET /healthz`, on `--http-listen` and on
`--metrics-listen` (docs/observability.md).

Neither needs a key, as most exporters and load balancers' health checks expect: both say
only how the server is doing (app names and counts, never payloads, keys or error text).
An operator who does not want them reachable with the APIs serves them on a port of their
own (`--metrics-listen`) and keeps `--http-listen` off the scrapers' network.

`/healthz` answers 200 with `{"status": "SERVING"}`, or 503 with `{"status": "NOT_SERVING",
"problems": [...]}` saying why (falrt/server/control/health.py has the rules).
`/healthz?app=NAME` answers for one app: 200 SERVING, 503 NOT_SERVING, 404 for an app
that does not exist.

Each scrape runs the state collectors on the event loop, which owns what they read.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route

from falrt.server.control.health import Verdict


@dataclass(frozen=True)
class Observed:
    """What the two routes read: the server's metrics (None: `--no-metrics`, and /metrics
    answers 404) and its health rules."""

    registry: CollectorRegistry | None
    check: Callable[[], Verdict]


def routes(observed: Observed) -> list[BaseRoute]:
    async def metrics(request: Request) -> Response:
        if observed.registry is None:
            return JSONResponse({"detail": "metrics are off (--no-metrics)"}, status_code=404)
        return Response(generate_latest(observed.registry), media_type=CONTENT_TYPE_LATEST)

    async def healthz(request: Request) -> Response:
        verdict = observed.check()
        app = request.query_params.get("app")
        if app is None:
            if verdict.serving:
                return JSONResponse({"status": "SERVING"})
            return JSONResponse({"status": "NOT_SERVING", "problems": list(verdict.problems)},
                                status_code=503)
        serving = verdict.app_serving(app)
        if serving is None:
            return JSONResponse({"status": "NOT_FOUND", "app": app}, status_code=404)
        if serving:
            return JSONResponse({"status": "SERVING", "app": app})
        problems = list(verdict.problems) or [
            "its runners fail to start (crash backoff, or no capacity)"]
        return JSONResponse({"status": "NOT_SERVING", "app": app, "problems": problems},
                            status_code=503)

    return [Route("/metrics", metrics, methods=["GET"]),
            Route("/healthz", healthz, methods=["GET"])]
