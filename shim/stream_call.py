"""The runner's end of a stream link (falrt/streamlink.py), shaped as the grpc.aio call of
`RunnerLink.Attach` that `RunnerSession` drives, so the session does not know which link
it has: `write`, `done_writing`, `cancel`, and async iteration over the server's messages,
which ends cleanly when the server ends the stream with OK and raises `aio.AioRpcError`
with the server's status otherwise (UNAVAILABLE when the connection is lost or cannot be
made). After `cancel`, the iteration raises CancelledError, as grpc's does.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

import grpc
from google.protobuf.message import Message
from grpc import aio

from falrt.streamlink import FrameConnection, LinkEnded
from falrt.v1 import runner_pb2

__all__ = ["StreamCall", "dial"]

Connection = FrameConnection[runner_pb2.ServerMessage]


class StreamCall:
    """One Attach stream over a connection (None: it could not be made, `failure` says
    why). Loop-affine."""

    def __init__(self, connection: Connection | None, failure: str = "") -> None:
        self._connection = connection
        self._failure = failure
        self._cancelled = False

    def __aiter__(self) -> StreamCall:
        return self

    async def __anext__(self) -> runner_pb2.ServerMessage:
        if self._connection is None:
            raise _rpc_error(grpc.StatusCode.UNAVAILABLE, self._failure)
        try:
            return await self._connection.__anext__()
        except LinkEnded as exc:
            if self._cancelled:
                raise asyncio.CancelledError from None
            raise _rpc_error(exc.code, exc.details) from None

    async def write(self, message: Message) -> None:
        if self._connection is None:
            raise ConnectionRefusedError(self._failure)
        await self._connection.write(message)

    async def done_writing(self) -> None:
        if self._connection is not None:
            self._connection.write_eof()

    def cancel(self) -> bool:
        self._cancelled = True
        if self._connection is not None:
            self._connection.close()
        return True


@contextlib.asynccontextmanager
async def dial(address: str, max_message_bytes: int) -> AsyncIterator[StreamCall]:
    """A StreamCall on a connection to `address` (HOST:PORT or unix:PATH), closed at the
    end. A connection that cannot be made gives a call that fails as gRPC's would."""
    loop = asyncio.get_running_loop()

    def connection() -> Connection:
        return FrameConnection(runner_pb2.ServerMessage.FromString, max_message_bytes,
                               strict=True)

    try:
        if address.startswith("unix:"):
            _, made = await loop.create_unix_connection(connection, address[len("unix:"):])
        else:
            host, _, port = address.rpartition(":")
            _, made = await loop.create_connection(connection, host.strip("[]"), int(port))
    except OSError as exc:
        yield StreamCall(None, f"cannot reach the server at {address}: {exc}")
        return
    try:
        yield StreamCall(made)
    finally:
        made.close()


def _rpc_error(code: grpc.StatusCode, details: str) -> aio.AioRpcError:
    return aio.AioRpcError(code, aio.Metadata(), aio.Metadata(), details)
