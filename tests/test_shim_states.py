"""The runner session's state machine (shim/lifecycle.py): its table, checked against the
docstring that states it, every allowed move accepted and every other one refused."""

from __future__ import annotations

import asyncio
import re
from collections import deque

import pytest

from shim import lifecycle
from shim.lifecycle import TRANSITIONS, IllegalTransition, Lifecycle, SessionState

pytestmark = pytest.mark.unit

ALLOWED = [(source, target) for source, targets in TRANSITIONS.items() for target in targets]
FORBIDDEN = [
    (source, target)
    for source in SessionState
    for target in SessionState
    if target not in TRANSITIONS[source]
]


def paths_from(origin: SessionState) -> dict[SessionState, list[SessionState]]:
    """Every state reachable from `origin`, with the shortest list of allowed moves to it."""
    paths = {origin: list[SessionState]()}
    queue = deque([origin])
    while queue:
        source = queue.popleft()
        for target in sorted(TRANSITIONS[source], key=lambda s: s.name):
            if target not in paths:
                paths[target] = [*paths[source], target]
                queue.append(target)
    return paths


def brought_to(state: SessionState) -> Lifecycle:
    machine = Lifecycle()
    for step in paths_from(SessionState.CONNECTING)[state]:
        machine.move_to(step)
    assert machine.state is state
    return machine


def test_the_table_is_the_one_the_module_docstring_describes() -> None:
    doc = lifecycle.__doc__
    assert doc is not None
    described = {
        SessionState[source]: frozenset(SessionState[t] for t in re.findall(r"[A-Z]+", targets))
        for source, targets in re.findall(r"^ {4}([A-Z]+) +->(.*)$", doc, re.MULTILINE)
    }
    assert described == TRANSITIONS
    assert set(TRANSITIONS) == set(SessionState)  # every state has its row
    for state in SessionState:
        assert f"- {state.name}:" in doc  # and its meaning


def test_a_session_starts_connecting_and_reaches_every_state() -> None:
    assert Lifecycle().state is SessionState.CONNECTING
    for state in SessionState:
        brought_to(state)


def test_only_closed_is_final() -> None:
    assert [s for s in SessionState if not TRANSITIONS[s]] == [SessionState.CLOSED]


@pytest.mark.parametrize(("source", "target"), ALLOWED, ids=lambda s: s.name)
def test_every_allowed_transition_is_accepted(source: SessionState, target: SessionState) -> None:
    machine = brought_to(source)
    machine.move_to(target)
    assert machine.state is target


@pytest.mark.parametrize(("source", "target"), FORBIDDEN, ids=lambda s: s.name)
def test_a_transition_outside_the_table_raises_and_changes_nothing(
    source: SessionState, target: SessionState
) -> None:
    machine = brought_to(source)
    with pytest.raises(IllegalTransition) as raised:
        machine.move_to(target)
    assert (raised.value.source, raised.value.target) == (source, target)
    assert isinstance(raised.value, RuntimeError)
    assert machine.state is source


def test_the_groups_of_states_follow_the_table() -> None:
    # LINKED: the states a failure may leave for FAILED; DIALLING: those a Welcome ends;
    # SHUTTING_DOWN: DRAINING and every state reachable from it (there is no way back).
    assert {s for s in SessionState if SessionState.FAILED in TRANSITIONS[s]} == lifecycle.LINKED
    assert {s for s in SessionState if SessionState.WELCOMED in TRANSITIONS[s]} == (
        lifecycle.DIALLING)
    assert set(paths_from(SessionState.DRAINING)) == lifecycle.SHUTTING_DOWN


def test_a_task_waiting_for_the_state_to_leave_a_group_wakes_when_it_does() -> None:
    async def main() -> None:
        machine = Lifecycle()
        waiter = asyncio.ensure_future(machine.leaves(lifecycle.DIALLING))
        machine.move_to(SessionState.WELCOMED)
        machine.move_to(SessionState.RECONNECTING)
        await asyncio.sleep(0)  # one loop step: the waiter starts and waits
        assert not waiter.done()  # RECONNECTING is still dialling
        machine.move_to(SessionState.DRAINING)
        await asyncio.wait_for(waiter, 5)
        await asyncio.wait_for(machine.leaves(lifecycle.DIALLING), 5)  # at once now

    asyncio.run(main())
