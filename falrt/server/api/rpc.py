"""The one place where falrt errors become gRPC statuses on the server side.

`unary` and `server_stream` wrap servicer methods: a FalrtError raised inside becomes a
gRPC status with its code, its message, and trailing metadata `falrt-error-type` and
`falrt-error-bin` (the ErrorInfo). Any other exception is logged and becomes INTERNAL.
When the servicer has a `guard` (see falrt/server/auth.py), it runs first, with the
method's name, the request (the request iterator for client streams) and the context.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, TypeVar

import grpc
from grpc import aio

from falrt import errors
from falrt.v1 import common_pb2

log = logging.getLogger(__name__)
Req = TypeVar("Req")
Resp = TypeVar("Resp")
# Checks a call before its servicer method runs; raises a FalrtError to refuse it.
Guard = Callable[[str, Any, aio.ServicerContext[Any, Any]], Awaitable[None]]


async def abort(context: aio.ServicerContext[Any, Any], info: common_pb2.ErrorInfo) -> None:
    """Ends the call with the status an ErrorInfo describes. Always raises."""
    await context.abort(
        errors.status_code_of(info), str(errors.from_proto(info)),
        trailing_metadata=errors.trailing_metadata(info),
    )


async def _fail(context: aio.ServicerContext[Any, Any], exc: Exception) -> None:
    if isinstance(exc, errors.FalrtError):
        await abort(context, errors.to_proto(exc))
    log.exception("unexpected error in %s", type(exc).__name__)
    await abort(context, errors.to_proto(errors.InternalError("internal error; see server log")))


def unary(
    fn: Callable[[Any, Req, aio.ServicerContext[Req, Resp]], Awaitable[Resp]],
) -> Callable[[Any, Req, aio.ServicerContext[Req, Resp]], Awaitable[Resp]]:
    name = fn.__name__

    @functools.wraps(fn)
    async def wrapper(self: Any, request: Req, context: aio.ServicerContext[Req, Resp]) -> Resp:
        try:
            guard: Guard | None = getattr(self, "guard", None)
            if guard is not None:
                await guard(name, request, context)
            return await fn(self, request, context)
        except aio.AbortError:
            raise
        except Exception as exc:
            await _fail(context, exc)
            raise AssertionError("unreachable") from exc

    return wrapper


def server_stream(
    fn: Callable[[Any, Req, aio.ServicerContext[Req, Resp]], AsyncIterator[Resp]],
) -> Callable[[Any, Req, aio.ServicerContext[Req, Resp]], AsyncIterator[Resp]]:
    name = fn.__name__

    @functools.wraps(fn)
    async def wrapper(
        self: Any, request: Req, context: aio.ServicerContext[Req, Resp]
    ) -> AsyncIterator[Resp]:
        try:
            guard: Guard | None = getattr(self, "guard", None)
            if guard is not None:
                await guard(name, request, context)
            async for item in fn(self, request, context):
                yield item
        except aio.AbortError:
            raise
        except Exception as exc:
            await _fail(context, exc)

    return wrapper


__all__ = ["abort", "grpc", "server_stream", "unary"]
