"""When the fleet scales: the loop that asks the autoscaler for a decision per app.

`ScalingLoop` decides; the fleet applies each decision (`apply`, given at construction).
The loop wakes on events (`wake`, `dispatched`) or when a decision asked to be checked
again, and never dies: a failure for one app is logged and that app is tried again in 1 s.
On a shared store it leads only the apps whose scaling lease this server holds
(`ScalingLeases`); for the others it starts runners for its own direct calls only.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Callable, Mapping

from falrt.autoscaler.policy import (
    RunnerView,
    ScalingContext,
    ScalingDecision,
    decide,
    desired_count,
    follower_settings,
    idle_limit,
)
from falrt.server.fleet.leases import ScalingLeases
from falrt.server.state.apps import Apps, AppState
from falrt.server.state.runners import ALIVE_STATES, RunnerHandle, RunnerState

log = logging.getLogger(__name__)

# Applies a decision for an app to its live revision's runners (Fleet.apply).
Apply = Callable[[AppState, ScalingDecision], None]


class ScalingLoop:
    """Decides, for every app, how many runners it needs. Loop-affine."""

    def __init__(
        self, apps: Apps, runners: Mapping[str, RunnerHandle], apply: Apply,
        leases: ScalingLeases | None = None,
    ) -> None:
        self._apps = apps
        self._runners = runners
        self._apply = apply
        self._leases = leases or ScalingLeases(None)
        # Wakes: a flag for wakes while a pass runs, a future while it waits; and the time
        # (monotonic) each app's last decision asked to be checked again.
        self._woken = False
        self._waiter: asyncio.Future[None] | None = None
        self._planned: dict[str, float] = {}
        # Since when (monotonic) a wake waits for the next pass (None: none waits).
        self._woken_at: float | None = None

    def wake(self) -> None:
        """Makes the loop look at every app again, at once."""
        self._woken = True
        if self._woken_at is None:
            self._woken_at = time.monotonic()
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def must_look(self, app: AppState) -> bool:
        """Whether the decision for `app` may differ from the one the loop planned around:
        - more runners may be wanted than are alive (a start), or
        - a runner is idle whose idle limit ends before the check the loop planned for the
          app (a stop it would owe before then; the desired count may have fallen), or
        - a runner waits in crash backoff (it ends as soon as it is no longer wanted), or
        - another server waits for one of the runner slots of an app this server leads, or
        - its own direct calls need more runners here than it has (they run only here).
        A server that does not lead the app counts only its waiting direct calls."""
        name, revision_id = app.name, app.revision.revision_id
        lease = self._leases.lease(name)
        if lease.remote_waiting:
            return True
        leads = self._leases.leads(name)
        scaling = app.settings.scaling if leads else follower_settings(app.settings.scaling)
        waiting = len(app.queue) if leads else app.queue.direct
        planned = self._planned.get(name)
        alive, active = self._leases.starting(name), 0
        for runner in self._runners.values():
            if runner.app_name != name or runner.revision_id != revision_id:
                continue
            if runner.state is RunnerState.CRASH_BACKOFF:
                return True
            if runner.state not in ALIVE_STATES:
                continue
            alive += 1
            active += len(runner.in_flight)
            if runner.state is RunnerState.IDLE and not runner.in_flight and (
                    planned is None
                    or runner.idle_since + idle_limit(scaling, runner.served) < planned):
                return True
        if not leads:
            active = 0  # (a follower's in-flight work is the lead's to scale for)
        return (alive + lease.remote_alive < desired_count(scaling, active + waiting)
                or alive < math.ceil(app.queue.direct / max(1, scaling.max_multiplexing)))

    async def run(self) -> None:
        """Scales every app until cancelled; wakes on events or when a deadline passes."""
        while True:
            next_check: float | None = None
            now = time.monotonic()
            self._woken_at = None  # this pass sees every wake so far
            for app in self._apps:
                try:
                    decision = self._decide(app)
                    self._apply(app, decision)
                except Exception:
                    log.exception("scaling app %s failed; trying again in 1 s", app.name)
                    decision = ScalingDecision(0, next_check_s=1.0)
                if decision.next_check_s is None:
                    self._planned.pop(app.name, None)
                    continue
                self._planned[app.name] = now + decision.next_check_s
                if next_check is None or decision.next_check_s < next_check:
                    next_check = decision.next_check_s
            self._woken = False  # what woke this pass has been seen
            await self._wait(next_check)

    def stalled_s(self, now: float) -> float:
        """How long before `now` (monotonic) a wake began waiting for a pass that has not
        come (0.0 when none waits): the loop is stuck when this grows."""
        return 0.0 if self._woken_at is None else max(0.0, now - self._woken_at)

    async def next_wake(self, timeout_s: float) -> None:
        """Until the next `wake()` from now, or `timeout_s` (the fleet waits so while it
        leaves its runners, with the loop stopped)."""
        self._woken = False
        await self._wait(timeout_s)

    async def _wait(self, timeout_s: float | None) -> None:
        """Until `wake()` (since the last pass) or `timeout_s` seconds (None: no limit)."""
        if self._woken:
            return
        loop = asyncio.get_running_loop()
        self._waiter = waiter = loop.create_future()
        timer = None if timeout_s is None else loop.call_later(timeout_s, _settle, waiter)
        try:
            await waiter
        finally:
            if self._waiter is waiter:  # (the loop, cancelled at close, ends later)
                self._waiter = None
            if timer is not None:
                timer.cancel()

    def _decide(self, app: AppState) -> ScalingDecision:
        now = time.monotonic()
        runners = [r for r in self._runners.values() if r.app_name == app.name
                   and r.revision_id == app.revision.revision_id
                   and r.state is not RunnerState.CRASH_BACKOFF]
        leads = self._leases.leads(app.name)
        lease = self._leases.lease(app.name)
        ready, next_ready_s = _queued_ready(app, now) if leads else (app.queue.direct, None)
        decision = decide(ScalingContext(
            settings=app.settings.scaling,
            now=now,
            queued_ready=ready,
            runners=(*(_view(r) for r in runners), *_starting(self._leases.starting(app.name))),
            backoff_until=app.backoff_until,
            next_ready_s=next_ready_s,
            lead=leads,
            remote_alive=lease.remote_alive,
            remote_waiting=lease.remote_waiting,
            direct_waiting=app.queue.direct,
        ))
        if decision.start or decision.stop:
            log.info("scale %s: desired=%d start=%d stop=%s%s", app.name, decision.desired,
                     decision.start, list(decision.stop),
                     "" if leads else " (its direct calls: another server leads it)")
        return decision


def _settle(waiter: asyncio.Future[None]) -> None:
    if not waiter.done():
        waiter.set_result(None)


def _queued_ready(app: AppState, now: float) -> tuple[int, float | None]:
    """Queued requests that waited scaling_delay, and the time until the next one has."""
    delay = app.settings.scaling.scaling_delay_s
    if delay <= 0:
        return len(app.queue), None
    cutoff = now - delay
    times = [item.enqueued_at for item in app.queue.items()]
    young = [t for t in times if t > cutoff]
    return len(times) - len(young), (min(young) - cutoff if young else None)


def _starting(count: int) -> list[RunnerView]:
    """Starts waiting for their runner slot, seen as starting runners."""
    return [RunnerView(f"(starting {n})", alive=True, in_flight=0, idle_since=None, served=0)
            for n in range(count)]


def _view(runner: RunnerHandle) -> RunnerView:
    idle = runner.state is RunnerState.IDLE and not runner.in_flight
    return RunnerView(
        runner_id=runner.runner_id,
        alive=runner.state in ALIVE_STATES,
        in_flight=len(runner.in_flight),
        idle_since=runner.idle_since if idle else None,
        served=runner.served,
    )


__all__ = ["ScalingLoop"]
