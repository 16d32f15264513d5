"""Whether the store can write: known from its failures, learned again by probing.

The store tells `StoreHealth` when a write fails for lack of space (its `on_full`). From then
until a probe write succeeds, the store counts as full: the server answers NOT_SERVING on its
health service (`main.py` listens), Submit fails with `store_full` as the store answers it,
and results that could not be stored wait in memory (`Recorder`) for `until_writable`.

There is no event for "space was freed", so while the store is full a small write is tried
every `PROBE_FIRST_S`, doubling up to `PROBE_MAX_S`. Nothing is probed while the store
writes. Loop-affine.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

from falrt import errors
from falrt.server.tasks import Tasks
from falrt.store.base import Store

log = logging.getLogger(__name__)

PROBE_FIRST_S = 0.2
PROBE_MAX_S = 2.0


class StoreHealth:
    """See the module docstring."""

    def __init__(self, store: Store, tasks: Tasks) -> None:
        self._store = store
        self._tasks = tasks
        self._writable = asyncio.Event()
        self._writable.set()
        self._listeners: list[Callable[[bool], object]] = []
        store.on_full = self.full

    @property
    def writable(self) -> bool:
        return self._writable.is_set()

    def watch(self, listener: Callable[[bool], object]) -> None:
        """Calls `listener(writable)` each time the store becomes full or writable again."""
        self._listeners.append(listener)

    def full(self) -> None:
        """A write failed for lack of space: the store counts as full until a probe writes."""
        if not self.writable:
            return
        log.error("the store has no space left: the server reports NOT_SERVING, refuses new "
                  "requests and keeps unstored results in memory until it can write again")
        self._writable.clear()
        self._tell(False)
        self._tasks.spawn(self._probe(), name="falrt-store-probe")

    async def until_writable(self) -> None:
        await self._writable.wait()

    async def _probe(self) -> None:
        wait = PROBE_FIRST_S
        while True:
            await asyncio.sleep(wait)
            try:
                await self._store.probe()
            except errors.StoreFullError:
                wait = min(2 * wait, PROBE_MAX_S)
                continue
            except Exception:
                log.exception("probing the store failed")
                wait = min(2 * wait, PROBE_MAX_S)
                continue
            break
        log.info("the store can write again: the server reports SERVING")
        self._writable.set()
        self._tell(True)

    def _tell(self, writable: bool) -> None:
        for listener in self._listeners:
            listener(writable)

    async def close(self) -> None:
        """Stops probing."""
        await self._tasks.close()
