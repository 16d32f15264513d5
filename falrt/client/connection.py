"""Where the client connects and how: the one place that reads `FALRT_HOST`, and the channels
that carry the caller's API key (see `falrt.client.credentials`)."""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import grpc

from falrt.client.credentials import metadata_for

DEFAULT_HOST = "127.0.0.1:50051"
HOST_ENV = "FALRT_HOST"
MAX_MESSAGE_BYTES = 64 * 1024 * 1024

CHANNEL_OPTIONS: tuple[tuple[str, int], ...] = (
    ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
    ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
)


def resolve_host(host: str | None) -> str:
    """`host` if given, else `$FALRT_HOST`, else `127.0.0.1:50051`."""
    return host or os.environ.get(HOST_ENV) or DEFAULT_HOST


def channel(host: str) -> grpc.Channel:
    """A blocking channel to `host` whose calls carry the key known for it."""
    plain = grpc.insecure_channel(host, options=CHANNEL_OPTIONS)
    metadata = metadata_for(host)
    return grpc.intercept_channel(plain, _AddMetadata(metadata)) if metadata else plain


def aio_channel(host: str) -> grpc.aio.Channel:
    """An asyncio channel to `host` whose calls carry the key known for it."""
    metadata = metadata_for(host)
    interceptors = [_aio(kind, metadata) for kind in _AIO_KINDS] if metadata else None
    return grpc.aio.insecure_channel(host, options=CHANNEL_OPTIONS, interceptors=interceptors)


class _Details(NamedTuple):
    method: str
    timeout: float | None
    metadata: Sequence[tuple[str, str]] | None
    credentials: grpc.CallCredentials | None
    wait_for_ready: bool | None
    compression: Any


def _with(details: Any, metadata: tuple[tuple[str, str], ...]) -> _Details:
    return _Details(details.method, details.timeout, (*(details.metadata or ()), *metadata),
                    details.credentials, details.wait_for_ready,
                    getattr(details, "compression", None))


class _AddMetadata(
    grpc.UnaryUnaryClientInterceptor,
    grpc.UnaryStreamClientInterceptor,
    grpc.StreamUnaryClientInterceptor,
    grpc.StreamStreamClientInterceptor,
):
    def __init__(self, metadata: tuple[tuple[str, str], ...]) -> None:
        self._metadata = metadata

    def intercept_unary_unary(
        self, continuation: Callable[..., Any], details: Any, request: Any
    ) -> Any:
        return continuation(_with(details, self._metadata), request)

    def intercept_unary_stream(
        self, continuation: Callable[..., Any], details: Any, request: Any
    ) -> Any:
        return continuation(_with(details, self._metadata), request)

    def intercept_stream_unary(
        self, continuation: Callable[..., Any], details: Any, requests: Any
    ) -> Any:
        return continuation(_with(details, self._metadata), requests)

    def intercept_stream_stream(
        self, continuation: Callable[..., Any], details: Any, requests: Any
    ) -> Any:
        return continuation(_with(details, self._metadata), requests)


_AIO_KINDS = (
    grpc.aio.UnaryUnaryClientInterceptor,
    grpc.aio.UnaryStreamClientInterceptor,
    grpc.aio.StreamUnaryClientInterceptor,
    grpc.aio.StreamStreamClientInterceptor,
)
_AIO_METHODS: dict[type[grpc.aio.ClientInterceptor], str] = {
    grpc.aio.UnaryUnaryClientInterceptor: "intercept_unary_unary",
    grpc.aio.UnaryStreamClientInterceptor: "intercept_unary_stream",
    grpc.aio.StreamUnaryClientInterceptor: "intercept_stream_unary",
    grpc.aio.StreamStreamClientInterceptor: "intercept_stream_stream",
}


def _aio(kind: type[grpc.aio.ClientInterceptor], metadata: tuple[tuple[str, str], ...]) -> Any:
    """One aio interceptor of `kind` (grpc.aio needs one class per call kind)."""

    async def intercept(self: Any, continuation: Any, details: Any, request: Any) -> Any:
        return await continuation(_with_aio(details, metadata), request)

    return type(f"_Add{kind.__name__}", (kind,), {_AIO_METHODS[kind]: intercept})()


def _with_aio(details: Any, metadata: tuple[tuple[str, str], ...]) -> Any:
    return grpc.aio.ClientCallDetails(
        details.method, details.timeout,
        grpc.aio.Metadata(*(tuple(details.metadata or ()) + metadata)),
        details.credentials, details.wait_for_ready)
