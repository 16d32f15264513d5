"""Dynamic batching: concurrent requests of one batched endpoint become one handler call.

Each batched endpoint has one `Batcher` with one loop: it waits for a request, then gathers
more until the batch holds `max_batch_size` requests or `max_batch_wait_ms` have passed since
the first one arrived, calls the handler once with the list of inputs, and hands each request
its output. Batches run one after another (requests arriving meanwhile form the next batch),
so a model on a GPU sees one batch at a time. An `Exception` instance in the handler's list
fails only its request; a handler that raises fails the whole batch.

Requests from the queue and from the direct path are batched together: the runner does not
tell them apart. A request cancelled while it waits leaves the batch; one cancelled while its
batch runs gets no output.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field
from typing import Any

from falrt.errors import RunnerServerError
from falrt.sdk.endpoints import Endpoint

from .invoke import Invoker

log = logging.getLogger(__name__)


@dataclass(eq=False)
class _Waiting:
    value: Any
    future: asyncio.Future[Any] = field(
        default_factory=lambda: asyncio.get_running_loop().create_future())


class Batcher:
    """The batches of one endpoint. Loop-affine; `close()` when the runner stops."""

    def __init__(self, ep: Endpoint, invoker: Invoker) -> None:
        assert ep.batched
        self._ep = ep
        self._invoker = invoker
        self._waiting: list[_Waiting] = []
        self._arrived = asyncio.Event()
        self._loop_task: asyncio.Task[None] | None = None

    async def call(self, value: Any) -> Any:
        """The output of one request (its item of a batch); raises its item's error."""
        if self._loop_task is None:
            self._loop_task = asyncio.create_task(self._run_batches(),
                                                  name=f"falrt-batches{self._ep.path}")
        waiting = _Waiting(value)
        self._waiting.append(waiting)
        self._arrived.set()
        try:
            return await waiting.future
        except asyncio.CancelledError:
            if waiting in self._waiting:  # still waiting: it leaves the batch
                self._waiting.remove(waiting)
            raise

    def close(self) -> None:
        if self._loop_task is not None:
            self._loop_task.cancel()
        for waiting in self._waiting:
            waiting.future.cancel()

    async def _run_batches(self) -> None:
        loop = asyncio.get_running_loop()
        size, wait_s = self._ep.max_batch_size, self._ep.max_batch_wait_ms / 1000
        while True:
            await self._arrived.wait()
            deadline = loop.time() + wait_s
            while len(self._waiting) < size and (left := deadline - loop.time()) > 0:
                self._arrived.clear()
                try:
                    await asyncio.wait_for(self._arrived.wait(), left)
                except TimeoutError:
                    break
            batch, self._waiting = self._waiting[:size], self._waiting[size:]
            if not self._waiting:
                self._arrived.clear()
            if batch:
                await self._run(batch)

    async def _run(self, batch: list[_Waiting]) -> None:
        try:
            outputs = await self._invoker.batch(self._ep, [w.value for w in batch])
            if not isinstance(outputs, list) or len(outputs) != len(batch):
                got = len(outputs) if isinstance(outputs, list) else type(outputs).__name__
                raise RunnerServerError(
                    f"batched endpoint {self._ep.path} returned {got} outputs for "
                    f"{len(batch)} inputs (it must return a list, one output per input)")
        except Exception as exc:
            for waiting in batch:
                if not waiting.future.done():
                    waiting.future.set_exception(exc)
            return
        for waiting, output in zip(batch, outputs, strict=True):
            if waiting.future.done():
                continue  # cancelled while the batch ran
            if isinstance(output, Exception):
                waiting.future.set_exception(output)
            else:
                waiting.future.set_result(output)
