"""The runner link over a plain stream instead of gRPC: the default carrier of the process
backend's runners (`falrt server --runner-link auto`; docs/architecture.md, "The runner link:
one contract, two carriers").

Why: on the direct path each request costs the server four gRPC messages, and each gRPC
message costs a hand-off between grpc's poller thread and the event loop (writes, futex
wake-ups, `getpid` calls; bench/RESULTS.md, issue 18). For runners on the server's own host
the link can be a Unix socket (or a TCP connection on loopback) read and written on the loop
itself: a message is one `transport.write` and is read in `data_received`, with no thread in
between.

The same protobuf messages travel, each in a frame: a 5-byte header (one byte of kind, four
of length, big-endian) and the body.
- MESSAGE: a serialized RunnerMessage (runner to server) or ServerMessage (server to runner).
- STATUS: how the stream ended, as gRPC's trailers: one byte, the grpc.StatusCode's number,
  then the details in UTF-8. Only the server sends it, last, then closes the connection.
A frame of another kind, or a STATUS the server receives, ends the connection with
INVALID_ARGUMENT (a STATUS), and nothing that arrives after it is read.
The runner half-closes the connection (`write_eof`) where gRPC's call would `done_writing`.

`FrameConnection` is the protocol both ends share. Loop-affine.
"""

from __future__ import annotations

import asyncio
import struct
from collections import deque
from collections.abc import Callable
from typing import Generic, TypeVar, cast

import grpc
from google.protobuf.message import Message

__all__ = ["PREFIX", "FrameConnection", "LinkEnded"]

PREFIX = "stream:"  # FALRT_SERVER=stream:HOST:PORT or stream:unix:PATH: dial a stream link
HEADER = struct.Struct(">BI")
MESSAGE, STATUS = 0, 1
INBOX_HIGH = 1024  # messages read but not taken: reading pauses above this many
_CODES = {code.value[0]: code for code in grpc.StatusCode}
M = TypeVar("M", bound=Message)


class LinkEnded(Exception):
    """The stream ended with `code` (not OK) and `details`, as a gRPC status would say."""

    def __init__(self, code: grpc.StatusCode, details: str) -> None:
        super().__init__(f"{code.name}: {details}")
        self.code, self.details = code, details


class FrameConnection(asyncio.Protocol, Generic[M]):
    """One end of a stream link: the messages that arrive, as an async iterator (each
    parsed with `parse` when taken, so a message that does not parse raises DecodeError to
    its reader, as grpc's would), and `write`, which waits while the transport's buffer is
    full (the peer reads slowly: backpressure, as gRPC's flow control gives).

    How the incoming messages end: after STATUS OK, cleanly; after another STATUS, with
    LinkEnded. A connection that ends without STATUS (the peer's half-close, or a lost
    connection) ends them cleanly when `strict` is False (the server's end: either way the
    runner is gone) and with LinkEnded(UNAVAILABLE) when True (the runner's end).

    `on_made` is called once the connection is made (the loop calls `connection_made` a
    turn after the protocol is created: nothing may be written before).
    """

    def __init__(
        self, parse: Callable[[bytes], M], max_frame_bytes: int, strict: bool,
        on_made: Callable[[FrameConnection[M]], None] | None = None,
    ) -> None:
        self._parse = parse
        self._on_made = on_made
        self._max = max_frame_bytes
        self._strict = strict
        self._transport: asyncio.Transport | None = None
        self._buffer = bytearray()  # an incomplete frame's bytes
        self._need = HEADER.size  # bytes the incomplete frame needs in all
        self._inbox: deque[bytes] = deque()
        self._ended: LinkEnded | None = None  # set when the incoming messages ended
        self._done = False
        self._waiter: asyncio.Future[None] | None = None  # a reader waiting for a message
        self._drained: asyncio.Future[None] | None = None  # writers waiting for room

    # -- asyncio.Protocol --------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)  # (uvloop's: not a subclass)
        if self._on_made is not None:
            self._on_made(self)

    def data_received(self, data: bytes) -> None:
        if self._done:
            return  # (the messages have ended: what follows is not read)
        if self._buffer:
            self._buffer += data
            if len(self._buffer) < self._need:
                return
            data, self._buffer = bytes(self._buffer), bytearray()
        offset = self._frames(data)
        if offset < len(data):
            self._buffer += memoryview(data)[offset:]
        self._wake()
        if len(self._inbox) > INBOX_HIGH and self._transport is not None:
            self._transport.pause_reading()

    def eof_received(self) -> bool:
        self._finish(LinkEnded(grpc.StatusCode.UNAVAILABLE, "the server closed the link")
                     if self._strict else None)
        return True  # (the server's end still writes its STATUS)

    def connection_lost(self, exc: Exception | None) -> None:
        self._finish(LinkEnded(grpc.StatusCode.UNAVAILABLE, f"the link was lost: {exc!r}")
                     if self._strict else None)
        self._transport = None
        if self._drained is not None and not self._drained.done():
            self._drained.set_result(None)

    def pause_writing(self) -> None:
        self._drained = asyncio.get_running_loop().create_future()

    def resume_writing(self) -> None:
        if self._drained is not None and not self._drained.done():
            self._drained.set_result(None)
        self._drained = None

    # -- reading -------------------------------------------------------------------------

    def __aiter__(self) -> FrameConnection[M]:
        return self

    async def __anext__(self) -> M:
        while not self._inbox:
            if self._done:
                if self._ended is not None:
                    raise self._ended
                raise StopAsyncIteration
            self._waiter = asyncio.get_running_loop().create_future()
            try:
                await self._waiter
            finally:
                self._waiter = None
        body = self._inbox.popleft()
        if len(self._inbox) == INBOX_HIGH // 2 and self._transport is not None:
            self._transport.resume_reading()
        return self._parse(body)

    def _frames(self, data: bytes) -> int:
        """Takes the whole frames in `data`; returns where the first incomplete one starts
        (and sets how many bytes it needs)."""
        offset, size = 0, len(data)
        while size - offset >= HEADER.size and not self._done:
            kind, length = HEADER.unpack_from(data, offset)
            end = offset + HEADER.size + length
            if length > self._max:
                self.end(grpc.StatusCode.RESOURCE_EXHAUSTED,
                         f"a frame of {length} bytes is over the limit of {self._max}")
                return size
            if end > size:
                self._need = end - offset
                return offset
            body = data[offset + HEADER.size:end]
            if kind == MESSAGE:
                self._inbox.append(body)
            else:
                self._status(kind, body)
            offset = end
        self._need = HEADER.size
        return offset

    def _status(self, kind: int, body: bytes) -> None:
        """A frame other than MESSAGE: the server's STATUS at the runner's end (`strict`);
        anything else is refused."""
        code = _CODES.get(body[0]) if kind == STATUS and body and self._strict else None
        if code is None:
            self.end(grpc.StatusCode.INVALID_ARGUMENT, f"a frame of kind {kind} is not "
                     "expected here")
            return
        details = body[1:].decode("utf-8", "replace")
        self._finish(None if code is grpc.StatusCode.OK else LinkEnded(code, details))

    def _finish(self, ended: LinkEnded | None) -> None:
        if not self._done:
            self._done, self._ended = True, ended
            self._wake()

    def _wake(self) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    # -- writing -------------------------------------------------------------------------

    async def write(self, message: Message) -> None:
        """Sends `message`; waits while the transport's buffer is over its high-water mark.
        Raises ConnectionResetError once the connection is closed."""
        transport = self._transport
        if transport is None or transport.is_closing():
            raise ConnectionResetError("the runner link is closed")
        body = message.SerializeToString()
        transport.write(HEADER.pack(MESSAGE, len(body)) + body)
        if self._drained is not None:
            await self._drained

    def write_eof(self) -> None:
        """The runner's half-close: it sends nothing more (the server then ends the
        stream, as after gRPC's `done_writing`)."""
        if self._transport is not None and not self._transport.is_closing():
            self._transport.write_eof()

    def end(self, code: grpc.StatusCode, details: str = "") -> None:
        """Sends STATUS (`code`, `details`) and closes. Idempotent: later calls do nothing."""
        transport = self._transport
        if transport is None or transport.is_closing():
            return
        body = bytes([code.value[0]]) + details.encode()
        transport.write(HEADER.pack(STATUS, len(body)) + body)
        transport.close()
        self._finish(LinkEnded(code, details) if code is not grpc.StatusCode.OK else None)

    def close(self) -> None:
        """Closes the connection without a STATUS (the runner going away). Idempotent."""
        if self._transport is not None:
            self._transport.close()
