"""Runners as the server sees them, and the events the server sends them.

A `RunnerHandle` is created when the server asks a backend for a runner and lives until
the runner is TERMINATED. Its `outbox` carries plain events to the RunnerLink servicer,
which turns them into protobuf messages on the runner's stream.
"""

from __future__ import annotations

import asyncio
import enum
import time
from collections import deque
from dataclasses import dataclass, field

from falrt.backends.base import RunnerProcess
from falrt.server.state.transitions import TransitionTable
from falrt.server.state.work import WorkItem


class RunnerState(enum.IntEnum):
    """fal's runner states; the values are the contract's (RunnerState in common.proto)."""

    PENDING = 1
    IMAGE_PULL = 2
    SETUP = 3
    CRASH_BACKOFF = 4
    IDLE = 5
    RUNNING = 6
    DRAINING = 7
    TERMINATING = 8
    TERMINATED = 9


_S = RunnerState
# The one transition table of runner states (docs/runners.md shows it). A runner is created
# PENDING (SETUP when adopted after a server restart); it may end from any state.
RUNNER_TRANSITIONS = TransitionTable("runner state", {
    # a start goes on, is given up (no runner process), or fails (crash backoff); a runner
    # may dial in (IDLE) while its backend still reports the start
    _S.PENDING: (_S.IMAGE_PULL, _S.SETUP, _S.CRASH_BACKOFF, _S.IDLE, _S.TERMINATING,
                 _S.TERMINATED),
    _S.IMAGE_PULL: (_S.SETUP, _S.CRASH_BACKOFF, _S.IDLE, _S.TERMINATING, _S.TERMINATED),
    _S.SETUP: (_S.CRASH_BACKOFF, _S.IDLE, _S.TERMINATING, _S.TERMINATED),
    _S.CRASH_BACKOFF: (_S.PENDING, _S.TERMINATED),  # it starts again, or is no longer wanted
    _S.IDLE: (_S.RUNNING, _S.DRAINING, _S.TERMINATING, _S.TERMINATED),
    _S.RUNNING: (_S.IDLE, _S.DRAINING, _S.TERMINATING, _S.TERMINATED),
    _S.DRAINING: (_S.TERMINATING, _S.TERMINATED),  # its last requests end, or it is killed
    _S.TERMINATING: (_S.TERMINATED,),
    _S.TERMINATED: (),
})

# States in which a runner counts as capacity (present or coming).
ALIVE_STATES = frozenset(
    {RunnerState.PENDING, RunnerState.IMAGE_PULL, RunnerState.SETUP, RunnerState.IDLE,
     RunnerState.RUNNING}
)
MAX_TRANSITIONS = 100

# States of a runner being started (it has not said Hello yet).
STARTING_STATES = frozenset({RunnerState.PENDING, RunnerState.IMAGE_PULL, RunnerState.SETUP})

# States in which a runner may be given new work.
SERVING_STATES = frozenset({RunnerState.IDLE, RunnerState.RUNNING})


@dataclass(frozen=True)
class GpuFigures:
    """One GPU of a runner at its last heartbeat."""

    uuid: str
    memory_used_bytes: int
    memory_total_bytes: int
    utilization_percent: int  # of the last sample period, busy


@dataclass(frozen=True)
class AssignEvent:
    item: WorkItem


@dataclass(frozen=True)
class CancelEvent:
    request_id: str


@dataclass(frozen=True)
class RealtimeInputEvent:
    session_id: str
    data: bytes
    content_type: str


@dataclass(frozen=True)
class RealtimeEndEvent:
    session_id: str


@dataclass(frozen=True)
class DrainEvent:
    pass


@dataclass(frozen=True)
class CloseEvent:
    """Ends the runner's stream from the server side (the runner is being killed)."""


OutboxEvent = (AssignEvent | CancelEvent | DrainEvent | CloseEvent | RealtimeInputEvent
               | RealtimeEndEvent)


@dataclass(eq=False)
class RunnerHandle:
    """One runner: identity, state, in-flight work and the channel to its stream."""

    runner_id: str
    app_name: str
    revision_id: str
    token: str
    max_multiplexing: int
    machine_type: str
    state: RunnerState = RunnerState.PENDING
    started_at: float = field(default_factory=time.time)
    state_since: float = field(default_factory=time.time)
    idle_since: float = field(default_factory=time.monotonic)
    served: int = 0
    in_flight: dict[str, WorkItem] = field(default_factory=dict)
    reserved: int = 0  # slots held for requests being claimed (a shared store)
    outbox: asyncio.Queue[OutboxEvent] = field(default_factory=asyncio.Queue)
    process: RunnerProcess | None = None
    attached: bool = False
    startup_error: str = ""  # set by the server when it gives up on the start
    # Why its last start failed (shown while in CRASH_BACKOFF), or why it was stopped.
    last_error: str = ""
    # `falrt runners stop --replace`: the runner this one replaces (it drains once this
    # one is ready).
    replaces: str = ""
    stop_requested: bool = False  # the server stopped or killed it (an exit is expected)
    adopted: bool = False  # started by this server's previous life (it dials in again)
    # GPU memory and utilisation at its last heartbeat.
    gpu_stats: list[GpuFigures] = field(default_factory=list)
    # Every state entered, with its wall-clock time (the first and the last 100 kept).
    transitions: deque[tuple[RunnerState, float]] = field(
        default_factory=lambda: deque(maxlen=MAX_TRANSITIONS))
    first_transition: tuple[RunnerState, float] | None = None
    # Resolved once it is ready ("") or gone before that (why): a rolling deploy waits on it.
    ready: asyncio.Future[str] | None = None

    def __post_init__(self) -> None:
        self.first_transition = (self.state, self.state_since)
        self.transitions.append(self.first_transition)

    def history(self) -> list[tuple[RunnerState, float]]:
        """Every state the runner entered, oldest first (the middle of a long life may be
        cut)."""
        kept = list(self.transitions)
        if self.first_transition is not None and kept[0] is not self.first_transition:
            kept.insert(0, self.first_transition)
        return kept

    @property
    def free_slots(self) -> int:
        if self.state not in SERVING_STATES:
            return 0
        return self.max_multiplexing - len(self.in_flight) - self.reserved

    def set_state(self, state: RunnerState) -> None:
        """The one place a runner's state changes. Raises IllegalTransition for a change
        RUNNER_TRANSITIONS does not allow."""
        if state is not self.state:
            RUNNER_TRANSITIONS.check(self.state, state)
            self.state = state
            self.state_since = time.time()
            self.transitions.append((state, self.state_since))

    def assign(self, item: WorkItem) -> None:
        """Takes a slot for `item` and sends it to the runner."""
        self.in_flight[item.request_id] = item
        item.runner_id = self.runner_id
        self.set_state(RunnerState.RUNNING)
        self.outbox.put_nowait(AssignEvent(item))

    def release(self, request_id: str) -> WorkItem | None:
        """Frees the slot of a finished request; None if it was not in flight here."""
        item = self.in_flight.pop(request_id, None)
        if item is not None:
            self.served += 1
            if not self.in_flight and self.state is RunnerState.RUNNING:
                self.set_state(RunnerState.IDLE)
                self.idle_since = time.monotonic()
        return item
