"""Owned background tasks: each long-lived component keeps its tasks in one `Tasks`.

A component starts every task it needs through its `Tasks` (`spawn`) and, when it stops,
cancels and awaits them (`close`), in the order its `close` documents. A task that fails is
logged with the component's name and forgotten; the others go on (unlike a TaskGroup, one
failed store write must not cancel its siblings). A task that ends must not end (a loop that
runs until cancelled) is started with `essential=True`: if it ends otherwise, `on_lost`
runs (the server stops loudly rather than serve without it).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

log = logging.getLogger(__name__)
T = TypeVar("T")


class Tasks:
    """The running tasks of one component. Loop-affine."""

    def __init__(self, owner: str, on_lost: Callable[[str], None] | None = None) -> None:
        self.owner = owner
        self._tasks: set[asyncio.Future[Any]] = set()
        self._essential: set[asyncio.Future[Any]] = set()
        self._stopped: set[asyncio.Future[Any]] = set()  # cancelled on purpose
        self._on_lost = on_lost
        self._closed = False

    def __len__(self) -> int:
        return len(self._tasks)

    def spawn(
        self, work: Awaitable[T], *, name: str = "", essential: bool = False
    ) -> asyncio.Future[T]:
        """Runs `work` as a task of this owner (a future, e.g. a store write's, is kept as
        it is: no task is made for it). After `close`, it is cancelled at once."""
        task = asyncio.ensure_future(work)
        if name and isinstance(task, asyncio.Task):
            task.set_name(name)
        self._tasks.add(task)
        if essential:
            self._essential.add(task)
        task.add_done_callback(self._done_essential if essential else self._done)
        if self._closed:
            task.cancel()
        return task

    def _done(self, task: asyncio.Future[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("a task of %s failed (%s)", self.owner, _name(task),
                      exc_info=task.exception())

    def stop(self, task: asyncio.Future[Any]) -> None:
        """Cancels one task on purpose (an essential one then ends without `on_lost`)."""
        if task in self._essential:
            self._stopped.add(task)
        task.cancel()

    def _done_essential(self, task: asyncio.Future[Any]) -> None:
        self._essential.discard(task)
        self._done(task)
        stopped = task in self._stopped
        self._stopped.discard(task)
        if task.cancelled() and (self._closed or stopped):
            return
        why = "was cancelled" if task.cancelled() else f"ended: {task.exception()!r}"
        log.critical("%s's task %s %s", self.owner, _name(task), why)
        if self._on_lost is not None:
            self._on_lost(f"{self.owner}'s {_name(task)}")

    async def drain(self) -> None:
        """Waits until every task but the essential ones (loops that end only when
        cancelled) has ended, tasks spawned meanwhile included."""
        while pending := self._tasks - self._essential:
            await asyncio.gather(*pending, return_exceptions=True)

    async def close(self) -> None:
        """Cancels every task and waits for them to end. Idempotent."""
        self._closed = True
        for task in list(self._tasks):
            self.stop(task)
        while self._tasks:
            await asyncio.gather(*list(self._tasks), return_exceptions=True)


def _name(task: asyncio.Future[Any]) -> str:
    return task.get_name() if isinstance(task, asyncio.Task) else "store write"


__all__ = ["Tasks"]
