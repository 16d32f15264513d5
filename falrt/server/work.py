"""Units of work the dispatcher hands to runners, and how each reports back.

Two kinds share the app queues and the runners:
- `QueuedRequest`: a durable request of the queue path. Watchers follow it through
  `changed`; its outcome is stored before they see COMPLETED.
- `DirectCall`: a call of the direct path (Run, Stream). Not stored, never retried; the
  caller awaits `done` (and reads `partials` for streams).

All methods run on the server's event loop.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field

from falrt.store.records import LogRecord, Outcome, Priority, RequestRecord, Status


class Signal:
    """A level-free notification: `wait()` returns a future completed by the next `fire()`."""

    __slots__ = ("_future",)

    def __init__(self) -> None:
        self._future: asyncio.Future[None] | None = None

    def wait(self) -> asyncio.Future[None]:
        if self._future is None or self._future.done():
            self._future = asyncio.get_running_loop().create_future()
        return self._future

    def fire(self) -> None:
        future, self._future = self._future, None
        if future is not None and not future.done():
            future.set_result(None)


@dataclass(eq=False)
class WorkItem:
    """What every unit of work has: identity, target, payload and place in the queue."""

    request_id: str
    app_name: str
    path: str
    input: bytes
    content_type: str
    priority: Priority
    seq: int
    enqueued_at: float = field(default_factory=time.monotonic)
    runner_id: str = ""
    cancel_requested: bool = False

    @property
    def durable(self) -> bool:
        return False


@dataclass(eq=False)
class QueuedRequest(WorkItem):
    """A request of the persistent queue, with what watchers need to follow it."""

    status: Status = Status.IN_QUEUE
    attempts: int = 0
    logs: list[LogRecord] = field(default_factory=list)
    last_partial: tuple[bytes, str] | None = None
    outcome: Outcome | None = None
    waiting_reason: str = ""
    changed: Signal = field(default_factory=Signal)
    # The INSERT of a new request, while it is being committed (None once loaded).
    stored: asyncio.Future[None] | None = None

    @property
    def durable(self) -> bool:
        return True

    @classmethod
    def from_record(cls, record: RequestRecord) -> QueuedRequest:
        return cls(
            request_id=record.request_id,
            app_name=record.app_name,
            path=record.path,
            input=record.input,
            content_type=record.content_type,
            priority=record.priority,
            seq=record.seq,
            status=record.status,
            attempts=record.attempts,
            outcome=record.outcome,
            logs=list(record.outcome.logs) if record.outcome else [],
        )


@dataclass(eq=False)
class DirectCall(WorkItem):
    """A direct-path call: the caller awaits `done`; stream partials arrive in `partials`."""

    done: asyncio.Future[Outcome] = field(
        default_factory=lambda: asyncio.get_running_loop().create_future()
    )
    # Stream calls: each partial output, then None once the call is done.
    partials: asyncio.Queue[tuple[bytes, str] | None] | None = None
