"""Work to runners and back: dispatch, attempts, what runners report, retries.

The dispatcher hands each app's queued work to runners with free slots (`dispatch`), times
every attempt, takes results, logs and partial outputs back from the runner link, and
retries or fails the work of attempts that fail or runners that vanish. It is the fleet's
`FleetEvents`: it builds its fleet with itself as the fleet's events (the one place the
two planes meet; the fleet never imports the queue). Everything runs on the server's event
loop; nothing here blocks or awaits on the path of a request.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections.abc import Callable

from falrt import errors
from falrt.server.fleet.events import FleetEvents
from falrt.server.fleet.fleet import Fleet
from falrt.server.metrics import Metrics
from falrt.server.queue.outcomes import (
    NO_VERDICT,
    START_TIMEOUT,
    Verdict,
    error_record,
    past_deadline,
    timed_out_error,
)
from falrt.server.queue.recorder import Recorder
from falrt.server.queue.retries import RetryContext, backoff_s, should_retry
from falrt.server.state.apps import Apps, AppState
from falrt.server.state.runners import CancelEvent, RunnerHandle
from falrt.server.state.work import DirectCall, QueuedRequest, RealtimeSession, WorkItem
from falrt.server.tracing import Tracing
from falrt.settings import ServerSettings
from falrt.store.base import SharedStore, Store
from falrt.store.records import ErrorRecord, LogRecord, Outcome, Status
from falrt.vocabulary import RetryCondition

log = logging.getLogger(__name__)

MAX_PARTIALS = 10_000  # partial outputs of one request shown to watchers
REALTIME_OUTPUT_BUFFER = 256  # outputs of one realtime session waiting for its caller
REFUSED = errors.RunnerRefusedError.error_type


class Dispatcher(FleetEvents):
    """Dispatch and attempts. See the module docstring."""

    def __init__(
        self, apps: Apps, store: Store, shared: SharedStore | None, recorder: Recorder,
        settings: ServerSettings, fleet: Callable[[FleetEvents], Fleet],
        metrics: Metrics | None = None, tracing: Tracing | None = None,
    ) -> None:
        self._apps = apps
        self._tracing = tracing or Tracing()
        self._metrics = metrics  # None: no metrics (`--no-metrics`)
        self._store = store
        self._shared = shared
        self._recorder = recorder
        self._settings = settings
        self.fleet = fleet(self)

    @functools.cached_property
    def loop(self) -> asyncio.AbstractEventLoop:
        """The server's loop, looked up once (on Python 3.11 every lookup makes a getpid()
        system call); the dispatcher is loop-affine."""
        return asyncio.get_running_loop()

    # -- dispatch ----------------------------------------------------------------------

    def enqueue(self, app: AppState, item: WorkItem) -> None:
        """Queues new, loaded or retried work (arming a request's start deadline)."""
        app.queue.push(item)
        if item.trace is not None:
            self._tracing.requeued(item)
        if (isinstance(item, QueuedRequest) and item.start_deadline is not None
                and item.deadline_timer is None):
            delay = max(0.0, item.start_deadline - time.time())
            item.deadline_timer = self.loop.call_later(
                delay, self._start_deadline_passed, item)

    def dispatch(self, app: AppState) -> None:
        """Hands queued work to runners with free slots, in queue order."""
        while (item := app.queue.peek()) is not None:
            if past_deadline(item):
                app.queue.remove(item)
                self._recorder.finish(item, Outcome(error=error_record(START_TIMEOUT)))
                continue
            runner = self.fleet.pick_runner(app, avoid=item.avoid_runner)
            if runner is None:
                break
            app.queue.remove(item)
            if self._shared is not None and isinstance(item, QueuedRequest) and item.persisted:
                runner.reserved += 1  # the slot waits for the claim
                self._recorder.background(self._claim_and_start(app, runner, item))
            else:
                self._start(app, runner, item)
        self._fail_direct_calls(app)
        self.fleet.dispatched(app)

    def _fail_direct_calls(self, app: AppState) -> None:
        """While the app's runners fail to start and none serves, its waiting direct calls
        are answered with the startup error (StartupFailedError): unlike a queued request
        they have no record to wait in, and their callers would only see a deadline pass."""
        if app.startup_failures == 0 or any(
            r.attached and r.revision_id == app.revision.revision_id
            for r in self.fleet.runners_of(app.name)
        ):
            return
        failed = error_record(errors.StartupFailedError(app.waiting_reason()))
        for item in app.queue.items():
            if isinstance(item, DirectCall):
                app.queue.remove(item)
                self._recorder.finish(item, Outcome(error=failed))

    def _start(self, app: AppState, runner: RunnerHandle, item: WorkItem) -> None:
        """Sends `item` to `runner` as its next attempt."""
        item.timed_out = False
        if self._metrics is not None:
            self._metrics.started(item)
        if item.trace is not None:  # (before the Assign is built: it carries the context)
            self._tracing.assigned(item, runner.runner_id)
        runner.assign(item)
        if isinstance(item, RealtimeSession):  # a session lasts as long as its caller wants
            item.started.set()
            return
        item.attempt_timer = self.loop.call_later(
            app.settings.request_timeout_s, self._attempt_timed_out, runner, item)
        if isinstance(item, QueuedRequest):
            item.set_status(Status.IN_PROGRESS)
            item.waiting_reason = ""
            item.attempts += 1
            # A new request's INSERT carries its first attempt; a shared store's claim
            # has recorded this one.
            if item.persisted and self._shared is None:
                self._recorder.background(
                    self._store.mark_started(item.request_id, item.attempts))
            item.changed.fire()

    async def _claim_and_start(
        self, app: AppState, runner: RunnerHandle, item: QueuedRequest
    ) -> None:
        """Shared store: runs a queued request once this server has claimed it. When
        another server has it (or it completed), its events tell this server's watchers."""
        assert self._shared is not None
        try:
            claimed = await self._shared.claim(item.request_id, item.attempts + 1)
        except Exception:
            runner.reserved -= 1
            log.exception("claiming request %s failed; it stays queued", item.request_id)
            app.queue.push(item)  # the next dispatch tries again
            return
        runner.reserved -= 1
        if claimed and item.cancel_requested:
            item.attempts += 1
            cancelled = errors.RequestCancelledError("cancelled before it started")
            self._recorder.finish(item, Outcome(error=error_record(cancelled)))
        elif claimed and (runner.free_slots < 1 or self._apps.get(app.name) is not app):
            item.attempts += 1
            self._requeue(app, item, count_attempt=False)  # the runner went meanwhile
        elif claimed:
            self._start(app, runner, item)
        self.dispatch(app)

    def send_cancel(self, item: WorkItem) -> bool:
        """Asks the runner of `item` to cancel it; False when no runner here runs it."""
        runner = self.runner_of(item)
        if runner is not None:
            runner.outbox.put_nowait(CancelEvent(item.request_id))
        return runner is not None

    def runner_of(self, item: WorkItem) -> RunnerHandle | None:
        """The runner of this server that runs `item` now, if any."""
        runner = self.fleet.runners.get(item.runner_id)
        return runner if runner is not None and item.request_id in runner.in_flight else None

    def take_waiting(self, item: QueuedRequest) -> bool:
        """Takes a request out of its app's queue or out of its retry backoff; False when it
        was neither (it runs, or it is done)."""
        app = self._apps.get(item.app_name)
        if item.backoff_timer is not None:
            if app is not None:
                app.retrying.discard(item)
            return True
        return app is not None and app.queue.remove(item)

    # -- what runners report (through the runner link) ---------------------------------

    def on_log(self, runner: RunnerHandle, request_id: str, line: LogRecord) -> None:
        item = runner.in_flight.get(request_id)
        if isinstance(item, QueuedRequest) and item.add_log(line):
            item.changed.fire()

    def on_partial(self, runner: RunnerHandle, request_id: str, data: bytes, ctype: str) -> None:
        item = runner.in_flight.get(request_id)
        if isinstance(item, DirectCall) and item.partials is not None:
            item.partials.put_nowait((data, ctype))
        elif isinstance(item, QueuedRequest):
            item.last_partial = (data, ctype)
            if len(item.partials) < MAX_PARTIALS:
                item.add_partial((data, ctype))
                item.changed.fire()

    def on_result(
        self, runner: RunnerHandle, request_id: str, outcome: Outcome,
        verdict: Verdict = NO_VERDICT,
    ) -> None:
        item = runner.release(request_id)
        if item is None:
            log.warning("runner %s sent a result for unknown request %s", runner.runner_id,
                        request_id)
            return
        item.stop_timers()
        if self._metrics is not None:
            self._metrics.ran(item)
        if item.trace is not None:
            self._tracing.attempt_ended(item, outcome.error.error_type if outcome.error else "")
        if verdict.stop_runner:
            runner.last_error = f"stopped after request {request_id} asked for it (stop_runner)"
            self.fleet.stop(runner)
        app = self._apps.get(item.app_name)
        never_ran = outcome.error is not None and outcome.error.error_type == REFUSED
        condition = RetryCondition.SERVER_ERROR if verdict.needs_retry else None
        if never_ran and app is not None and not item.cancel_requested:
            self._requeue(app, item, count_attempt=False)
        elif outcome.error is not None and self._retry(
                item, condition, verdict.needs_retry, outcome.error):
            item.avoid_runner = runner.runner_id  # fal: the retry goes to another runner
        else:
            self._recorder.finish(item, outcome)
        self._released(app)

    def on_realtime_output(
        self, runner: RunnerHandle, session_id: str, data: bytes, ctype: str
    ) -> None:
        item = runner.in_flight.get(session_id)
        if not isinstance(item, RealtimeSession) or item.partials is None:
            return
        if item.partials.qsize() >= REALTIME_OUTPUT_BUFFER:  # the caller reads too slowly
            full = errors.ResourceExhaustedError(
                f"more than {REALTIME_OUTPUT_BUFFER} outputs wait for the caller; read faster")
            self._recorder.finish(item, Outcome(error=error_record(full)))
            item.cancel_requested = True
            self.send_cancel(item)
            return
        item.partials.put_nowait((data, ctype))

    def on_realtime_credit(self, runner: RunnerHandle, session_id: str, inputs: int) -> None:
        item = runner.in_flight.get(session_id)
        if isinstance(item, RealtimeSession):
            for _ in range(max(0, inputs)):
                item.credit.release()

    def on_realtime_closed(
        self, runner: RunnerHandle, session_id: str, error: ErrorRecord | None
    ) -> None:
        item = runner.release(session_id)
        if item is None:
            return
        if self._metrics is not None:
            self._metrics.ran(item)
        app = self._apps.get(item.app_name)
        refused = error is not None and error.error_type == REFUSED
        if refused and app is not None and not item.cancel_requested:
            self._requeue(app, item, count_attempt=False)  # it never started: queue it again
        else:
            self._recorder.finish(item, Outcome(error=error))
        self._released(app)

    def _released(self, app: AppState | None) -> None:
        """A slot is free: the app's next work goes out (and the fleet looks at the app
        again if it must)."""
        if app is not None:
            self.dispatch(app)
        else:
            self.fleet.wake()

    # -- what the fleet reports (FleetEvents) ------------------------------------------

    def on_runner_ready(self, app: AppState) -> None:
        self.dispatch(app)

    def on_runner_lost(self, runner: RunnerHandle) -> None:
        """The runner's stream ended: its in-flight work is retried or failed."""
        lost = error_record(errors.RunnerDisconnectedError(
            f"runner {runner.runner_id} went away"))
        for request_id in list(runner.in_flight):
            item = runner.in_flight.pop(request_id)
            item.stop_timers()
            condition, error = (
                (RetryCondition.TIMEOUT, timed_out_error(item)) if item.timed_out
                else (RetryCondition.CONNECTION_ERROR, lost))
            if item.trace is not None:
                self._tracing.attempt_ended(item, error.error_type)
            if not self._retry(item, condition, None, error):
                self._recorder.finish(item, Outcome(error=error))
        app = self._apps.get(runner.app_name)
        if app is not None:
            self.dispatch(app)

    def on_startup_failure(self, app: AppState) -> None:
        """Tells watchers of the app's queued requests why they still wait."""
        reason = app.waiting_reason()
        for item in app.queue.items():
            if isinstance(item, QueuedRequest):
                item.waiting_reason = reason
        self._fail_direct_calls(app)
        app.queue.changed.fire()

    # -- retries and timers ------------------------------------------------------------

    def _retry(
        self, item: WorkItem, condition: RetryCondition | None, verdict: bool | None,
        error: ErrorRecord,
    ) -> bool:
        """Schedules another attempt of a failed one when the retry rule allows it."""
        if not isinstance(item, QueuedRequest) or item.cancel_requested:
            return False
        app = self._apps.get(item.app_name)
        if app is None:
            return False
        if condition is not None:
            item.failures[condition] = item.failures.get(condition, 0) + 1
        config = app.revision.config
        ctx = RetryContext(
            attempts=item.attempts, condition=condition,
            condition_failures=item.failures.get(condition or "", 0),
            no_retry=item.no_retry, verdict=verdict, request_budget=item.retry_config,
            app_budget=config.retry_config, skip_conditions=frozenset(config.skip_retry_conditions),
        )
        if not should_retry(ctx):
            return False
        if self._metrics is not None:
            self._metrics.retried(item.app_name, condition or "none")
        delay = backoff_s(item.attempts, self._settings.retry_backoff_base_s,
                          self._settings.retry_backoff_cap_s)
        item.runner_id = ""
        item.set_status(Status.IN_QUEUE)
        item.waiting_reason = (f"attempt {item.attempts} failed ({error.error_type}: "
                               f"{error.message}); retrying in {delay:.1f} s")
        self._recorder.background(self._store.requeue(item.request_id, item.attempts))
        loop = self.loop
        item.backoff_timer = loop.call_later(delay, self._retry_now, item)
        if item.start_deadline is not None:
            item.deadline_timer = loop.call_later(
                max(0.0, item.start_deadline - time.time()), self._start_deadline_passed, item)
        app.retrying.add(item)
        item.changed.fire()
        return True

    def _retry_now(self, item: QueuedRequest) -> None:
        item.backoff_timer = None
        app = self._apps.get(item.app_name)
        if app is not None:
            app.retrying.discard(item)
        if item.outcome is not None:
            return
        if app is None:
            gone = errors.NotFoundError(f"app {item.app_name!r} was deleted")
            self._recorder.finish(item, Outcome(error=error_record(gone)))
            return
        self.release(item)
        self.enqueue(app, item)
        self.dispatch(app)

    def _attempt_timed_out(self, runner: RunnerHandle, item: WorkItem) -> None:
        """An attempt ran past request_timeout: its runner is killed, as in fal."""
        item.attempt_timer = None
        if runner.in_flight.get(item.request_id) is not item:
            return
        log.warning("request %s ran past request_timeout on runner %s; killing the runner",
                    item.request_id, runner.runner_id)
        item.timed_out = True
        self.fleet.kill(runner)

    def _start_deadline_passed(self, item: QueuedRequest) -> None:
        item.deadline_timer = None
        if self.take_waiting(item) and item.outcome is None:
            self._recorder.finish(item, Outcome(error=error_record(START_TIMEOUT)))

    def _requeue(self, app: AppState, item: WorkItem, *, count_attempt: bool) -> None:
        item.runner_id = ""
        if isinstance(item, QueuedRequest):
            item.set_status(Status.IN_QUEUE)
            if not count_attempt:
                item.attempts -= 1
            self._recorder.background(self._store.requeue(item.request_id, item.attempts))
            self.release(item)
            item.changed.fire()
        app.queue.push(item)

    def release(self, item: QueuedRequest) -> None:
        """Shared store: lets every server claim this queued request (it is announced)."""
        if self._shared is not None:
            self._recorder.background(self._shared.release(item.request_id))


__all__ = ["Dispatcher"]
