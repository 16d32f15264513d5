"""The fleet in-process, with a recording implementation of its event interface: runners of
the inprocess backend played by the test (tests/inprocess.py). Milliseconds per test."""

from __future__ import annotations

from pathlib import Path

import pytest

from falrt.server.fleet.events import RunnerLost, RunnerReady, StartupFailure
from falrt.server.state.runners import DrainEvent, RunnerState
from falrt.server.state.transitions import IllegalTransition
from falrt.server.state.work import DirectCall
from falrt.store.records import Priority
from tests.inprocess import fleet_lab, run, until

pytestmark = pytest.mark.unit
S = RunnerState


def test_a_runner_that_starts_serves_then_stops_when_idle_goes_through_fals_states(
    tmp_path: Path,
) -> None:
    async def scenario() -> None:
        async with fleet_lab(tmp_path) as lab:
            app = lab.add_app("echo", min_concurrency=1)
            started, runner = await lab.runner("echo")
            assert lab.events.events == [RunnerReady("echo")]
            item = DirectCall(request_id="r1", app_name="echo", path="/", input=b"{}",
                              content_type="application/json", priority=Priority.NORMAL, seq=1)
            assert lab.fleet.pick_runner(app) is runner
            runner.assign(item)
            assert (await runner.outbox.get()).item is item  # type: ignore[union-attr]
            runner.release("r1")
            lab.fleet.stop(runner)
            assert await runner.outbox.get() == DrainEvent()
            lab.fleet.runner_draining(runner)  # the shim answers the Drain: no state of its own
            lab.fleet.detached(runner)
            started.exit(0)
            await until(lambda: runner.state is S.TERMINATED)
            states = [state for state, _ in runner.history()]
            assert states == [S.PENDING, S.SETUP, S.IDLE, S.RUNNING, S.IDLE, S.TERMINATING,
                              S.TERMINATED]

    run(scenario)


def test_a_runner_that_exits_while_starting_waits_in_crash_backoff_and_says_why(
    tmp_path: Path,
) -> None:
    async def scenario() -> None:
        async with fleet_lab(tmp_path) as lab:
            app = lab.add_app("bad", min_concurrency=1)
            started = await lab.backend.next_start("bad")
            runner = lab.fleet.runners[started.spec.runner_id]
            started.exit(1)
            await until(lambda: runner.state is S.CRASH_BACKOFF)
            assert app.startup_failures == 1 and app.backoff_until > 0
            assert lab.events.events == [StartupFailure("bad", app.waiting_reason())]
            assert "exit status 1" in app.last_startup_error
            assert "fail to start" in app.waiting_reason()

    run(scenario)


def test_a_runner_lost_with_work_in_flight_is_reported_with_that_work(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with fleet_lab(tmp_path) as lab:
            lab.add_app("echo", min_concurrency=1)
            _, runner = await lab.runner("echo", slots=2)
            for n in (1, 2):
                runner.assign(DirectCall(
                    request_id=f"r{n}", app_name="echo", path="/", input=b"{}",
                    content_type="application/json", priority=Priority.NORMAL, seq=n))
            lab.fleet.detached(runner)
            assert lab.events.events[-1] == RunnerLost(runner.runner_id, ("r1", "r2"))
            assert runner.state is S.TERMINATING

    run(scenario)


def test_a_runner_sigtermed_from_outside_drains(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with fleet_lab(tmp_path) as lab:
            lab.add_app("echo", min_concurrency=1)
            _, runner = await lab.runner("echo")
            lab.fleet.runner_draining(runner)
            assert runner.state is S.DRAINING
            assert lab.fleet.pick_runner(lab.apps.get("echo")) is None  # type: ignore[arg-type]

    run(scenario)


def test_a_runner_refuses_a_state_change_outside_its_table(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with fleet_lab(tmp_path) as lab:
            lab.add_app("echo", min_concurrency=1)
            _, runner = await lab.runner("echo")
            with pytest.raises(IllegalTransition, match="IDLE -> SETUP"):
                runner.set_state(S.SETUP)
            assert runner.state is S.IDLE

    run(scenario)


def test_a_stranger_cannot_attach_and_a_runner_cannot_attach_twice(tmp_path: Path) -> None:
    async def scenario() -> None:
        from falrt import errors

        async with fleet_lab(tmp_path) as lab:
            lab.add_app("echo", min_concurrency=1)
            started, runner = await lab.runner("echo")
            with pytest.raises(errors.InvalidArgumentError, match="already attached"):
                lab.fleet.attach(started.spec.runner_id, started.spec.token, 1)
            with pytest.raises(errors.InvalidArgumentError, match="wrong token"):
                lab.fleet.attach(started.spec.runner_id, "not-the-token", 1)
            assert runner.state is S.IDLE

    run(scenario)
