"""The one place where the client turns gRPC failures into falrt exceptions."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import grpc

from falrt.errors import from_rpc_error


@contextlib.contextmanager
def translate_rpc_errors() -> Iterator[None]:
    """Re-raises any `grpc.RpcError` (sync or aio) inside the block as its falrt exception.

    Usable around awaits too: it only catches, it never blocks.
    """
    try:
        yield
    except grpc.RpcError as exc:
        raise from_rpc_error(exc) from exc
