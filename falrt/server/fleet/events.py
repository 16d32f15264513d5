"""What the fleet reports about runners, through an interface it owns.

The fleet never imports the queue: whoever hands out work (the scheduler) implements
`FleetEvents` and is given to the fleet when it is built. Every call is made on the server's
event loop, synchronously, while the fleet's state is already updated: the receiver may call
back into the fleet (pick a runner, stop one) from inside it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from falrt.server.state.apps import AppState
from falrt.server.state.runners import RunnerHandle


class FleetEvents(Protocol):
    """What happens to runners, as the work side needs to know it."""

    def on_runner_ready(self, app: AppState) -> None:
        """A runner of `app` is ready for work (it said Hello): queued work may go out."""

    def on_runner_lost(self, runner: RunnerHandle) -> None:
        """The runner's stream ended or it ended: its work in flight must be failed over
        (`runner.in_flight` still holds it)."""

    def on_startup_failure(self, app: AppState) -> None:
        """Runners of `app` cannot start for now (`app.waiting_reason()` says why)."""


@dataclass(frozen=True)
class RunnerReady:
    app_name: str


@dataclass(frozen=True)
class RunnerLost:
    runner_id: str
    in_flight: tuple[str, ...]


@dataclass(frozen=True)
class StartupFailure:
    app_name: str
    reason: str


FleetEvent = RunnerReady | RunnerLost | StartupFailure


class RecordingFleetEvents:
    """A `FleetEvents` that keeps every event in order (`events`), for in-process use of a
    fleet without a queue, as the unit tests do. A lost runner's work is dropped from it,
    as a scheduler that failed it over would."""

    def __init__(self) -> None:
        self.events: list[FleetEvent] = []

    def on_runner_ready(self, app: AppState) -> None:
        self.events.append(RunnerReady(app.name))

    def on_runner_lost(self, runner: RunnerHandle) -> None:
        self.events.append(RunnerLost(runner.runner_id, tuple(runner.in_flight)))
        runner.in_flight.clear()

    def on_startup_failure(self, app: AppState) -> None:
        self.events.append(StartupFailure(app.name, app.waiting_reason()))


__all__ = ["FleetEvent", "FleetEvents", "RecordingFleetEvents", "RunnerLost", "RunnerReady",
           "StartupFailure"]
