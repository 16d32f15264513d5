"""The single writer of the runner's side of the Attach stream.

Every message the runner sends goes through one bounded FIFO queue, drained by one task
(`pump`) that writes to the gRPC call, so messages leave in exactly the order they were
accepted: a request's log lines and partial outputs always precede its Result.

Batching: each message on the stream has a fixed cost on both sides (a write, a read, a
wake-up of the server's loop), and under load many requests share one runner. So `pump`
takes everything that waits when the stream can take the next message (what was queued
while the last one was written), and results next to each other go out as one ResultBatch
(`wire.results_message`; results are queued as plain `wire.Result`s and built into their
message only then, so none is copied). Nothing waits to fill a batch: a lone result goes out
at once.

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

from falrt.limits import ENVELOPE_BYTES
from falrt.v1 import runner_pb2

from . import wire

__all__ = ["Outbox"]

log = logging.getLogger(__name__)
Message = runner_pb2.RunnerMessage | wire.Result
# A ResultBatch: at most this many results, with outputs (and error messages) of at most
# this many bytes in all; the rest of ENVELOPE_BYTES is room for their other fields. A
# larger result goes alone.
BATCH_RESULTS = 64
BATCH_RESULT_BYTES = ENVELOPE_BYTES // 2


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
        """Writes queued messages to `call` (a grpc.aio stream call) until cancelled,
        coalescing what waits (see the module docstring).

        Returns when a write fails, after marking the outbox broken and releasing waiters.
        """
        while True:
            items = [await self._queue.get()]
            while not self._queue.empty():
                items.append(self._queue.get_nowait())
            try:
                for message in coalesce(items):
                    await call.write(message)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # the stream ended under us: the reader reports why
                log.debug("runner stream write failed: %r", exc)
                self._break()
                return
            finally:
                for _ in items:
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


def coalesce(items: list[Message]) -> list[runner_pb2.RunnerMessage]:
    """`items` as messages, in order: runs of results as ResultBatches of at most
    BATCH_RESULTS results and BATCH_RESULT_BYTES of outputs (a run of one as a Result)."""
    messages: list[runner_pb2.RunnerMessage] = []
    run: list[wire.Result] = []
    run_bytes = 0
    for item in items:
        if not isinstance(item, wire.Result):
            if run:
                messages.append(wire.results_message(run))
                run, run_bytes = [], 0
            messages.append(item)
            continue
        if run and (len(run) >= BATCH_RESULTS or run_bytes + item.size > BATCH_RESULT_BYTES):
            messages.append(wire.results_message(run))
            run, run_bytes = [], 0
        run.append(item)
        run_bytes += item.size
    if run:
        messages.append(wire.results_message(run))
    return messages
