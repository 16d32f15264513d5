"""The gRPC health service (grpc.health.v1): grpcio's servicer, complete.

`falrt/server/main.py` sets every service SERVING, or NOT_SERVING while the store cannot
write. grpcio-health-checking's asyncio servicer leaves `List` unimplemented (a call answers
UNIMPLEMENTED and logs a traceback); here it lists every service's status. A request that
does not parse (`rpc.Unparsable`) answers INVALID_ARGUMENT.
"""

from __future__ import annotations

from typing import Any

import grpc
from grpc import aio
from grpc_health.v1 import health, health_pb2

from falrt.server.api.rpc import Unparsable

Context = aio.ServicerContext[Any, Any]


class HealthService(health.aio.HealthServicer):  # type: ignore[misc]
    async def Check(self, request: Any, context: Context) -> health_pb2.HealthCheckResponse:
        await _parsed(request, context)
        return await super().Check(request, context)

    async def Watch(self, request: Any, context: Context) -> None:
        await _parsed(request, context)
        await super().Watch(request, context)

    async def List(self, request: Any, context: Context) -> health_pb2.HealthListResponse:
        await _parsed(request, context)
        return health_pb2.HealthListResponse(statuses={
            service: health_pb2.HealthCheckResponse(status=status)
            for service, status in self._server_status.items()})


async def _parsed(request: Any, context: Context) -> None:
    if isinstance(request, Unparsable):
        await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(request.invalid()))
