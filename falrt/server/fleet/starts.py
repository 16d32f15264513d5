"""Bringing runners up: from a decision (or a rolling deploy, or a replacement) to a runner
that said Hello, or to a failed start that waits in CRASH_BACKOFF.

`Starts` is the fleet's: it shares the fleet's runner table, ends runners through the
fleet (`end`), and reports failed starts through `FleetEvents`. Each start is one task
(spawned in the fleet's `Tasks`) that prepares the spec, starts the runner on the backend,
arms the startup deadline and watches for the runner's exit until it ends. On a shared
store a new runner exists only once it holds one of the app's runner slots (`start_new`).
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import time
from collections.abc import Callable

from falrt import errors
from falrt.backends.base import Survivor
from falrt.gpus import NoCapacityError
from falrt.server.fleet.events import FleetEvents
from falrt.server.fleet.launch import Launcher, kill_after, not_adoptable
from falrt.server.fleet.leases import ScalingLeases
from falrt.server.state.apps import Apps, AppState, EffectiveSettings
from falrt.server.state.runners import STARTING_STATES, RunnerHandle, RunnerState
from falrt.server.tasks import Tasks
from falrt.settings import ServerSettings
from falrt.store.records import Revision

log = logging.getLogger(__name__)


class Starts:
    """Starts of the fleet's runners. Loop-affine."""

    def __init__(
        self, events: FleetEvents, apps: Apps, runners: dict[str, RunnerHandle],
        launcher: Launcher, settings: ServerSettings, tasks: Tasks,
        end: Callable[[RunnerHandle], None], wake: Callable[[], None],
        on_failed: Callable[[str], None] | None = None,
        leases: ScalingLeases | None = None,
    ) -> None:
        self._leases = leases or ScalingLeases(None)
        self._events = events
        self._apps = apps
        self._runners = runners
        self._launcher = launcher
        self._settings = settings
        self._tasks = tasks
        self._end = end
        self._wake = wake
        self._on_failed = on_failed  # told the app's name at each failed start (metrics)
        self.address = ""  # where runners dial: known once the server is bound
        self._stopped = False  # the server stops: exits are no failed starts
        self._refused: set[str] = set()  # apps whose last slot request was refused (logged once)

    def stop(self) -> None:
        """From now on a runner that exits while starting ends (no crash backoff)."""
        self._stopped = True

    def placeable(self, app: AppState, machine_types: tuple[str, ...] = ()) -> str | None:
        """The first of the app's machine types the backend can start a runner of now;
        None (and the app waits no_capacity_wait, its callers told why) when none."""
        reasons = []
        for machine in machine_types or app.settings.machine_types:
            share = app.settings.gpu_share(app.name)
            reason = self._launcher.capacity(machine, app.settings.num_gpus, share)
            if not reason:
                return machine
            reasons.append(reason)
        self._no_capacity(app, "; ".join(reasons))
        return None

    def _no_capacity(self, app: AppState, reason: str) -> None:
        """Nothing of the app starts for no_capacity_wait; its callers are told why."""
        app.wait_before_starting(reason, self._settings.no_capacity_wait_s)
        log.warning("no runner of %s can start: %s", app.name, reason)
        self._events.on_startup_failure(app)
        self._wake()

    def new_runner(
        self, app: AppState, revision: Revision | None = None, runner_id: str = "",
    ) -> RunnerHandle:
        runner = RunnerHandle(
            runner_id=runner_id or new_runner_id(),
            app_name=app.name,
            revision_id=(revision or app.revision).revision_id,
            token="",
            max_multiplexing=app.settings.scaling.max_multiplexing,
            machine_type="",
        )
        runner.ready = asyncio.get_running_loop().create_future()
        self._runners[runner.runner_id] = runner
        return runner

    def begin(
        self, app: AppState, runner: RunnerHandle, machine: str,
        target: tuple[Revision, EffectiveSettings] | None = None,
    ) -> None:
        """Starts `runner` (new, or waiting out a crash backoff) of the app's live revision,
        or of `target` (a rolling deploy's revision, not live yet)."""
        self._tasks.spawn(self._begin(app, runner, machine, target))

    async def _begin(
        self, app: AppState, runner: RunnerHandle, machine: str,
        target: tuple[Revision, EffectiveSettings] | None,
    ) -> None:
        if runner.state is RunnerState.TERMINATED:  # it ended before its start began
            return
        if target is not None or runner.replaces:
            # A rolling deploy's candidate and a replacement run on top of max_concurrency
            # (fal): they hold a slot all the same, so that the other servers count them.
            try:
                await self._leases.take_slot(app.name, runner.runner_id, None)
            except Exception:  # it starts all the same: the limit does not bind it
                log.exception("recording the runner slot of %s failed", runner.runner_id)
        await self._start(app, runner, machine, target)

    def start_new(self, app: AppState, machine: str) -> None:
        """Starts a new runner of the app's live revision. On a shared store, the runner
        exists only once it holds one of the app's runner slots: until then the start is
        counted by `ScalingLeases.starting`, and a refusal makes the app's next start
        wait a quarter of the lease."""
        if not self._leases.shared:
            self.begin(app, self.new_runner(app), machine)
            return
        self._leases.reserve(app.name)
        self._tasks.spawn(self._start_in_slot(app, machine))

    async def _start_in_slot(self, app: AppState, machine: str) -> None:
        runner_id = new_runner_id()
        limit = app.settings.scaling.max_concurrency
        try:
            taken = await self._leases.take_slot(app.name, runner_id, limit)
        except Exception:
            log.exception("taking a runner slot for %s failed", app.name)
            taken = False
        finally:
            self._leases.unreserve(app.name)
        if taken and (self._stopped or self._apps.get(app.name) is not app):
            await self._leases.free_slot(runner_id)  # the app went meanwhile
        elif taken:
            self._refused.discard(app.name)
            await self._start(app, self.new_runner(app, runner_id=runner_id), machine)
        else:
            # Said once per streak of refusals: a burst held at max_concurrency asks again
            # every quarter of the lease.
            level = logging.DEBUG if app.name in self._refused else logging.INFO
            self._refused.add(app.name)
            log.log(level, "no runner slot of %s is free across the servers (max_concurrency "
                    "%d); trying again while the limit is reached", app.name, limit)
            app.backoff_until = max(app.backoff_until,
                                    time.monotonic() + self._settings.cluster_lease_s / 4)
        self._wake()

    async def _start(
        self, app: AppState, runner: RunnerHandle, machine: str,
        target: tuple[Revision, EffectiveSettings] | None = None,
    ) -> None:
        revision, settings = target or (app.revision, app.settings)
        runner.set_state(RunnerState.PENDING)
        runner.token = secrets.token_urlsafe(24)  # a new one for every start
        runner.machine_type = machine
        runner.max_multiplexing = settings.scaling.max_multiplexing
        runner.attached, runner.startup_error, runner.process = False, "", None
        try:
            spec = await self._launcher.spec(runner, revision, settings, self.address)
        except errors.FalrtError as exc:
            if not self._failed(runner, exc.message):
                self._end(runner)
            return
        if runner.stop_requested:  # stopped while it was being prepared
            self._end(runner)
            return
        try:
            runner.process = await self._launcher.start(spec, runner)
        except NoCapacityError as exc:  # taken since _placeable: wait as for no capacity
            runner.last_error = str(exc)
            self._no_capacity(app, str(exc))
            self._end(runner)
            return
        except Exception as exc:
            log.exception("starting a runner of %s failed", app.name)
            if not self._failed(runner, f"could not start: {exc}"):
                self._end(runner)
            return
        if runner.stop_requested:  # stopped while it was being started: it ends now
            runner.process.kill()
        elif runner.state in (RunnerState.PENDING, RunnerState.IMAGE_PULL):  # (not dialled in)
            runner.set_state(RunnerState.SETUP)
        timeout_s = settings.startup_timeout_s
        deadline = asyncio.get_running_loop().call_later(
            timeout_s, self._startup_deadline, runner, timeout_s
        )
        self._tasks.spawn(self._watch_exit(runner, deadline))

    def adopt(self, survivors: list[Survivor]) -> int:
        """Takes back the runners of this server's previous life (a backend whose runners
        outlive the server): those of an app's live revision that dial this server's
        address wait in SETUP for their Hello (as long as a start may take); the others are
        stopped. Returns how many were adopted."""
        loop = asyncio.get_running_loop()
        adopted = 0
        for survivor in survivors:
            app = self._apps.get(survivor.app_name)
            why = not_adoptable(survivor, app, self.address)
            if why or app is None:
                log.info("stopping runner %s of the previous run: %s", survivor.runner_id, why)
                survivor.process.terminate()
                self._tasks.spawn(kill_after(survivor.process, self._settings.shutdown_grace_s,
                                              survivor.runner_id))
                continue
            runner = RunnerHandle(
                runner_id=survivor.runner_id, app_name=app.name,
                revision_id=survivor.revision_id, token=survivor.token,
                max_multiplexing=survivor.max_multiplexing,
                machine_type=survivor.machine_type, state=RunnerState.SETUP,
                started_at=survivor.started_at, adopted=True,
            )
            runner.process, runner.ready = survivor.process, loop.create_future()
            self._runners[runner.runner_id] = runner
            if self._leases.shared:  # it runs: it counts, whatever the limit
                self._tasks.spawn(self._leases.take_slot(app.name, runner.runner_id, None))
            timeout_s = app.settings.startup_timeout_s
            deadline = loop.call_later(timeout_s, self._startup_deadline, runner, timeout_s)
            self._tasks.spawn(self._watch_exit(runner, deadline))
            adopted += 1
            log.info("adopted runner %s of %s (revision %s)", runner.runner_id, app.name,
                     runner.revision_id)
        self._wake()
        return adopted

    def _startup_deadline(self, runner: RunnerHandle, timeout_s: float) -> None:
        if runner.state in STARTING_STATES and runner.process is not None:
            log.warning("runner %s did not finish setup in time; killing it", runner.runner_id)
            runner.startup_error = f"setup did not finish within {timeout_s:g} s (startup_timeout)"
            if runner.adopted:
                runner.last_error = (f"adopted after a restart, it did not dial in within "
                                     f"{timeout_s:g} s (startup_timeout)")
            runner.process.kill()

    async def _watch_exit(self, runner: RunnerHandle, deadline: asyncio.TimerHandle) -> None:
        assert runner.process is not None
        code = await runner.process.wait()
        deadline.cancel()
        # A runner that exits while starting, unless the server stopped it, failed to start
        # (an adopted one, waiting to dial in, simply went).
        if runner.state in STARTING_STATES and not runner.adopted and not self._stopped:
            reason = runner.startup_error or await self._launcher.exit_reason(runner)
            if self._failed(runner, f"exit status {code}: {reason}"):
                return
        elif not runner.stop_requested and not self._stopped:
            # It went on its own: a crash, a failed health check, a kill from outside.
            reason = await self._launcher.exit_reason(runner)
            runner.last_error = f"exit status {code}: {reason}"
            log.warning("runner %s of %s exited: %s", runner.runner_id, runner.app_name,
                        runner.last_error)
        self._end(runner)

    def _failed(self, runner: RunnerHandle, reason: str) -> bool:
        """A start failed: the app's next start waits (fal's CRASH_BACKOFF). Returns True
        when the runner waits in CRASH_BACKOFF to start again, False when it ends."""
        runner.last_error = reason
        self._tasks.spawn(self._launcher.revoke_runner_key(runner.runner_id))  # it exited
        app = self._apps.get(runner.app_name)
        if (app is None or app.revision.revision_id != runner.revision_id or self._stopped
                or runner.stop_requested):
            return False
        delay = app.start_failed(reason, self._settings.crash_backoff_step_s,
                                 self._settings.crash_backoff_cap_s)
        if self._on_failed is not None:
            self._on_failed(app.name)
        log.warning("runner %s of %s failed to start (%s); next start in %.0f s",
                    runner.runner_id, app.name, reason, delay)
        runner.process, runner.attached = None, False
        runner.set_state(RunnerState.CRASH_BACKOFF)
        if runner.ready is not None and not runner.ready.done():  # a deploy --wait waits
            runner.ready.set_result(reason)
        self._events.on_startup_failure(app)
        self._wake()
        return True


def new_runner_id() -> str:
    return f"r-{secrets.token_hex(6)}"


__all__ = ["Starts"]
