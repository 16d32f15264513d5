"""The runner plane: start, attach, scale, stop.

The fleet applies the autoscaler's decisions through a backend, keeps every runner's
state, and reports through `FleetEvents` (falrt/server/fleet/events.py) when capacity
appears (a runner is ready), vanishes (a runner's stream ended) or cannot start. It never
imports the queue. Its scaling loop never dies: a failure for one app is logged and the
other apps are still scaled.

Tasks: the scaling loop (from `start`), and per runner a start, an exit watch and a reaper;
`close` stops the runners (or leaves them to the next server), then cancels its tasks.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import time
from collections import deque
from pathlib import Path

from falrt import errors
from falrt.autoscaler.policy import ScalingDecision
from falrt.backends.base import Backend, Survivor
from falrt.backends.environments import Environments
from falrt.server.fleet import runner_logs
from falrt.server.fleet.events import FleetEvents
from falrt.server.fleet.launch import Launcher, kill_after
from falrt.server.fleet.leases import AppLease, RunnerSlots, ScalingLeases
from falrt.server.fleet.scaling import ScalingLoop
from falrt.server.fleet.secret_box import SecretBox
from falrt.server.fleet.starts import Starts
from falrt.server.metrics import Metrics
from falrt.server.state.apps import Apps, AppState, EffectiveSettings
from falrt.server.state.runners import (
    ALIVE_STATES,
    SERVING_STATES,
    STARTING_STATES,
    CloseEvent,
    DrainEvent,
    RunnerHandle,
    RunnerState,
)
from falrt.server.tasks import Tasks
from falrt.settings import ServerSettings
from falrt.store.base import Store
from falrt.store.records import Revision

log = logging.getLogger(__name__)
# The scaling loop counts as stuck once a wake has waited this long for its pass.
STALL_S = 10.0


class Fleet:
    """All runners of this server. See the module docstring."""

    def __init__(
        self,
        events: FleetEvents,
        apps: Apps,
        backend: Backend,
        environments: Environments,
        store: Store,
        secret_box: SecretBox,
        settings: ServerSettings,
        tasks: Tasks,
        metrics: Metrics | None = None,
        slots: RunnerSlots | None = None,
    ) -> None:
        self._events = events
        self._metrics = metrics  # None: no metrics (`--no-metrics`)
        self._apps = apps
        self.backend = backend
        self.settings = settings
        self._launcher = Launcher(backend, environments, store, secret_box, settings)
        self._tasks = tasks
        self.runners: dict[str, RunnerHandle] = {}
        # The latest TERMINATED runners, for `falrt runners list --state terminated`.
        self.ended: deque[RunnerHandle] = deque(maxlen=settings.ended_runners_kept)
        # Which apps this server leads, and its runners' slots (a shared store: `slots`).
        self.leases = ScalingLeases(slots)
        self._scaling = ScalingLoop(apps, self.runners, self._apply, self.leases)
        self._starts = Starts(events, apps, self.runners, self._launcher, settings, tasks,
                              end=self._terminated, wake=self._scaling.wake,
                              on_failed=metrics.start_failed if metrics else None,
                              leases=self.leases)
        self._scaler: asyncio.Future[None] | None = None  # the loop, once started
        self._leaving = False  # closing, and leaving the runners for the next server

    # -- queries -----------------------------------------------------------------------

    def runners_of(self, app_name: str) -> list[RunnerHandle]:
        return [r for r in self.runners.values() if r.app_name == app_name]

    def pick_runner(self, app: AppState, avoid: str = "") -> RunnerHandle | None:
        """The live-revision runner with the most free slots, or None. The runner `avoid`
        is taken only when no other has a free slot."""
        if self._leaving:
            return None
        best: RunnerHandle | None = None
        for runner in self.runners.values():
            if runner.app_name != app.name or runner.revision_id != app.revision.revision_id:
                continue
            if runner.free_slots > 0 and (best is None or _better(runner, best, avoid)):
                best = runner
        return best

    # -- scaling ---------------------------------------------------------------------

    def scaling_problem(self, now: float) -> str:
        """Why the scaling loop does not scale ("" when it does): it has not started, it
        ended (the server then stops), or it was woken more than `STALL_S` before `now`
        (monotonic) and has not made a pass since."""
        if self._scaler is None:
            return "the scaling loop has not started"
        if self._scaler.done():
            return "the scaling loop ended"
        stalled = self._scaling.stalled_s(now)
        if stalled > STALL_S:
            return f"the scaling loop has not run for {stalled:.0f} s since it was woken"
        return ""

    def wake(self) -> None:
        """Makes the scaling loop look at every app again, at once."""
        self._scaling.wake()

    def update_leases(self, held: dict[str, AppLease], asked: list[str]) -> None:
        """The apps this server leads now, of those the cluster's renewal of the scaling
        leases asked for; the scaling loop looks at every app again when that changed."""
        if self.leases.update(held, asked):
            self.wake()

    def dispatched(self, app: AppState) -> None:
        """Work of `app` was queued, handed out or finished: wakes the scaling loop when its
        decision for the app may differ from the one it planned around
        (`ScalingLoop.must_look`), or when the fleet is leaving its runners (it waits for
        their work to finish). A request handed to a runner with a free slot, or finishing
        on a runner whose stop is planned already, then costs the loop nothing: at
        concurrency 1 the loop makes no pass per request."""
        if self._leaving or self._scaling.must_look(app):
            self.wake()

    @property
    def address(self) -> str:
        """Where runners dial this server ("" until `open`)."""
        return self._starts.address

    def open(self, address: str, survivors: list[Survivor], host: str = "") -> int:
        """Runners dial `address` from now on (and their app's code calls the server at
        `host`, its gRPC address, if that differs); the runners of this server's previous
        life that still run (`survivors`) are adopted or stopped (see `Starts.adopt`). Call
        it before the server serves, so that no survivor dials in first. Returns how many
        were adopted."""
        self._starts.address, self._launcher.host = address, host
        return self._starts.adopt(survivors)

    async def sweep_runner_keys(
        self, server_id: str, live_servers: set[str] | None = None
    ) -> None:
        """At the start, and on a shared store whenever servers go: revokes the runner keys
        no runner holds any more (`Launcher.sweep_runner_keys`): alone on its store, every
        one but the adopted runners'; on a shared store (`live_servers`, this one among
        them), those of runners started by servers that are gone. New keys name
        `server_id`."""
        self._launcher.server_id = server_id
        revoked = await self._launcher.sweep_runner_keys(
            set(self.runners), live_servers is None, live_servers)
        if revoked:
            log.info("revoked %d keys of runners that ended while their server was down",
                     revoked)

    def start(self) -> None:
        """Starts the scaling loop (the server is serving: runners can dial in)."""
        self._scaler = self._tasks.spawn(self._scaling.run(), name="falrt-scaling",
                                         essential=True)
        self._tasks.spawn(self._remove_old_logs(), name="falrt-runner-logs")

    async def _remove_old_logs(self) -> None:
        """Removes the logs of ended runners past `runner_log_retention_s`, until cancelled;
        every quarter of it (at most every minute, at least every 0.25 s). A failure is
        logged and the next round runs as usual."""
        retention_s = self.settings.runner_log_retention_s
        while True:
            await asyncio.sleep(min(60.0, max(0.25, retention_s / 4)))
            try:
                removed = await asyncio.to_thread(
                    runner_logs.remove_old, self.settings.runner_logs_dir, retention_s,
                    set(self.runners))
            except Exception:
                log.exception("removing old runner logs failed")
                continue
            if removed:
                log.info("removed %d runner logs older than %.0f s", removed, retention_s)

    def _apply(self, app: AppState, decision: ScalingDecision) -> None:
        """Applies the scaling loop's decision to the app's live-revision runners."""
        live = [r for r in self.runners_of(app.name) if r.revision_id == app.revision.revision_id]
        runners = [r for r in live if r.state is not RunnerState.CRASH_BACKOFF]
        backing_off = [r for r in live if r.state is RunnerState.CRASH_BACKOFF]
        machine = self._starts.placeable(app) if decision.start else None
        for _ in range(decision.start if machine else 0):
            # A runner waiting out a crash backoff starts again (CRASH_BACKOFF -> PENDING).
            if backing_off:
                self._starts.begin(app, backing_off.pop(), machine or "")
            else:
                self._starts.start_new(app, machine or "")
        for runner_id in decision.stop:
            self.stop(self.runners[runner_id])
        # Runners in crash backoff stand for wanted capacity; those no longer wanted end.
        wanted = decision.desired - sum(1 for r in runners if r.state in ALIVE_STATES)
        for runner in backing_off[max(0, wanted):]:
            self._terminated(runner)

    async def start_candidate(
        self, app: AppState, revision: Revision, settings: EffectiveSettings
    ) -> tuple[RunnerHandle, str]:
        """A rolling switch: starts a runner of `revision` (not live yet; it takes no work)
        and waits until it is ready. Returns it with "" — or with why it could not start
        (it has ended then). Cancelling the wait stops it."""
        machine = self._starts.placeable(app, settings.machine_types)
        if machine is None:
            raise errors.FailedPreconditionError(
                f"no runner of the new revision can start: {app.last_startup_error}")
        runner = self._starts.new_runner(app, revision)
        assert runner.ready is not None
        self._starts.begin(app, runner, machine, (revision, settings))
        try:
            return runner, await asyncio.shield(runner.ready)
        except asyncio.CancelledError:
            self.stop(runner)
            raise

    def log_path(self, runner_id: str) -> Path:
        return self._launcher.log_path(runner_id)

    # -- the runner link ---------------------------------------------------------------

    def bundle_dir(self, runner_id: str, token: str) -> Path:
        """The bundle folder the runner (its id and its current start's token) runs, for
        RunnerLink.FetchBundle. Raises InvalidArgumentError for strangers and ended runners."""
        runner = self.runners.get(runner_id)
        folder = self._launcher.bundle_dir(runner_id)
        if runner is None or not runner.token or folder is None or not hmac.compare_digest(
                runner.token, token):
            raise errors.InvalidArgumentError("unknown runner or wrong token")
        return folder

    def attach(self, runner_id: str, token: str, slots: int) -> RunnerHandle:
        """A runner said Hello. Raises PermissionDenied-like errors for strangers."""
        runner = self.runners.get(runner_id)
        if runner is None or not hmac.compare_digest(runner.token, token):
            raise errors.InvalidArgumentError("unknown runner or wrong token")
        if runner.attached:
            raise errors.InvalidArgumentError(f"runner {runner_id} is already attached")
        if runner.state not in STARTING_STATES:
            raise errors.InvalidArgumentError(f"runner {runner_id} is being stopped")
        runner.attached = True
        if self._metrics is not None:
            self._metrics.runner_ready(runner)
        runner.max_multiplexing = max(1, min(slots, runner.max_multiplexing))
        runner.set_state(RunnerState.IDLE)
        runner.idle_since = time.monotonic()
        runner.last_error = ""
        if runner.ready is not None and not runner.ready.done():
            runner.ready.set_result("")
        replaced = self.runners.get(runner.replaces)
        if replaced is not None:  # `falrt runners stop --replace`: the old one drains now
            self.stop(replaced)
        app = self._apps.get(runner.app_name)
        if app is not None and app.revision.revision_id == runner.revision_id:
            # Any runner that starts ends the backoff (fal); waiting ones start at once.
            app.runner_started()
            self.wake()
        if app is not None:
            self._events.on_runner_ready(app)
        return runner

    def detached(self, runner: RunnerHandle) -> None:
        """The runner's stream ended: fail over its work and make sure it exits (unless the
        server leaves it to the next server)."""
        if self._leaving:
            runner.attached = False
            self._events.on_runner_lost(runner)
            return
        if runner.state is not RunnerState.TERMINATED:
            runner.set_state(RunnerState.TERMINATING)
        self._events.on_runner_lost(runner)
        if runner.process is not None and runner.process.exit_code is None:
            self._tasks.spawn(self._reap(runner, grace_s=self._grace(runner)))
        self.wake()

    def runner_draining(self, runner: RunnerHandle) -> None:
        """The runner says it stopped taking work: on its own (it got SIGTERM) when it was
        serving; a runner the server is stopping already says so in answer to its Drain."""
        if runner.state in SERVING_STATES:
            runner.set_state(RunnerState.DRAINING)
            self.wake()

    # -- stopping ----------------------------------------------------------------------

    def stop(self, runner: RunnerHandle) -> None:
        """Gracefully stops a runner: no new work, in-flight finish, then it exits."""
        if runner.state in (RunnerState.DRAINING, RunnerState.TERMINATING,
                            RunnerState.TERMINATED):
            return
        runner.stop_requested = True
        if runner.state is RunnerState.CRASH_BACKOFF:  # no process: it just ends
            self._terminated(runner)
            return
        runner.set_state(RunnerState.DRAINING if runner.in_flight else RunnerState.TERMINATING)
        if runner.attached:
            runner.outbox.put_nowait(DrainEvent())
        elif runner.process is not None:
            runner.process.terminate()
        # fal: killed when the grace period has passed since the stop, even mid-teardown
        # (0.5 s more for the messages in transit).
        self._tasks.spawn(self._reap(runner, grace_s=self._grace(runner) + 0.5))

    def replace(self, runner: RunnerHandle) -> RunnerHandle:
        """`falrt runners stop --replace`: starts a runner of the app's live revision (on
        top of max_concurrency, as fal's rollouts); `runner` drains once it is ready. If
        the replacement cannot start, `runner` keeps serving."""
        app = self._apps.get(runner.app_name)
        if app is None:
            raise errors.NotFoundError(f"app {runner.app_name!r} is gone")
        machine = self._starts.placeable(app)
        if machine is None:
            raise errors.FailedPreconditionError(
                f"no replacement can start: {app.last_startup_error}")
        replacement = self._starts.new_runner(app)
        replacement.replaces = runner.runner_id
        self._starts.begin(app, replacement, machine)
        return replacement

    def kill(self, runner: RunnerHandle) -> None:
        """Stops a runner now: its stream is closed and its process killed."""
        if runner.state is RunnerState.TERMINATED:
            return
        runner.stop_requested = True
        if runner.state is RunnerState.CRASH_BACKOFF:
            self._terminated(runner)
            return
        runner.set_state(RunnerState.TERMINATING)
        runner.outbox.put_nowait(CloseEvent())
        if runner.process is not None:
            runner.process.kill()

    def stop_app(self, app_name: str) -> None:
        """Kills every runner of a deleted app (those waiting out a backoff just end)."""
        for runner in self.runners_of(app_name):
            runner.stop_requested = True
            if runner.state is RunnerState.CRASH_BACKOFF:
                self._terminated(runner)
                continue
            runner.outbox.put_nowait(CloseEvent())
            if runner.process is not None:
                runner.process.kill()

    def retire_old_revisions(self, app: AppState) -> None:
        for runner in self.runners_of(app.name):
            if runner.revision_id != app.revision.revision_id:
                self.stop(runner)

    async def _reap(self, runner: RunnerHandle, *, grace_s: float) -> None:
        """Kills the runner if it has not exited `grace_s` after being asked to stop."""
        if runner.process is not None:
            await kill_after(runner.process, grace_s, runner.runner_id)

    def _terminated(self, runner: RunnerHandle) -> None:
        if runner.ready is not None and not runner.ready.done():
            runner.ready.set_result(runner.last_error or "it ended before it was ready")
        if runner.state is not RunnerState.TERMINATED:
            self.ended.append(runner)
        runner.set_state(RunnerState.TERMINATED)
        self.runners.pop(runner.runner_id, None)
        self._tasks.spawn(self._launcher.revoke_runner_key(runner.runner_id))  # dies with it
        if self.leases.shared:
            self._tasks.spawn(self._free_slot(runner.runner_id))
        if runner.in_flight:
            self._events.on_runner_lost(runner)
        self.wake()

    async def _free_slot(self, runner_id: str) -> None:
        """Gives back an ended runner's slot; a failure is logged (the cluster's next
        renewal frees the slots of runners this server no longer has)."""
        try:
            await self.leases.free_slot(runner_id)
        except Exception:
            log.exception("giving back the runner slot of %s failed", runner_id)

    def _grace(self, runner: RunnerHandle) -> float:
        app = self._apps.get(runner.app_name)
        return app.settings.grace_period_s if app else self.settings.shutdown_grace_s

    async def close(self) -> None:
        """In order: stops scaling; stops every runner (gracefully, then by force) and waits
        for them to exit, or, when the backend's runners outlive the server, leaves them to
        the next one; cancels the fleet's tasks; closes the backend."""
        self._starts.stop()
        if self._scaler is not None:
            self._tasks.stop(self._scaler)
        if self.backend.keeps_runners:
            await self._leave_runners()
        else:
            await self._stop_all()
        await self._tasks.close()
        if not self.backend.keeps_runners:  # (those left running keep theirs)
            await self._launcher.revoke_runner_keys()
        await self.backend.close()

    async def _leave_runners(self) -> None:
        """No new work goes out; in-flight requests get shutdown_grace to finish; then the
        runners' streams are closed: they dial the next server, which adopts them. What is
        still in flight then is retried by the next server (one attempt used)."""
        self._leaving = True
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.settings.shutdown_grace_s
        while any(r.in_flight for r in self.runners.values()):
            left = deadline - loop.time()
            if left <= 0:
                break
            await self._scaling.next_wake(left)  # a runner left with no work wakes the fleet
        for runner in self.runners.values():
            runner.outbox.put_nowait(CloseEvent())
        log.info("left %d runners running for the next server to adopt",
                 sum(1 for r in self.runners.values() if r.process is not None))

    async def _stop_all(self) -> None:
        for runner in list(self.runners.values()):
            self.stop(runner)
        waits = [self._tasks.spawn(r.process.wait()) for r in self.runners.values()
                 if r.process is not None]
        if waits:
            await asyncio.wait(waits, timeout=self.settings.shutdown_grace_s + 6.0)
        for runner in self.runners.values():
            if runner.process is not None:
                runner.process.kill()


def _better(runner: RunnerHandle, best: RunnerHandle, avoid: str) -> bool:
    if (runner.runner_id == avoid) != (best.runner_id == avoid):
        return best.runner_id == avoid
    return runner.free_slots > best.free_slots


__all__ = ["Fleet"]
