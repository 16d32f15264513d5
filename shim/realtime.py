"""Realtime sessions on the runner: a stream of inputs in, a stream of outputs out.

The server opens a session (RealtimeStart) on a runner with a free slot; the session holds
that slot until it closes. Inputs (RealtimeInput) go to the handler, an async generator
called once with an async iterator of decoded inputs; each output it yields goes back at
once (RealtimeOutput). RealtimeEnd ends the handler's input. When the handler returns or
fails, the runner sends RealtimeClosed (with the error, if any) and the slot is free.

Buffering is bounded, with backpressure: the server sends at most `INPUT_BUFFER` inputs the
handler has not taken yet, and the runner gives credit (RealtimeCredit) as the handler takes
them; a server that sent more anyway closes the session with RESOURCE_EXHAUSTED. So a caller
that sends faster than the handler reads is slowed down by gRPC's flow control, not failed.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

from falrt.errors import FalrtError, ResourceExhaustedError
from falrt.sdk.codec import is_msgpack
from falrt.sdk.endpoints import Endpoint

INPUT_BUFFER = 64
_END = None


class RealtimeInputs:
    """The inputs of one session, waiting for its handler."""

    def __init__(self, ep: Endpoint, on_taken: Callable[[], Awaitable[None]]) -> None:
        self._ep = ep
        self._on_taken = on_taken  # gives the server credit for one more input
        self._queue: asyncio.Queue[tuple[bytes, str] | None] = asyncio.Queue()
        self.msgpack = False  # answer as the caller last wrote
        self.overflow: FalrtError | None = None

    def put(self, data: bytes, content_type: str) -> bool:
        """Queues an input; False when the buffer is full (the session must close)."""
        if self._queue.qsize() >= INPUT_BUFFER:
            self.overflow = ResourceExhaustedError(
                f"more than {INPUT_BUFFER} inputs wait for the realtime handler of "
                f"{self._ep.path}; send slower")
            return False
        self._queue.put_nowait((data, content_type))
        return True

    def end(self) -> None:
        self._queue.put_nowait(_END)

    async def __aiter__(self) -> AsyncIterator[Any]:
        while (item := await self._queue.get()) is not _END:
            data, content_type = item
            await self._on_taken()
            self.msgpack = is_msgpack(content_type)
            yield self._ep.input_codec.decode(data, self.msgpack)
