"""`GET /{owner}/{app}/openapi.json`: the OpenAPI document of an app's live revision.

Readable by whoever may call the app (its auth mode, as `Authenticator.check_app` rules:
public apps without a key), unlike the endpoint schemas of Control.GetApp, which need an
ADMIN key. The document is `falrt.openapi.build`'s, the one `falrt apps openapi` prints,
with this gateway as its server. Errors answer with fal's envelope (`errors.py`).
"""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route

from falrt import errors, openapi
from falrt.server.http.errors import error_response
from falrt.server.http.gateway import Gateway


def routes(gateway: Gateway) -> list[BaseRoute]:
    """The OpenAPI route (GET only: it shares no method with the direct POST route)."""

    async def document(request: Request) -> Response:
        try:
            return JSONResponse(await _document(gateway, request))
        except errors.FalrtError as exc:
            return error_response(exc)

    return [Route("/{owner}/{app}/openapi.json", document, methods=["GET"])]


async def _document(gateway: Gateway, request: Request) -> dict[str, object]:
    """The app's document. Raises UnauthenticatedError, PermissionDeniedError (the app's
    auth mode) or NotFoundError (no such app; checked after the key, as on gRPC)."""
    owner, name = request.path_params["owner"], request.path_params["app"]
    caller = await gateway.caller(request.headers)
    gateway.authenticator.check_app(caller, name)
    app = gateway.apps.get(name) if owner == gateway.settings.owner else None
    if app is None:
        raise errors.NotFoundError(
            f"no app with endpoint id {errors.quote(f'{owner}/{name}')} (ids look like "
            f"'{gateway.settings.owner}/APP')")
    return openapi.build(
        f"{owner}/{name}", app.revision.endpoints, auth=app.record.auth,
        version=app.revision.revision_id, server_url=_base_url(gateway, request))


def _base_url(gateway: Gateway, request: Request) -> str:
    """Where callers reach this gateway: `--public-url`, else the request's own origin."""
    return gateway.public_url or f"{request.url.scheme}://{request.url.netloc}"
