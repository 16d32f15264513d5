"""The one place where falrt errors become gRPC statuses on the server side.

`unary` and `server_stream` wrap servicer methods: a FalrtError raised inside becomes a
gRPC status with its code, its message, and trailing metadata `falrt-error-type` and
`falrt-error-bin` (the ErrorInfo); so does a DecodeError (a message of a request stream
that does not parse, met while the method reads the stream), as INVALID_ARGUMENT, and a
unary request that does not parse (an `Unparsable`, which `tolerant` handlers hand over
instead of letting gRPC answer UNKNOWN). Any other exception is logged and becomes INTERNAL.
When the servicer has a `guard` (see falrt/server/auth.py), it runs first, with the
method's name, the request (the request iterator for client streams) and the context.
"""

from __future__ import annotations

import functools
import inspect
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, TypeVar

import grpc
from google.protobuf.message import DecodeError
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
        errors.status_code_of(info), errors.status_message(info),
        trailing_metadata=errors.trailing_metadata(info),
    )


async def _fail(context: aio.ServicerContext[Any, Any], exc: Exception) -> None:
    if isinstance(exc, DecodeError):  # a message of a request stream that does not parse
        exc = errors.InvalidArgumentError(f"a request message does not parse: {exc}")
    if isinstance(exc, errors.FalrtError):
        await abort(context, errors.to_proto(exc))
    log.exception("unexpected error in %s", type(exc).__name__)
    await abort(context, errors.to_proto(errors.InternalError("internal error; see server log")))


class Unparsable:
    """A unary request whose bytes do not parse, as a `tolerant` handler hands it over."""

    __slots__ = ("error",)

    def __init__(self, error: DecodeError) -> None:
        self.error = error

    def invalid(self) -> errors.InvalidArgumentError:
        return errors.InvalidArgumentError(f"the request message does not parse: {self.error}")


def tolerant(handler: Any, *, own: bool = True) -> Any:
    """`handler` (a grpc.RpcMethodHandler), but a request that does not parse is answered
    INVALID_ARGUMENT instead of gRPC's UNKNOWN and a logged traceback, for anyone, before
    any of falrt's code (the guard included) runs. A unary request reaches the method as an
    `Unparsable` (which `unary` and `server_stream` answer). A request stream is parsed as
    the method reads it: falrt's own methods (`own`) answer a DecodeError themselves
    (`_fail`, and RunnerLink.Attach); another's (reflection) is wrapped here."""
    if handler.request_streaming:
        behavior = handler.stream_stream
        if own or behavior is None or not inspect.isasyncgenfunction(behavior):
            return handler

        async def stream(requests: Any, context: aio.ServicerContext[Any, Any]) -> Any:
            try:
                async for response in behavior(requests, context):
                    yield response
            except DecodeError as exc:
                await context.abort(grpc.StatusCode.INVALID_ARGUMENT,
                                    f"a request message does not parse: {exc}")

        return handler._replace(stream_stream=stream)  # (a namedtuple)
    parse = handler.request_deserializer
    if parse is None:
        return handler

    def deserialize(data: bytes) -> Any:
        try:
            return parse(data)
        except DecodeError as exc:
            return Unparsable(exc)

    return handler._replace(request_deserializer=deserialize)


def unary(
    fn: Callable[[Any, Req, aio.ServicerContext[Req, Resp]], Awaitable[Resp]],
) -> Callable[[Any, Req, aio.ServicerContext[Req, Resp]], Awaitable[Resp]]:
    name = fn.__name__

    @functools.wraps(fn)
    async def wrapper(self: Any, request: Req, context: aio.ServicerContext[Req, Resp]) -> Resp:
        try:
            if isinstance(request, Unparsable):
                raise request.invalid()
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
            if isinstance(request, Unparsable):
                raise request.invalid()
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


__all__ = ["Unparsable", "abort", "grpc", "server_stream", "tolerant", "unary"]


class GenericHandlersOnly:
    """What the generated `add_*Servicer_to_server` functions see of the server: their
    handlers are added as generic handlers only, not as registered methods. grpc.aio's
    server keeps one pending future per registered method and, at every incoming call,
    waits on all of them with `asyncio.wait` (adding and removing a callback on each):
    with falrt's ~60 methods that was 8% of the server's CPU under a submit load (py-spy),
    a cost the bare echo it is measured against does not pay. With generic handlers only,
    it waits on one future, and a call's handler is found by its service's dict lookup.

    The generic handler is made here from the method handlers, each made `rpc.tolerant`: a
    unary request that does not parse reaches the method, which answers INVALID_ARGUMENT
    (gRPC would answer UNKNOWN and log a traceback, for anyone, before any check)."""

    def __init__(self, server: aio.Server) -> None:
        self._server = server

    def add_generic_rpc_handlers(self, handlers: Any) -> None:
        return None  # made from the method handlers, added next with them

    def add_registered_method_handlers(self, service: str, handlers: Any) -> None:
        own = service.startswith("falrt.")
        forgiving = {name: tolerant(handler, own=own) for name, handler in handlers.items()}
        self._server.add_generic_rpc_handlers(
            (grpc.method_handlers_generic_handler(service, forgiving),))
