"""The single writer of the runner's side of the Attach stream.

Every message the runner sends goes through one bounded FIFO queue, drained by one task
(`pump`) that writes to the gRPC call, so messages leave in exactly the order they were
accepted: a request's log lines and partial outputs always precede its Result.

Producers:
- `await send(msg)` waits for room: results, partials, heartbeats, state changes.
- `offer(msg)` never waits; when the queue is full the message is dropped and counted.
  Only log lines are offered (a handler printing faster than the stream drains loses lines
  rather than blocking the loop or growing memory without bound).
- `offer_from_any_thread(msg)` is `offer` callable from worker threads; lines offered by one
  thread keep their order, and precede anything the loop does after that thread's handler
  returns (both go through `call_soon_threadsafe`, which is FIFO).

Loop-affine except `offer_from_any_thread`. After the stream fails, everything is dropped.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from typing import Any

from falrt.v1 import runner_pb2

__all__ = ["Outbox"]

log = logging.getLogger(__name__)
Message = runner_pb2.RunnerMessage


class Outbox:
    """Bounded FIFO of messages for one stream; see the module docstring."""

    def __init__(self, loop: asyncio.AbstractEventLoop, capacity: int = 4096) -> None:
        self._loop = loop
        self._loop_thread = threading.get_ident()
        self._queue: asyncio.Queue[Message] = asyncio.Queue(maxsize=capacity)
        self._broken = False
        self.dropped = 0

    async def send(self, message: Message) -> None:
        """Queues `message`, waiting while the queue is full."""
        if not self._broken:
            await self._queue.put(message)

    def offer(self, message: Message) -> None:
        """Queues `message` if there is room, else drops it. Loop thread only."""
        if self._broken:
            return
        try:
            self._queue.put_nowait(message)
        except asyncio.QueueFull:
            self.dropped += 1

    def offer_from_any_thread(self, message: Message) -> None:
        """`offer` from the loop thread or any other thread."""
        if threading.get_ident() == self._loop_thread:
            self.offer(message)
            return
        try:
            self._loop.call_soon_threadsafe(self.offer, message)
        except RuntimeError:  # the loop is closed: the runner is exiting
            self.dropped += 1

    async def pump(self, call: Any) -> None:
        """Writes queued messages to `call` (a grpc.aio stream call) until cancelled.

        Returns when a write fails, after marking the outbox broken and releasing waiters.
        """
        while True:
            message = await self._queue.get()
            try:
                await call.write(message)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # the stream ended under us: the reader reports why
                log.debug("runner stream write failed: %r", exc)
                self._break()
                return
            finally:
                self._queue.task_done()

    def _break(self) -> None:
        self._broken = True
        while not self._queue.empty():
            self._queue.get_nowait()
            self._queue.task_done()

    async def flush(self, timeout_s: float) -> bool:
        """Waits until every queued message was written. False on timeout or failure."""
        try:
            await asyncio.wait_for(self._queue.join(), timeout_s)
        except TimeoutError:
            return False
        return not self._broken
