"""The transition tables of runner states and request statuses: what they allow, that a
change outside them raises, and that the docs show exactly these tables."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from falrt.server.state.runners import RUNNER_TRANSITIONS, RunnerHandle, RunnerState
from falrt.server.state.transitions import IllegalTransition, TransitionTable
from falrt.server.state.work import REQUEST_TRANSITIONS, QueuedRequest
from falrt.store.records import Priority, Status

pytestmark = pytest.mark.unit
DOCS = Path(__file__).resolve().parent.parent / "docs"
R = RunnerState
TABLES: list[tuple[TransitionTable[R] | TransitionTable[Status], type, str]] = [
    (RUNNER_TRANSITIONS, RunnerState, "runners.md"),
    (REQUEST_TRANSITIONS, Status, "requests.md"),
]


def runner(state: RunnerState = R.PENDING) -> RunnerHandle:
    return RunnerHandle(runner_id="r-1", app_name="a", revision_id="rev", token="t",
                        max_multiplexing=1, machine_type="S", state=state)


def request(status: Status) -> QueuedRequest:
    return QueuedRequest(request_id="q-1", app_name="a", path="/", input=b"{}",
                         content_type="application/json", priority=Priority.NORMAL, seq=1,
                         status=status)


@pytest.mark.parametrize(("old", "new", "allowed"), [
    (R.PENDING, R.SETUP, True),
    (R.PENDING, R.IMAGE_PULL, True),
    (R.SETUP, R.IDLE, True),
    (R.SETUP, R.CRASH_BACKOFF, True),
    (R.CRASH_BACKOFF, R.PENDING, True),
    (R.IDLE, R.RUNNING, True),
    (R.RUNNING, R.IDLE, True),
    (R.IDLE, R.TERMINATING, True),  # an idle stop: no DRAINING in between
    (R.RUNNING, R.DRAINING, True),
    (R.DRAINING, R.TERMINATING, True),
    (R.TERMINATING, R.TERMINATED, True),
    (R.CRASH_BACKOFF, R.TERMINATED, True),
    (R.TERMINATING, R.DRAINING, False),  # what an idle stop once recorded
    (R.IDLE, R.SETUP, False),
    (R.DRAINING, R.RUNNING, False),
    (R.DRAINING, R.IDLE, False),
    (R.TERMINATED, R.PENDING, False),
    (R.CRASH_BACKOFF, R.IDLE, False),
    (R.SETUP, R.DRAINING, False),
])
def test_runner_states_change_only_as_the_table_allows(
    old: RunnerState, new: RunnerState, allowed: bool
) -> None:
    handle = runner(old)
    if allowed:
        handle.set_state(new)
        assert handle.state is new and handle.history()[-1][0] is new
    else:
        with pytest.raises(IllegalTransition, match=f"{old.name} -> {new.name}"):
            handle.set_state(new)
        assert handle.state is old and len(handle.history()) == 1


def test_every_runner_state_can_end_and_terminated_is_final() -> None:
    for state in RunnerState:
        assert RUNNER_TRANSITIONS.allows(state, R.TERMINATED)
    assert RUNNER_TRANSITIONS.targets(R.TERMINATED) == frozenset()


@pytest.mark.parametrize(("old", "new", "allowed"), [
    (Status.IN_QUEUE, Status.IN_PROGRESS, True),
    (Status.IN_PROGRESS, Status.IN_QUEUE, True),  # a retry
    (Status.IN_PROGRESS, Status.COMPLETED, True),
    (Status.IN_QUEUE, Status.COMPLETED, True),  # cancelled, flushed, past its deadline
    (Status.IN_QUEUE, Status.IN_QUEUE, True),  # staying is no transition
    (Status.COMPLETED, Status.IN_QUEUE, False),
    (Status.COMPLETED, Status.IN_PROGRESS, False),
])
def test_request_statuses_change_only_as_the_table_allows(
    old: Status, new: Status, allowed: bool
) -> None:
    item = request(old)
    if allowed:
        item.set_status(new)
        assert item.status is new
    else:
        with pytest.raises(IllegalTransition, match=f"{old.name} -> {new.name}"):
            item.set_status(new)
        assert item.status is old


@pytest.mark.parametrize(("table", "states", "doc"), TABLES)
def test_the_docs_show_each_transition_table_as_it_is(
    table: TransitionTable[R] | TransitionTable[Status], states: type, doc: str
) -> None:
    text = (DOCS / doc).read_text()
    shown = re.search(r"<!-- transitions -->\n(.*?)\n<!-- /transitions -->", text, re.DOTALL)
    assert shown is not None, f"docs/{doc} has no <!-- transitions --> block"
    assert shown.group(1) == table.markdown(), (
        f"docs/{doc} shows another table than the code's; paste this:\n{table.markdown()}")
    assert [s.name for s in states] == [row.split("`")[1] for row in table.markdown()
                                        .splitlines()[2:]]
