"""The runner side of the control plane: start, attach, scale, stop.

The fleet applies the autoscaler's decisions through a backend, keeps every runner's
state, and tells the scheduler when capacity appears (a runner attached, a slot freed) or
vanishes (a runner's stream ended). Its loop never dies: a failure for one app is logged
and the other apps are still scaled.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import secrets
import time
from collections import deque
from pathlib import Path
from typing import Any

from falrt import errors
from falrt.autoscaler.policy import (
    RunnerView,
    ScalingContext,
    ScalingDecision,
    decide,
    desired_count,
    idle_limit,
)
from falrt.backends.base import Backend, RunnerProcess, RunnerSpec, Survivor
from falrt.backends.environments import Environments
from falrt.gpus import NoCapacityError
from falrt.names import split_name
from falrt.server.apps import AppState, EffectiveSettings
from falrt.server.runners import (
    ALIVE_STATES,
    CloseEvent,
    DrainEvent,
    RunnerHandle,
    RunnerState,
)
from falrt.server.scheduler import Scheduler
from falrt.server.secret_box import SecretBox
from falrt.settings import ServerSettings
from falrt.store.records import Revision

log = logging.getLogger(__name__)

STARTING_STATES = frozenset({RunnerState.PENDING, RunnerState.IMAGE_PULL, RunnerState.SETUP})


class Fleet:
    """All runners of this server. See the module docstring."""

    def __init__(
        self,
        scheduler: Scheduler,
        backend: Backend,
        environments: Environments,
        settings: ServerSettings,
    ) -> None:
        self.scheduler = scheduler
        self.backend = backend
        self.environments = environments
        self.settings = settings
        self.address = ""  # set once the server is bound
        self.runners: dict[str, RunnerHandle] = {}
        self.secret_box: SecretBox | None = None  # set by the server: secrets for runners
        # The latest TERMINATED runners, for `falrt runners list --state terminated`.
        self.ended: deque[RunnerHandle] = deque(maxlen=settings.ended_runners_kept)
        # The scaling loop's wake-ups: a flag for wakes while it runs, a future while it
        # waits; and the time (monotonic) each app's last decision asked to be checked again.
        self._woken = False
        self._waiter: asyncio.Future[None] | None = None
        self._planned: dict[str, float] = {}
        self._tasks: set[asyncio.Task[Any]] = set()
        self._closing = False
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

    # -- the scaling loop --------------------------------------------------------------

    def wake(self) -> None:
        """Makes the scaling loop look at every app again, at once."""
        self._woken = True
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def dispatched(self, app: AppState) -> None:
        """Work of `app` was queued, handed out or finished: wakes the scaling loop when its
        decision for the app may differ from the one it planned around, which is when
        - more runners may be wanted than are alive (a start), or
        - a runner is idle whose idle limit ends before the check the loop planned for the
          app (a stop it would owe before then; the desired count may have fallen), or
        - a runner waits in crash backoff (it ends as soon as it is no longer wanted), or
        - the fleet is leaving its runners (it waits for their work to finish).
        A request handed to a runner with a free slot, or finishing on a runner whose
        stop is planned already, then costs the loop nothing: at concurrency 1 the loop
        makes no pass per request."""
        if self._leaving or self._must_look(app):
            self.wake()

    def _must_look(self, app: AppState) -> bool:
        scaling = app.settings.scaling
        planned = self._planned.get(app.name)
        alive = active = 0
        for runner in self.runners.values():
            if runner.app_name != app.name or runner.revision_id != app.revision.revision_id:
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
        return alive < desired_count(scaling, active + len(app.queue))

    async def run(self) -> None:
        """Scales every app until cancelled; wakes on events or when a deadline passes."""
        while True:
            next_check: float | None = None
            now = time.monotonic()
            for app in list(self.scheduler.apps.values()):
                try:
                    decision = self._scale(app)
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
            if self._waiter is waiter:  # (the scaling loop, cancelled at close, ends later)
                self._waiter = None
            if timer is not None:
                timer.cancel()

    def _scale(self, app: AppState) -> ScalingDecision:
        now = time.monotonic()
        live = [r for r in self.runners_of(app.name) if r.revision_id == app.revision.revision_id]
        runners = [r for r in live if r.state is not RunnerState.CRASH_BACKOFF]
        backing_off = [r for r in live if r.state is RunnerState.CRASH_BACKOFF]
        ready, next_ready_s = _queued_ready(app, now)
        ctx = ScalingContext(
            settings=app.settings.scaling,
            now=now,
            queued_ready=ready,
            runners=tuple(_view(r) for r in runners),
            backoff_until=app.backoff_until,
            next_ready_s=next_ready_s,
        )
        decision = decide(ctx)
        if decision.start or decision.stop:
            log.info("scale %s: desired=%d start=%d stop=%s", app.name, decision.desired,
                     decision.start, list(decision.stop))
        machine = self._placeable(app) if decision.start else None
        for _ in range(decision.start if machine else 0):
            # A runner waiting out a crash backoff starts again (CRASH_BACKOFF -> PENDING).
            runner = backing_off.pop() if backing_off else self._new_runner(app)
            self._spawn(self._start_runner(app, runner, machine or ""))
        for runner_id in decision.stop:
            self.stop(self.runners[runner_id])
        # Runners in crash backoff stand for wanted capacity; those no longer wanted end.
        wanted = decision.desired - sum(1 for r in runners if r.state in ALIVE_STATES)
        for runner in backing_off[max(0, wanted):]:
            self._terminated(runner)
        return decision

    def _placeable(self, app: AppState, machine_types: tuple[str, ...] = ()) -> str | None:
        """The first of the app's machine types the backend can start a runner of now;
        None (and the app waits no_capacity_wait, its callers told why) when none."""
        reasons = []
        for machine in machine_types or app.settings.machine_types:
            reason = self.backend.capacity(machine, app.settings.num_gpus)
            if not reason:
                return machine
            reasons.append(reason)
        self._no_capacity(app, "; ".join(reasons))
        return None

    def _no_capacity(self, app: AppState, reason: str) -> None:
        """Nothing of the app starts for no_capacity_wait; its callers are told why."""
        app.backoff_until = time.monotonic() + self.settings.no_capacity_wait_s
        app.last_startup_error = reason
        log.warning("no runner of %s can start: %s", app.name, reason)
        self.scheduler.on_startup_failure(app)
        self.wake()

    # -- starting ----------------------------------------------------------------------

    def _new_runner(self, app: AppState, revision: Revision | None = None) -> RunnerHandle:
        runner = RunnerHandle(
            runner_id=f"r-{secrets.token_hex(6)}",
            app_name=app.name,
            revision_id=(revision or app.revision).revision_id,
            token="",
            max_multiplexing=app.settings.scaling.max_multiplexing,
            machine_type="",
        )
        runner.ready = asyncio.get_running_loop().create_future()
        self.runners[runner.runner_id] = runner
        return runner

    async def start_candidate(
        self, app: AppState, revision: Revision, settings: EffectiveSettings
    ) -> tuple[RunnerHandle, str]:
        """A rolling switch: starts a runner of `revision` (not live yet; it takes no work)
        and waits until it is ready. Returns it with "" — or with why it could not start
        (it has ended then). Cancelling the wait stops it."""
        machine = self._placeable(app, settings.machine_types)
        if machine is None:
            raise errors.FailedPreconditionError(
                f"no runner of the new revision can start: {app.last_startup_error}")
        runner = self._new_runner(app, revision)
        assert runner.ready is not None
        self._spawn(self._start_runner(app, runner, machine, (revision, settings)))
        try:
            return runner, await asyncio.shield(runner.ready)
        except asyncio.CancelledError:
            self.stop(runner)
            raise

    async def _start_runner(
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
            env = await self._runner_env(app, revision)
        except errors.FalrtError as exc:
            if not self._startup_failed(runner, exc.message):
                self._terminated(runner)
            return
        spec = RunnerSpec(
            runner_id=runner.runner_id,
            token=runner.token,
            server_address=self.address,
            python=self.environments.python_for(revision.env_key),
            bundle_dir=self.settings.bundles_dir / revision.bundle_sha256,
            entrypoint=revision.entrypoint,
            max_multiplexing=runner.max_multiplexing,
            grace_period_s=settings.grace_period_s,
            log_path=self.log_path(runner.runner_id),
            machine_type=runner.machine_type,
            num_gpus=settings.num_gpus,
            app_name=app.name,
            revision_id=revision.revision_id,
            env=env,
        )
        try:
            await self.backend.fetch(spec, lambda: runner.set_state(RunnerState.IMAGE_PULL))
            runner.process = await self.backend.start(spec)
        except NoCapacityError as exc:  # taken since _placeable: wait as for no capacity
            runner.last_error = str(exc)
            self._no_capacity(app, str(exc))
            self._terminated(runner)
            return
        except Exception as exc:
            log.exception("starting a runner of %s failed", app.name)
            if not self._startup_failed(runner, f"could not start: {exc}"):
                self._terminated(runner)
            return
        runner.set_state(RunnerState.SETUP)
        timeout_s = settings.startup_timeout_s
        deadline = asyncio.get_running_loop().call_later(
            timeout_s, self._startup_deadline, runner, timeout_s
        )
        self._spawn(self._watch_exit(runner, deadline))

    def adopt(self, survivors: list[Survivor]) -> int:
        """Takes back the runners of this server's previous life (a backend whose runners
        outlive the server): those of an app's live revision that dial this server's
        address wait in SETUP for their Hello (as long as a start may take); the others are
        stopped. Returns how many were adopted."""
        loop = asyncio.get_running_loop()
        adopted = 0
        for survivor in survivors:
            app = self.scheduler.apps.get(survivor.app_name)
            why = _not_adoptable(survivor, app, self.address)
            if why or app is None:
                log.info("stopping runner %s of the previous run: %s", survivor.runner_id, why)
                survivor.process.terminate()
                self._spawn(_kill_after(survivor.process, self.settings.shutdown_grace_s,
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
            self.runners[runner.runner_id] = runner
            timeout_s = app.settings.startup_timeout_s
            deadline = loop.call_later(timeout_s, self._startup_deadline, runner, timeout_s)
            self._spawn(self._watch_exit(runner, deadline))
            adopted += 1
            log.info("adopted runner %s of %s (revision %s)", runner.runner_id, app.name,
                     runner.revision_id)
        self.wake()
        return adopted

    async def _runner_env(self, app: AppState, revision: Revision) -> dict[str, str]:
        """What a runner of `revision` gets in its environment: the app's name and
        environment, and the secrets of that environment (those the app lists, or all)."""
        app_name, environment = split_name(app.name)
        env = {"FALRT_APP_NAME": app_name, "FALRT_ENV": environment}
        if self.secret_box is None:
            return env
        stored = {s.name: s for s in await self.scheduler.store.list_secrets(environment)}
        wanted = revision.config.secrets
        missing = [name for name in wanted if name not in stored]
        if missing:
            raise errors.FailedPreconditionError(
                f"secret(s) {', '.join(missing)} the app lists are not set in environment "
                f"{environment} (`falrt secrets set --env {environment} NAME=VALUE`)")
        for name, secret in stored.items():
            if not wanted or name in wanted:
                env[name] = self.secret_box.decrypt(secret.value)
        return env

    def log_path(self, runner_id: str) -> Path:
        return self.settings.runner_logs_dir / f"{runner_id}.log"

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
        known = runner.process.exit_reason  # e.g. an OOM kill, from the docker backend
        if runner.state in STARTING_STATES and not runner.adopted and not self._closing:
            reason = runner.startup_error or known or await asyncio.to_thread(
                _last_error_line, self.log_path(runner.runner_id)
            )
            if self._startup_failed(runner, f"exit status {code}: {reason}"):
                return
        elif not runner.stop_requested and not self._closing:
            # It went on its own: a crash, a failed health check, a kill from outside.
            reason = known or await asyncio.to_thread(
                _last_error_line, self.log_path(runner.runner_id))
            runner.last_error = f"exit status {code}: {reason}"
            log.warning("runner %s of %s exited: %s", runner.runner_id, runner.app_name,
                        runner.last_error)
        self._terminated(runner)

    def _startup_failed(self, runner: RunnerHandle, reason: str) -> bool:
        """A start failed: the app's next start waits (fal's CRASH_BACKOFF). Returns True
        when the runner waits in CRASH_BACKOFF to start again, False when it ends."""
        runner.last_error = reason
        app = self.scheduler.apps.get(runner.app_name)
        if app is None or app.revision.revision_id != runner.revision_id or self._closing:
            return False
        app.startup_failures += 1
        delay = min(self.settings.crash_backoff_step_s * app.startup_failures,
                    self.settings.crash_backoff_cap_s)
        app.backoff_until = time.monotonic() + delay
        app.last_startup_error = reason
        log.warning("runner %s of %s failed to start (%s); next start in %.0f s",
                    runner.runner_id, app.name, reason, delay)
        runner.process, runner.attached = None, False
        runner.set_state(RunnerState.CRASH_BACKOFF)
        self.scheduler.on_startup_failure(app)
        self.wake()
        return True

    # -- the runner link ---------------------------------------------------------------

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
        runner.max_multiplexing = max(1, min(slots, runner.max_multiplexing))
        runner.set_state(RunnerState.IDLE)
        runner.idle_since = time.monotonic()
        runner.last_error = ""
        if runner.ready is not None and not runner.ready.done():
            runner.ready.set_result("")
        replaced = self.runners.get(runner.replaces)
        if replaced is not None:  # `falrt runners stop --replace`: the old one drains now
            self.stop(replaced)
        app = self.scheduler.apps.get(runner.app_name)
        if app is not None and app.revision.revision_id == runner.revision_id:
            # Any runner that starts ends the backoff (fal); waiting ones start at once.
            app.startup_failures, app.backoff_until, app.last_startup_error = 0, 0.0, ""
            self.wake()
        if app is not None:
            self.scheduler.dispatch(app)
        return runner

    def detached(self, runner: RunnerHandle) -> None:
        """The runner's stream ended: fail over its work and make sure it exits (unless the
        server leaves it to the next server)."""
        if self._leaving:
            runner.attached = False
            self.scheduler.on_runner_lost(runner)
            return
        if runner.state is not RunnerState.TERMINATED:
            runner.set_state(RunnerState.TERMINATING)
        self.scheduler.on_runner_lost(runner)
        if runner.process is not None and runner.process.exit_code is None:
            self._spawn(self._reap(runner, grace_s=self._grace(runner)))
        self.wake()

    def runner_draining(self, runner: RunnerHandle) -> None:
        """The runner stopped taking work on its own (it got SIGTERM)."""
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
        self._spawn(self._reap(runner, grace_s=self._grace(runner) + 0.5))

    def replace(self, runner: RunnerHandle) -> RunnerHandle:
        """`falrt runners stop --replace`: starts a runner of the app's live revision (on
        top of max_concurrency, as fal's rollouts); `runner` drains once it is ready. If
        the replacement cannot start, `runner` keeps serving."""
        app = self.scheduler.apps.get(runner.app_name)
        if app is None:
            raise errors.NotFoundError(f"app {runner.app_name!r} is gone")
        machine = self._placeable(app)
        if machine is None:
            raise errors.FailedPreconditionError(
                f"no replacement can start: {app.last_startup_error}")
        replacement = self._new_runner(app)
        replacement.replaces = runner.runner_id
        self._spawn(self._start_runner(app, replacement, machine))
        return replacement

    def kill(self, runner: RunnerHandle) -> None:
        """Stops a runner now: its stream is closed and its process killed."""
        runner.stop_requested = True
        if runner.state is RunnerState.CRASH_BACKOFF:
            self._terminated(runner)
            return
        runner.set_state(RunnerState.TERMINATING)
        runner.outbox.put_nowait(CloseEvent())
        if runner.process is not None:
            runner.process.kill()

    def stop_app(self, app_name: str) -> None:
        for runner in self.runners_of(app_name):
            runner.stop_requested = True
            runner.outbox.put_nowait(CloseEvent())
            if runner.process is not None:
                runner.process.kill()

    def rollout(self, app: AppState, *, force: bool) -> tuple[list[str], list[str]]:
        """`falrt apps rollout`: replaces every runner of the live revision (graceful: a
        replacement first for each, which it drains for once ready) or kills them (force).
        Returns the runners replaced and their replacements."""
        old = [r for r in self.runners_of(app.name) if r.revision_id == app.revision.revision_id
               and r.state in ALIVE_STATES | {RunnerState.CRASH_BACKOFF}]
        if force:
            for runner in old:
                runner.last_error = "killed by `falrt apps rollout --force`"
                self.kill(runner)
            return [r.runner_id for r in old], []
        return [r.runner_id for r in old], [self.replace(r).runner_id for r in old]

    def retire_old_revisions(self, app: AppState) -> None:
        for runner in self.runners_of(app.name):
            if runner.revision_id != app.revision.revision_id:
                self.stop(runner)

    async def _reap(self, runner: RunnerHandle, *, grace_s: float) -> None:
        """Kills the runner if it has not exited `grace_s` after being asked to stop."""
        if runner.process is not None:
            await _kill_after(runner.process, grace_s, runner.runner_id)

    def _terminated(self, runner: RunnerHandle) -> None:
        if runner.ready is not None and not runner.ready.done():
            runner.ready.set_result(runner.last_error or "it ended before it was ready")
        if runner.state is not RunnerState.TERMINATED:
            self.ended.append(runner)
        runner.set_state(RunnerState.TERMINATED)
        self.runners.pop(runner.runner_id, None)
        if runner.in_flight:
            self.scheduler.on_runner_lost(runner)
        self.wake()

    def _grace(self, runner: RunnerHandle) -> float:
        app = self.scheduler.apps.get(runner.app_name)
        return app.settings.grace_period_s if app else self.settings.shutdown_grace_s

    async def close(self) -> None:
        """Stops every runner (gracefully, then by force) and waits for them to exit; or,
        when the backend's runners outlive the server, leaves them to the next one."""
        self._closing = True
        if self.backend.keeps_runners:
            await self._leave_runners()
        else:
            await self._stop_all()
        for task in list(self._tasks):
            task.cancel()
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
            self._woken = False  # a runner left with no work wakes the fleet
            await self._wait(left)
        for runner in self.runners.values():
            runner.outbox.put_nowait(CloseEvent())
        log.info("left %d runners running for the next server to adopt",
                 sum(1 for r in self.runners.values() if r.process is not None))

    async def _stop_all(self) -> None:
        for runner in list(self.runners.values()):
            self.stop(runner)
        waits = [r.process.wait() for r in self.runners.values() if r.process is not None]
        if waits:
            await asyncio.wait([asyncio.ensure_future(w) for w in waits],
                               timeout=self.settings.shutdown_grace_s + 6.0)
        for runner in self.runners.values():
            if runner.process is not None:
                runner.process.kill()

    def _spawn(self, coro: Any) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)


async def _kill_after(process: RunnerProcess, grace_s: float, runner_id: str) -> None:
    """Kills the runner if it has not exited `grace_s` after being asked to stop."""
    try:
        await asyncio.wait_for(process.wait(), timeout=grace_s)
    except TimeoutError:
        log.warning("runner %s did not exit in %.0f s; killing it", runner_id, grace_s)
        process.kill()


def _not_adoptable(survivor: Survivor, app: AppState | None, address: str) -> str:
    """Why a runner of the server's previous life cannot be adopted; "" when it can."""
    if app is None:
        return f"its app {survivor.app_name!r} is gone"
    if app.revision.revision_id != survivor.revision_id:
        return f"its revision {survivor.revision_id} is no longer {app.name}'s live one"
    if survivor.server_address != address:
        return f"it dials {survivor.server_address}, not this server's {address}"
    return ""


def _settle(waiter: asyncio.Future[None]) -> None:
    if not waiter.done():
        waiter.set_result(None)


def _better(runner: RunnerHandle, best: RunnerHandle, avoid: str) -> bool:
    if (runner.runner_id == avoid) != (best.runner_id == avoid):
        return best.runner_id == avoid
    return runner.free_slots > best.free_slots


def _queued_ready(app: AppState, now: float) -> tuple[int, float | None]:
    """Queued requests that waited scaling_delay, and the time until the next one has."""
    delay = app.settings.scaling.scaling_delay_s
    if delay <= 0:
        return len(app.queue), None
    cutoff = now - delay
    times = [item.enqueued_at for item in app.queue.items()]
    young = [t for t in times if t > cutoff]
    return len(times) - len(young), (min(young) - cutoff if young else None)


def _view(runner: RunnerHandle) -> RunnerView:
    idle = runner.state is RunnerState.IDLE and not runner.in_flight
    return RunnerView(
        runner_id=runner.runner_id,
        alive=runner.state in ALIVE_STATES,
        in_flight=len(runner.in_flight),
        idle_since=runner.idle_since if idle else None,
        served=runner.served,
    )


def _last_error_line(path: Path) -> str:
    """The last non-empty line of a runner's log (usually the exception of a failed setup)."""
    try:
        lines = path.read_text(errors="replace").strip().splitlines()
    except OSError:
        return "no log"
    return lines[-1][:500] if lines else "no output"


__all__ = ["Fleet"]
