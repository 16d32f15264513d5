"""The gRPC health service (grpc.health.v1): grpcio's servicer, complete, fed by the rules of
`falrt/server/control/health.py`.

Services: "" (the server), each of falrt's public services (as the server), and one per
app, `falrt.app/<app name>` (NOT_FOUND once the app is deleted). Every answer of `Check`
and `List` evaluates the rules first; `Watch` streams changes, which `refresh` pushes (the
server calls it when the store's health changes and once a second). After
`enter_graceful_shutdown` every service stays NOT_SERVING.

grpcio-health-checking's asyncio servicer leaves `List` unimplemented (a call answers
UNIMPLEMENTED and logs a traceback); here it lists every service's status. A request that
does not parse (`rpc.Unparsable`) answers INVALID_ARGUMENT.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import grpc
from grpc import aio
from grpc_health.v1 import health, health_pb2

from falrt.server.api.rpc import Unparsable
from falrt.server.control.health import APP_SERVICE_PREFIX, Verdict

Context = aio.ServicerContext[Any, Any]
SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


class HealthService(health.aio.HealthServicer):  # type: ignore[misc]
    def __init__(self, check: Callable[[], Verdict] | None = None,
                 services: Sequence[str] = ()) -> None:
        """`check` evaluates the health rules (None: always SERVING); `services` are the
        names that share the server's status (besides "")."""
        super().__init__()
        self._check = check
        self._services = ("", *services)

    async def refresh(self) -> None:
        """Sets every service's status from the rules (a no-op after graceful shutdown)."""
        if self._check is None or self._gracefully_shutting_down:
            return
        verdict = self._check()
        server = SERVING if verdict.serving else NOT_SERVING
        wanted = {name: server for name in self._services}
        for app_name in verdict.apps:
            wanted[APP_SERVICE_PREFIX + app_name] = (
                SERVING if verdict.app_serving(app_name) else NOT_SERVING)
        for name in [n for n in self._server_status if n.startswith(APP_SERVICE_PREFIX)
                     and n not in wanted]:
            del self._server_status[name]  # the app is gone: NOT_FOUND from now on
        for name, status in wanted.items():
            if self._server_status.get(name) != status:
                await self.set(name, status)

    async def Check(self, request: Any, context: Context) -> health_pb2.HealthCheckResponse:
        await _parsed(request, context)
        await self.refresh()
        return await super().Check(request, context)

    async def Watch(self, request: Any, context: Context) -> None:
        await _parsed(request, context)
        await self.refresh()
        await super().Watch(request, context)

    async def List(self, request: Any, context: Context) -> health_pb2.HealthListResponse:
        await _parsed(request, context)
        await self.refresh()
        return health_pb2.HealthListResponse(statuses={
            service: health_pb2.HealthCheckResponse(status=status)
            for service, status in self._server_status.items()})


async def _parsed(request: Any, context: Context) -> None:
    if isinstance(request, Unparsable):
        await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(request.invalid()))
