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
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

from falrt.limits import LOG_BYTES, LOG_LINES, cut_line
from falrt.server.state.transitions import TransitionTable
from falrt.store.records import LogRecord, Outcome, Priority, RequestRecord, Status

T = TypeVar("T")

# The one transition table of request statuses (docs/requests.md shows it). A request is
# created IN_QUEUE (or loaded as stored); an attempt that fails is queued again.
REQUEST_TRANSITIONS = TransitionTable("request status", {
    Status.IN_QUEUE: (Status.IN_PROGRESS, Status.COMPLETED),
    Status.IN_PROGRESS: (Status.IN_QUEUE, Status.COMPLETED),
    Status.COMPLETED: (),
})


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


async def any_done(sources: Sequence[asyncio.Future[Any]]) -> None:
    """Waits until one of `sources` is done.

    One plain future woken by their callbacks: no task, and cancelling this wait (its
    caller went away) never cancels a source that other waiters share.
    """
    waiter = asyncio.get_running_loop().create_future()

    def wake(_: asyncio.Future[Any]) -> None:
        if not waiter.done():
            waiter.set_result(None)

    for source in sources:
        source.add_done_callback(wake)
    try:
        await waiter
    finally:
        for source in sources:
            source.remove_done_callback(wake)


@dataclass(eq=False, slots=True)
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
    # When its running attempt started (monotonic; 0: none yet), for falrt_run_seconds.
    started_at: float = 0.0
    runner_id: str = ""
    cancel_requested: bool = False
    # The running attempt's request_timeout timer, and whether it fired.
    attempt_timer: asyncio.TimerHandle | None = None
    timed_out: bool = False
    # The runner of a failed attempt the handler asked to retry: another one is preferred.
    avoid_runner: str = ""
    # Its open spans when tracing is on (falrt/server/tracing.py RequestTrace), else None.
    trace: Any = None

    def stop_timers(self) -> None:
        if self.attempt_timer is not None:
            self.attempt_timer.cancel()
            self.attempt_timer = None


@dataclass(eq=False, slots=True)
class QueuedRequest(WorkItem):
    """A request of the persistent queue, with what watchers need to follow it."""

    status: Status = Status.IN_QUEUE
    attempts: int = 0
    # Its log lines, and the partial outputs of a streaming endpoint, for watchers: an
    # empty tuple until the first comes (`add_log`, `add_partial`), so that a queued
    # request holds no list of its own (fewer objects for the garbage collector to scan
    # when many wait).
    logs: Sequence[LogRecord] = ()
    last_partial: tuple[bytes, str] | None = None
    partials: Sequence[tuple[bytes, str]] = ()
    log_bytes: int = 0  # of the lines kept
    logs_dropped: int = 0  # lines dropped past the limits (the first one says so)
    outcome: Outcome | None = None
    # The first write of its outcome while it is under way (None otherwise): it is shown
    # COMPLETED once that write has committed (falrt/server/queue/recorder.py).
    storing: asyncio.Future[Any] | None = None
    waiting_reason: str = ""
    changed: Signal = field(default_factory=Signal)
    # Whether its row exists (or its INSERT is queued): later attempts are then recorded.
    persisted: bool = False
    # What the caller asked for at Submit.
    no_retry: bool = False
    retry_config: dict[str, int] = field(default_factory=dict)
    start_deadline: float | None = None  # wall clock
    webhook_url: str = ""
    idempotency_key: str = ""
    # Its app's auth mode when it was submitted or loaded: who may read it once the app is
    # gone ("" when unknown: then only the owner may; authorization never falls open).
    auth: str = ""
    # Failures so far, per retry condition; timers of a scheduled retry and of the deadline.
    failures: dict[str, int] = field(default_factory=dict)
    backoff_timer: asyncio.TimerHandle | None = None
    deadline_timer: asyncio.TimerHandle | None = None

    def set_status(self, status: Status) -> None:
        """The one place a request's status changes. Raises IllegalTransition for a change
        REQUEST_TRANSITIONS does not allow."""
        REQUEST_TRANSITIONS.check(self.status, status)
        self.status = status

    def add_log(self, line: LogRecord) -> bool:
        """Keeps a log line for watchers, cut to LOG_LINE_BYTES (a runner cuts its lines, and
        the server trusts no runner). Past LOG_LINES lines or LOG_BYTES bytes the rest are
        dropped, and one line says so. Returns whether the logs changed."""
        if self.logs_dropped:
            self.logs_dropped += 1
            return False
        message = cut_line(line.message)
        size = len(message.encode(errors="replace"))
        if len(self.logs) + 1 >= LOG_LINES or self.log_bytes + size > LOG_BYTES:
            self.logs_dropped = 1
            line = LogRecord(line.timestamp, f"[falrt: this request's log reached its limit "
                             f"({LOG_LINES} lines or {LOG_BYTES} bytes); later lines are "
                             "dropped]", "falrt")
        elif message is not line.message:
            line = LogRecord(line.timestamp, message, line.source)
        self.log_bytes += size
        self.logs = _appended(self.logs, line)
        return True

    def add_partial(self, partial: tuple[bytes, str]) -> None:
        self.partials = _appended(self.partials, partial)

    def stop_timers(self) -> None:
        WorkItem.stop_timers(self)  # (no zero-argument super() in a slots dataclass)
        for timer in (self.backoff_timer, self.deadline_timer):
            if timer is not None:
                timer.cancel()
        self.backoff_timer = self.deadline_timer = None

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
            logs=record.outcome.logs if record.outcome else (),
            no_retry=record.no_retry,
            retry_config=dict(record.retry_config),
            start_deadline=record.start_deadline,
            webhook_url=record.webhook_url,
            idempotency_key=record.idempotency_key,
        )


@dataclass(eq=False, slots=True)
class DirectCall(WorkItem):
    """A direct-path call: the caller awaits `done`; stream partials arrive in `partials`."""

    done: asyncio.Future[Outcome] = field(
        default_factory=lambda: asyncio.get_running_loop().create_future()
    )
    # Stream calls: each partial output, then None once the call is done.
    partials: asyncio.Queue[tuple[bytes, str] | None] | None = None


REALTIME_INPUT_BUFFER = 64  # as shim/realtime.py's INPUT_BUFFER


@dataclass(eq=False, slots=True)
class RealtimeSession(DirectCall):
    """A Queue.Realtime session: queued like a direct call until a runner takes it, then it
    holds that runner's slot until it closes. Outputs arrive in `partials` (None once it
    closed); `done` resolves with how it ended."""

    started: asyncio.Event = field(default_factory=asyncio.Event)
    # Inputs the runner may still take (its buffer); given back by RealtimeCredit.
    credit: asyncio.Semaphore = field(
        default_factory=lambda: asyncio.Semaphore(REALTIME_INPUT_BUFFER))


def _appended(items: Sequence[T], item: T) -> list[T]:
    """`items` with `item` at the end: the same list, or a new one for the first item."""
    if isinstance(items, list):
        items.append(item)
        return items
    return [*items, item]
