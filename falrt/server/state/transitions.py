"""Transition tables: which state may follow which, for every state machine of the server.

A table is data: the docs render it (`markdown`, checked by tests/test_transitions.py
against docs/runners.md and docs/requests.md), and the one method of each machine that
changes its state calls `check` first. A change the table does not allow raises
`IllegalTransition` (a bug in falrt, never a caller's fault): tests crash on it, and the
server logs it where the change was attempted.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable, Mapping
from typing import Generic, TypeVar

S = TypeVar("S", bound=enum.Enum)


class IllegalTransition(RuntimeError):
    """A state change outside its machine's transition table was attempted."""


class TransitionTable(Generic[S]):
    """The allowed transitions of one state machine. Staying in a state is not a transition
    and is always allowed."""

    def __init__(self, machine: str, allowed: Mapping[S, Iterable[S]]) -> None:
        self.machine = machine
        self._allowed = {state: frozenset(targets) for state, targets in allowed.items()}

    def allows(self, old: S, new: S) -> bool:
        return old is new or new in self._allowed.get(old, frozenset())

    def check(self, old: S, new: S) -> None:
        """Raises IllegalTransition unless `old` may become `new`."""
        if not self.allows(old, new):
            raise IllegalTransition(
                f"{self.machine}: {old.name} -> {new.name} is not in its transition table "
                f"({old.name} may become {self._names(old) or 'nothing'})")

    def targets(self, state: S) -> frozenset[S]:
        return self._allowed.get(state, frozenset())

    def markdown(self) -> str:
        """The table as the docs show it: one row per state, its successors in order."""
        rows = ["| from | may become |", "|---|---|"]
        for state in self._allowed:
            rows.append(f"| `{state.name}` | {self._names(state, code=True) or '(final)'} |")
        return "\n".join(rows)

    def _names(self, state: S, *, code: bool = False) -> str:
        ordered = sorted(self.targets(state), key=lambda s: list(self._allowed).index(s))
        return ", ".join(f"`{s.name}`" if code else s.name for s in ordered)


__all__ = ["IllegalTransition", "TransitionTable"]
