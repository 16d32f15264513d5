"""The runner session's state: one enum, one transition table, one way to move.

A `RunnerSession` (shim/session.py) is always in exactly one `SessionState`, held by its
`Lifecycle`. The states, in the order a runner meets them:

- CONNECTING: dialling the server, or on a stream it has not welcomed yet; the server has
  never welcomed this runner. (A server that sends no Welcome is served in this state.)
- WELCOMED: the server welcomed this runner on the current stream.
- RECONNECTING: a welcomed stream was lost and the runner dials again within
  `reconnect_s`, on streams not welcomed yet; its in-flight work was abandoned.
- FAILED: the runner cannot go on (the server refused it, or its health check failed):
  it dials no more, and `run()` shuts it down without `handle_exit` (a SIGTERM or Drain
  that comes first still asks for it).
- DRAINING: the shutdown sequence runs: no new work, in-flight requests finish within the
  grace period, `handle_exit` runs (when asked for).
- TERMINATING: `teardown()` runs and the stream is flushed and closed.
- CLOSED: the shutdown sequence is over. Final.

Transitions (`TRANSITIONS`; any other move raises IllegalTransition):

    CONNECTING   -> WELCOMED, FAILED, DRAINING
    WELCOMED     -> RECONNECTING, FAILED, DRAINING
    RECONNECTING -> WELCOMED, FAILED, DRAINING
    FAILED       -> DRAINING
    DRAINING     -> TERMINATING
    TERMINATING  -> CLOSED
    CLOSED       ->

Facts that are not the session's state stay where they belong: whether the current stream
has ended (`RunnerSession._lost`, one per stream, awaited by the shutdown sequence), why the
runner exits (`RunnerSession.exit_code`), a request's fate (`_Inflight`), and whether the
outbox's stream failed (`Outbox`).
"""

from __future__ import annotations

import asyncio
import enum
import logging
from collections.abc import Mapping

__all__ = [
    "DIALLING",
    "LINKED",
    "SHUTTING_DOWN",
    "TRANSITIONS",
    "IllegalTransition",
    "Lifecycle",
    "SessionState",
]

log = logging.getLogger(__name__)


class SessionState(enum.Enum):
    """Where a runner session stands; the module docstring says what each state means."""

    CONNECTING = enum.auto()
    WELCOMED = enum.auto()
    RECONNECTING = enum.auto()
    FAILED = enum.auto()
    DRAINING = enum.auto()
    TERMINATING = enum.auto()
    CLOSED = enum.auto()


_S = SessionState
TRANSITIONS: Mapping[SessionState, frozenset[SessionState]] = {
    _S.CONNECTING: frozenset({_S.WELCOMED, _S.FAILED, _S.DRAINING}),
    _S.WELCOMED: frozenset({_S.RECONNECTING, _S.FAILED, _S.DRAINING}),
    _S.RECONNECTING: frozenset({_S.WELCOMED, _S.FAILED, _S.DRAINING}),
    _S.FAILED: frozenset({_S.DRAINING}),
    _S.DRAINING: frozenset({_S.TERMINATING}),
    _S.TERMINATING: frozenset({_S.CLOSED}),
    _S.CLOSED: frozenset(),
}
# The runner still wants the server: a lost stream may be dialled again.
LINKED = frozenset({_S.CONNECTING, _S.WELCOMED, _S.RECONNECTING})
# Between two streams the runner is in one of these, and it waits out its back-off there.
DIALLING = frozenset({_S.CONNECTING, _S.RECONNECTING})
# The shutdown sequence has started: new work is refused.
SHUTTING_DOWN = frozenset({_S.DRAINING, _S.TERMINATING, _S.CLOSED})


class IllegalTransition(RuntimeError):
    """A move the transition table does not allow: a bug in the shim, never a user error."""

    def __init__(self, source: SessionState, target: SessionState) -> None:
        super().__init__(f"illegal session transition {source.name} -> {target.name}")
        self.source = source
        self.target = target


class Lifecycle:
    """Holds a session's state, starting at CONNECTING. Loop-affine: use it from the loop
    thread only. `move_to` is the only way the state changes."""

    def __init__(self) -> None:
        self._state = SessionState.CONNECTING
        self._moved = asyncio.Event()  # set, then replaced, on every move (wakes `leaves`)

    @property
    def state(self) -> SessionState:
        return self._state

    def move_to(self, target: SessionState) -> None:
        """Moves to `target` and wakes the tasks waiting in `leaves`. Raises
        IllegalTransition, leaving the state as it was, when TRANSITIONS does not allow it."""
        if target not in TRANSITIONS[self._state]:
            raise IllegalTransition(self._state, target)
        log.debug("session %s -> %s", self._state.name, target.name)
        self._state = target
        self._moved.set()
        self._moved = asyncio.Event()

    async def leaves(self, states: frozenset[SessionState]) -> None:
        """Returns once the state is outside `states` (at once if it is already). Cancelling
        the wait changes nothing."""
        while self._state in states:
            await self._moved.wait()
