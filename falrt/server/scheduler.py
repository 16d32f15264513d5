"""The request side of the control plane: apps, the queue, dispatch, results.

The scheduler owns every app's queue and the table of live requests. It hands work to
runners with free slots (`dispatch`), takes results back (`on_result`), and re-queues the
work of runners that vanish. It never imports generated code; servicers convert at the
edge. Everything runs on the server's event loop.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections import OrderedDict
from typing import TYPE_CHECKING

import msgspec

from falrt import errors
from falrt.names import MAIN
from falrt.server.apps import (
    AppState,
    EffectiveSettings,
    check_config,
    set_fields,
    with_overrides,
)
from falrt.server.idempotency import IdempotencyKeys
from falrt.server.outcomes import (
    NO_VERDICT,
    START_TIMEOUT,
    SubmitOptions,
    Verdict,
    content_type_of,
    error_record,
    past_deadline,
    timed_out_error,
)
from falrt.server.recorder import Recorder
from falrt.server.retries import MAX_ATTEMPTS, RetryContext, backoff_s, should_retry
from falrt.server.runners import (
    CancelEvent,
    RealtimeEndEvent,
    RealtimeInputEvent,
    RunnerHandle,
)
from falrt.server.work import DirectCall, QueuedRequest, RealtimeSession, WorkItem
from falrt.settings import ServerSettings
from falrt.store.base import SharedStore, Store
from falrt.store.records import (
    AppConfig,
    AppRecord,
    ClusterEvent,
    ErrorRecord,
    LogRecord,
    Outcome,
    Priority,
    RequestRecord,
    Revision,
    Status,
)

if TYPE_CHECKING:
    from falrt.server.fleet import Fleet

log = logging.getLogger(__name__)

MAX_LOG_LINES = 10_000
MAX_PARTIALS = 10_000  # partial outputs of one request shown to watchers
REALTIME_KIND = 3  # falrt.v1.ENDPOINT_KIND_REALTIME
REALTIME_OUTPUT_BUFFER = 256  # outputs of one realtime session waiting for its caller


class Scheduler:
    """Apps, queues and requests. See the module docstring."""

    def __init__(self, store: Store, settings: ServerSettings) -> None:
        self.store = store
        self.settings = settings
        self.apps: dict[str, AppState] = {}
        self.fleet: Fleet | None = None
        self._requests: dict[str, QueuedRequest] = {}
        self._seq = 0
        self._keys = IdempotencyKeys()
        self.recorder = Recorder(store, settings, self._requests, self._keys)
        # Set when several servers share the store (falrt/server/cluster.py): queued
        # requests are then claimed before they run, and other servers' events update them.
        self.shared: SharedStore | None = None
        # Ids other servers completed lately that this one was not following (for lookup).
        self._completed_elsewhere: OrderedDict[str, None] = OrderedDict()

    # -- startup -----------------------------------------------------------------------

    async def load(self) -> int:
        """Loads apps and unfinished requests from the store; returns how many re-queued."""
        for app_record in await self.store.list_apps():
            revision = await self.store.get_revision(app_record.revision_id)
            if revision is not None:
                self.activate(app_record, revision)
        self._seq = await self.store.max_seq()
        pending = await self.store.load_unfinished()
        for record in pending:
            app = self.apps.get(record.app_name)
            if app is None:
                continue
            item = QueuedRequest.from_record(record)
            item.persisted = True
            mine = self.shared is None or record.owner == self.shared.server_id
            if record.owner and not mine:
                self._requests[item.request_id] = item  # another server holds it: followed
                continue
            if item.status is Status.IN_PROGRESS and not await self._resume(item):
                continue
            if record.owner:
                self._release(item)
            self._requests[item.request_id] = item
            if item.idempotency_key:
                self._keys.claim(item.idempotency_key, item.request_id)
            self._enqueue(app, item)
        return len(pending)

    async def _resume(self, item: QueuedRequest) -> bool:
        """A request that was running when the server stopped: its attempt counts; it is
        queued again if the retry rule allows (True), else completed (False)."""
        outcome = self.gives_up(item.attempts, no_retry=item.no_retry)
        if outcome is not None:
            if self.shared is not None:
                await self.shared.complete_owned(item.request_id, outcome, time.time())
            else:
                await self.store.complete(item.request_id, outcome, time.time())
            return False
        item.status = Status.IN_QUEUE
        await self.store.requeue(item.request_id, item.attempts)
        return True

    @staticmethod
    def gives_up(attempts: int, *, no_retry: bool) -> Outcome | None:
        """The outcome of a request whose attempt `attempts` was cut because its server
        stopped, when the retry rule allows no other attempt (None: it is queued again)."""
        if not no_retry and attempts < MAX_ATTEMPTS:
            return None
        stopped = errors.RunnerDisconnectedError(
            f"the server stopped while attempt {attempts} ran")
        return Outcome(error=error_record(stopped))

    # -- apps --------------------------------------------------------------------------

    def activate(self, record: AppRecord, revision: Revision) -> AppState:
        """Makes `revision` the app's live one; runners of older revisions are retired."""
        settings = self._resolve(revision, record)
        app = self.apps.get(record.name)
        if app is None:
            app = self.apps[record.name] = AppState(record, revision, settings)
        else:
            app.record, app.revision, app.settings = record, revision, settings
            app.startup_failures, app.backoff_until, app.last_startup_error = 0, 0.0, ""
        if self.fleet is not None:
            self.fleet.retire_old_revisions(app)
            self.fleet.wake()
        self.dispatch(app)  # a rolling deploy's runner is ready and waiting for work
        return app

    def _resolve(self, revision: Revision, record: AppRecord) -> EffectiveSettings:
        config = with_overrides(revision.config, record.scale)
        return EffectiveSettings.resolve(config, self.settings.app_defaults)

    async def scale(self, name: str, changes: AppConfig) -> AppState:
        """`falrt apps scale`: new overrides of the app's scaling settings, in force at once
        (and stored). Raises NotFoundError, or InvalidArgumentError for bad settings."""
        app = self.apps.get(name)
        if app is None:
            raise errors.NotFoundError(f"no app named {name!r}; `falrt apps list` shows the apps")
        if not set_fields(changes):
            raise errors.InvalidArgumentError(
                "nothing to change: give at least one scaling setting (see `falrt apps scale "
                "--help`)")
        scale = AppConfig(**{**set_fields(app.record.scale), **set_fields(changes)})  # type: ignore[arg-type]
        check_config(with_overrides(app.revision.config, scale))
        await self.store.set_scale(name, scale)
        self.rescale(msgspec.structs.replace(app.record, scale=scale))
        return app

    def rescale(self, record: AppRecord) -> None:
        """Applies an app's new scale overrides (its revision unchanged)."""
        app = self.apps.get(record.name)
        if app is None:
            return
        app.record, app.settings = record, self._resolve(app.revision, record)
        if self.fleet is not None:
            self.fleet.wake()
        self.dispatch(app)

    async def environment(self, name: str) -> str:
        """The environment's name ("" is main). Raises NotFoundError when it does not exist."""
        name = name or MAIN
        if name != MAIN and name not in {e.name for e in await self.store.list_environments()}:
            raise errors.NotFoundError(
                f"no environment {name!r}; create it with `falrt envs create {name}`")
        return name

    def resolve(self, endpoint_id: str, path: str) -> AppState:
        """The app an endpoint id names, checked to serve `path`. Raises NotFoundError."""
        owner, _, name = endpoint_id.partition("/")
        app = self.apps.get(name) if owner == self.settings.owner else None
        if app is None:
            raise errors.NotFoundError(
                f"no app with endpoint id {endpoint_id!r} (ids look like "
                f"'{self.settings.owner}/APP'; `falrt apps list` shows the apps)"
            )
        if path not in app.paths:
            known = ", ".join(sorted(app.paths))
            raise errors.NotFoundError(f"app {name!r} has no endpoint {path!r}; it serves {known}")
        return app

    async def delete_app(self, name: str, *, stored: bool = True) -> None:
        """Deletes an app with its queue; `stored=False` when another server deleted it."""
        app = self.apps.pop(name, None)
        if app is None:
            raise errors.NotFoundError(f"no app named {name!r}")
        gone = errors.NotFoundError(f"app {name!r} was deleted")
        for item in [*app.queue.items(), *app.retrying]:
            app.queue.remove(item)
            self.recorder.finish(item, Outcome(error=error_record(gone)), store=False)
        if self.fleet is not None:
            self.fleet.stop_app(name)
        if stored:
            await self.store.delete_app(name)

    # -- the queue path ----------------------------------------------------------------

    async def submit(
        self, endpoint_id: str, path: str, data: bytes, content_type: str,
        options: SubmitOptions,
    ) -> tuple[str, int, bool]:
        """Stores a request, queues it, dispatches; returns its id, its queue position, and
        whether an earlier Submit with the same idempotency key made it."""
        app = self.resolve(endpoint_id, path)
        key = options.idempotency_key
        if not key:
            self._check_queue_length(app, options.max_queue_length)
            return (*await self._store_and_queue(app, path, data, content_type, options), False)
        earlier = await self._keys.reserve(key)
        if earlier is not None:
            return earlier, self.position_of(earlier), True
        try:
            earlier = await self.store.find_request_by_key(key)
            if earlier is not None:
                self._keys.claim(key, earlier)
                return earlier, self.position_of(earlier), True
            self._check_queue_length(app, options.max_queue_length)
            return (*await self._store_and_queue(app, path, data, content_type, options), False)
        finally:
            self._keys.settle(key)

    @staticmethod
    def _check_queue_length(app: AppState, limit: int) -> None:
        if limit and len(app.queue) > limit:
            raise errors.ResourceExhaustedError(
                f"app {app.name!r} has {len(app.queue)} queued requests, more than the "
                f"max_queue_length {limit} of this call; try again later"
            )

    async def _store_and_queue(
        self, app: AppState, path: str, data: bytes, content_type: str, options: SubmitOptions
    ) -> tuple[str, int]:
        now = time.time()
        record = RequestRecord(
            request_id=str(uuid.uuid4()), app_name=app.name, path=path, input=data,
            content_type=content_type_of(content_type), priority=options.priority,
            seq=self._next_seq(), created_at=now, no_retry=options.no_retry,
            retry_config=dict(options.retry_config), webhook_url=options.webhook_url,
            start_deadline=now + options.start_timeout_s if options.start_timeout_s else None,
            idempotency_key=options.idempotency_key,
        )
        # The write and the first attempt overlap: the runner may start while the row is
        # being committed, but Submit answers only once it is durable. Dispatch first, so
        # that a request assigned at once is stored as IN_PROGRESS with its attempt counted
        # (no second write); the Assign only leaves on a later turn of the loop, and the
        # INSERT is queued in the store before that, so the outcome's UPDATE, queued later,
        # lands after it (stores apply writes in call order).
        item = QueuedRequest.from_record(record)
        self._requests[item.request_id] = item
        if item.idempotency_key:
            self._keys.claim(item.idempotency_key, item.request_id)
        self._enqueue(app, item)
        position = app.queue.position(item)
        self.dispatch(app)
        record.status, record.attempts = item.status, item.attempts
        stored = asyncio.ensure_future(self.store.insert_request(record))
        item.persisted = True
        try:
            await asyncio.shield(stored)
        except Exception as exc:
            self._withdraw(app, item)
            log.exception("storing request %s failed", item.request_id)
            raise errors.InternalError("the request could not be stored; try again") from exc
        return item.request_id, position

    def position_of(self, request_id: str) -> int:
        item = self._requests.get(request_id)
        return self.position(item) if item is not None else 0

    def _enqueue(self, app: AppState, item: QueuedRequest) -> None:
        """Queues a new or loaded request and arms its start deadline."""
        app.queue.push(item)
        if item.start_deadline is not None and item.deadline_timer is None:
            delay = max(0.0, item.start_deadline - time.time())
            item.deadline_timer = asyncio.get_running_loop().call_later(
                delay, self._start_deadline_passed, item)

    def _withdraw(self, app: AppState, item: QueuedRequest) -> None:
        """Forgets a request that was never acknowledged (its insert failed)."""
        self._requests.pop(item.request_id, None)
        item.stop_timers()
        if item.idempotency_key:
            self._keys.forget(item.idempotency_key, item.request_id)
        item.cancel_requested = True
        item.outcome = Outcome(error=error_record(errors.InternalError("not stored")))
        if not app.queue.remove(item):
            self._send_cancel(item)

    async def lookup(self, request_id: str) -> QueuedRequest | None:
        """A request by id: from memory, else from the store (completed ones)."""
        item = self._requests.get(request_id)
        if item is not None:
            return item
        record = await self.store.get_request(request_id)
        if record is None:
            return None
        if self.shared is None or record.status is Status.COMPLETED:
            return QueuedRequest.from_record(record)
        # Unfinished and held (or queued) elsewhere: followed from now on, through the
        # other servers' events, unless one of them completed it while it was being read.
        item = self._requests.get(request_id)
        if item is None:
            item = self._requests[request_id] = QueuedRequest.from_record(record)
            item.persisted = True
            if request_id in self._completed_elsewhere:
                await self.on_remote_completed(request_id)
        return item

    def position(self, item: QueuedRequest) -> int:
        app = self.apps.get(item.app_name)
        return app.queue.position(item) if app and item in app.queue else 0

    async def cancel(self, request_id: str, *, forward: bool = True) -> str:
        """fal's cancel: CANCELLATION_REQUESTED, ALREADY_COMPLETED or NOT_FOUND.

        With a shared store, a request this server does not run is also cancelled by the
        server that holds it (`forward`; that server's own call does not forward)."""
        item = await self.lookup(request_id)
        if item is None:
            return "NOT_FOUND"
        if item.status is Status.COMPLETED or item.outcome is not None:
            return "ALREADY_COMPLETED"
        item.cancel_requested = True
        app = self.apps.get(item.app_name)
        if self._take_waiting(app, item):
            cancelled = errors.RequestCancelledError("cancelled while queued")
            self.recorder.finish(item, Outcome(error=error_record(cancelled)))
        elif not self._send_cancel(item) and forward and self.shared is not None:
            event = ClusterEvent("cancel", self.shared.server_id, request_id)
            self.recorder.background(self.shared.publish(event))
        return "CANCELLATION_REQUESTED"

    @staticmethod
    def _take_waiting(app: AppState | None, item: QueuedRequest) -> bool:
        """Takes a request out of its app's queue or out of its retry backoff; False when it
        was neither (it runs, or it is done)."""
        if item.backoff_timer is not None:
            if app is not None:
                app.retrying.discard(item)
            return True
        return app is not None and app.queue.remove(item)

    def flush(self, name: str) -> int:
        """Cancels every queued request of an app (they complete with client_cancelled)."""
        app = self.apps.get(name)
        if app is None:
            raise errors.NotFoundError(f"no app named {name!r}")
        flushed = errors.RequestCancelledError("removed from the queue by a flush")
        items = [i for i in app.queue.items() if isinstance(i, QueuedRequest)]
        items.extend(app.retrying)
        for item in items:
            self._take_waiting(app, item)
            item.cancel_requested = True
            self.recorder.finish(item, Outcome(error=error_record(flushed)))
        return len(items)

    # -- the direct path ---------------------------------------------------------------

    def call_direct(
        self, endpoint_id: str, path: str, data: bytes, content_type: str, *, stream: bool
    ) -> DirectCall:
        """Queues a direct call (not stored, never retried); the caller awaits `done`."""
        app = self.resolve(endpoint_id, path)
        item = DirectCall(
            request_id=str(uuid.uuid4()), app_name=app.name, path=path, input=data,
            content_type=content_type_of(content_type), priority=Priority.NORMAL,
            seq=self._next_seq(), partials=asyncio.Queue() if stream else None,
        )
        app.queue.push(item)
        self.dispatch(app)
        return item

    # -- realtime sessions ----------------------------------------------------------

    def open_realtime(self, endpoint_id: str, path: str) -> RealtimeSession:
        """Queues a realtime session like a direct call; the caller waits for `started`."""
        app = self.resolve(endpoint_id, path)
        kind = next(e.kind for e in app.revision.endpoints if e.path == path)
        if kind != REALTIME_KIND:
            raise errors.InvalidArgumentError(
                f"{path} of {app.name} is not a realtime endpoint; call it with Run, Stream "
                "or Submit")
        item = RealtimeSession(
            request_id=f"rt-{uuid.uuid4()}", app_name=app.name, path=path, input=b"",
            content_type="", priority=Priority.NORMAL, seq=self._next_seq(),
            partials=asyncio.Queue())
        app.queue.push(item)
        self.dispatch(app)
        return item

    def realtime_input(self, session: RealtimeSession, data: bytes, ctype: str) -> None:
        runner = self._runner_of(session)
        if runner is not None:
            runner.outbox.put_nowait(RealtimeInputEvent(session.request_id, data, ctype))

    def realtime_end(self, session: RealtimeSession) -> None:
        runner = self._runner_of(session)
        if runner is not None:
            runner.outbox.put_nowait(RealtimeEndEvent(session.request_id))

    def _runner_of(self, item: WorkItem) -> RunnerHandle | None:
        runner = self.fleet.runners.get(item.runner_id) if self.fleet else None
        return runner if runner is not None and item.request_id in runner.in_flight else None

    def on_realtime_output(
        self, runner: RunnerHandle, session_id: str, data: bytes, ctype: str
    ) -> None:
        item = runner.in_flight.get(session_id)
        if not isinstance(item, RealtimeSession) or item.partials is None:
            return
        if item.partials.qsize() >= REALTIME_OUTPUT_BUFFER:  # the caller reads too slowly
            full = errors.ResourceExhaustedError(
                f"more than {REALTIME_OUTPUT_BUFFER} outputs wait for the caller; read faster")
            self.recorder.finish(item, Outcome(error=error_record(full)))
            item.cancel_requested = True
            self._send_cancel(item)
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
        app = self.apps.get(item.app_name)
        refused = error is not None and error.error_type == "runner_refused"
        if refused and app is not None and not item.cancel_requested:
            self._requeue(app, item, count_attempt=False)  # it never started: queue it again
        else:
            self.recorder.finish(item, Outcome(error=error))
        self._released(runner, app)

    def abandon(self, item: DirectCall) -> None:
        """The caller of a direct call went away: drop it from the queue or cancel it."""
        app = self.apps.get(item.app_name)
        if item.done.done() or (app is not None and app.queue.remove(item)):
            return
        item.cancel_requested = True
        self._send_cancel(item)

    # -- dispatch ----------------------------------------------------------------------

    def dispatch(self, app: AppState) -> None:
        """Hands queued work to runners with free slots, in queue order."""
        if self.fleet is None:
            return
        while (item := app.queue.peek()) is not None:
            if past_deadline(item):
                app.queue.remove(item)
                self.recorder.finish(item, Outcome(error=error_record(START_TIMEOUT)))
                continue
            runner = self.fleet.pick_runner(app, avoid=item.avoid_runner)
            if runner is None:
                break
            app.queue.remove(item)
            if self.shared is not None and isinstance(item, QueuedRequest) and item.persisted:
                runner.reserved += 1  # the slot waits for the claim
                self.recorder.background(self._claim_and_start(app, runner, item))
            else:
                self._start(app, runner, item)
        self.fleet.dispatched(app)

    def _start(self, app: AppState, runner: RunnerHandle, item: WorkItem) -> None:
        """Sends `item` to `runner` as its next attempt."""
        item.timed_out = False
        runner.assign(item)
        if isinstance(item, RealtimeSession):  # a session lasts as long as its caller wants
            item.started.set()
            return
        item.attempt_timer = asyncio.get_running_loop().call_later(
            app.settings.request_timeout_s, self._attempt_timed_out, runner, item)
        if isinstance(item, QueuedRequest):
            item.status, item.waiting_reason = Status.IN_PROGRESS, ""
            item.attempts += 1
            # A new request's INSERT carries its first attempt; a shared store's claim
            # has recorded this one.
            if item.persisted and self.shared is None:
                started = self.store.mark_started(item.request_id, item.attempts)
                self.recorder.background(started)
            item.changed.fire()

    async def _claim_and_start(
        self, app: AppState, runner: RunnerHandle, item: QueuedRequest
    ) -> None:
        """Shared store: runs a queued request once this server has claimed it. When
        another server has it (or it completed), its events tell this server's watchers."""
        assert self.shared is not None
        try:
            claimed = await self.shared.claim(item.request_id, item.attempts + 1)
        except Exception:
            runner.reserved -= 1
            log.exception("claiming request %s failed; it stays queued", item.request_id)
            app.queue.push(item)  # the next dispatch tries again
            return
        runner.reserved -= 1
        if claimed and item.cancel_requested:
            item.attempts += 1
            cancelled = errors.RequestCancelledError("cancelled before it started")
            self.recorder.finish(item, Outcome(error=error_record(cancelled)))
        elif claimed and (runner.free_slots < 1 or self.apps.get(app.name) is not app):
            item.attempts += 1
            self._requeue(app, item, count_attempt=False)  # the runner went meanwhile
        elif claimed:
            self._start(app, runner, item)
        self.dispatch(app)

    def _send_cancel(self, item: WorkItem) -> bool:
        """Asks the runner of `item` to cancel it; False when no runner here runs it."""
        runner = self._runner_of(item)
        if runner is not None:
            runner.outbox.put_nowait(CancelEvent(item.request_id))
        return runner is not None

    # -- what runners report -----------------------------------------------------------

    def on_log(self, runner: RunnerHandle, request_id: str, line: LogRecord) -> None:
        item = runner.in_flight.get(request_id)
        if isinstance(item, QueuedRequest) and len(item.logs) < MAX_LOG_LINES:
            item.add_log(line)
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
        if verdict.stop_runner and self.fleet is not None:
            runner.last_error = f"stopped after request {request_id} asked for it (stop_runner)"
            self.fleet.stop(runner)
        app = self.apps.get(item.app_name)
        never_ran = outcome.error is not None and outcome.error.error_type == "runner_refused"
        if never_ran and app is not None and not item.cancel_requested:
            self._requeue(app, item, count_attempt=False)
        elif outcome.error is not None and self._retry(
                item, "server_error" if verdict.needs_retry else None, verdict.needs_retry,
                outcome.error):
            item.avoid_runner = runner.runner_id  # fal: the retry goes to another runner
        else:
            self.recorder.finish(item, outcome)
        self._released(runner, app)

    def _released(self, runner: RunnerHandle, app: AppState | None) -> None:
        """A slot of `runner` is free: the app's next work goes out (and the fleet looks at
        the app again if it must)."""
        if app is not None:
            self.dispatch(app)
        elif self.fleet is not None:
            self.fleet.wake()

    def on_runner_lost(self, runner: RunnerHandle) -> None:
        """The runner's stream ended: its in-flight work is retried or failed."""
        lost = error_record(errors.RunnerDisconnectedError(
            f"runner {runner.runner_id} went away"))
        for request_id in list(runner.in_flight):
            item = runner.in_flight.pop(request_id)
            item.stop_timers()
            condition, error = ("timeout", timed_out_error(item)) if item.timed_out else (
                "connection_error", lost)
            if not self._retry(item, condition, None, error):
                self.recorder.finish(item, Outcome(error=error))
        app = self.apps.get(runner.app_name)
        if app is not None:
            self.dispatch(app)

    def on_startup_failure(self, app: AppState) -> None:
        """Tells watchers of the app's queued requests why they still wait."""
        reason = app.waiting_reason()
        for item in app.queue.items():
            if isinstance(item, QueuedRequest):
                item.waiting_reason = reason
        app.queue.changed.fire()

    # -- completion --------------------------------------------------------------------

    def _retry(
        self, item: WorkItem, condition: str | None, verdict: bool | None, error: ErrorRecord
    ) -> bool:
        """Schedules another attempt of a failed one when the retry rule allows it."""
        if not isinstance(item, QueuedRequest) or item.cancel_requested:
            return False
        app = self.apps.get(item.app_name)
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
        delay = backoff_s(item.attempts, self.settings.retry_backoff_base_s,
                          self.settings.retry_backoff_cap_s)
        item.runner_id, item.status = "", Status.IN_QUEUE
        item.waiting_reason = (f"attempt {item.attempts} failed ({error.error_type}: "
                               f"{error.message}); retrying in {delay:.1f} s")
        self.recorder.background(self.store.requeue(item.request_id, item.attempts))
        loop = asyncio.get_running_loop()
        item.backoff_timer = loop.call_later(delay, self._retry_now, item)
        if item.start_deadline is not None:
            item.deadline_timer = loop.call_later(
                max(0.0, item.start_deadline - time.time()), self._start_deadline_passed, item)
        app.retrying.add(item)
        item.changed.fire()
        return True

    def _retry_now(self, item: QueuedRequest) -> None:
        item.backoff_timer = None
        app = self.apps.get(item.app_name)
        if app is not None:
            app.retrying.discard(item)
        if item.outcome is not None:
            return
        if app is None:
            gone = errors.NotFoundError(f"app {item.app_name!r} was deleted")
            self.recorder.finish(item, Outcome(error=error_record(gone)))
            return
        self._release(item)
        self._enqueue(app, item)
        self.dispatch(app)

    def _attempt_timed_out(self, runner: RunnerHandle, item: WorkItem) -> None:
        """An attempt ran past request_timeout: its runner is killed, as in fal."""
        item.attempt_timer = None
        if runner.in_flight.get(item.request_id) is not item or self.fleet is None:
            return
        log.warning("request %s ran past request_timeout on runner %s; killing the runner",
                    item.request_id, runner.runner_id)
        item.timed_out = True
        self.fleet.kill(runner)

    def _start_deadline_passed(self, item: QueuedRequest) -> None:
        item.deadline_timer = None
        app = self.apps.get(item.app_name)
        waiting = self._take_waiting(app, item)
        if waiting and item.outcome is None:
            self.recorder.finish(item, Outcome(error=error_record(START_TIMEOUT)))

    def _requeue(self, app: AppState, item: WorkItem, *, count_attempt: bool) -> None:
        item.runner_id = ""
        if isinstance(item, QueuedRequest):
            item.status = Status.IN_QUEUE
            if not count_attempt:
                item.attempts -= 1
            self.recorder.background(self.store.requeue(item.request_id, item.attempts))
            self._release(item)
            item.changed.fire()
        app.queue.push(item)

    def _release(self, item: QueuedRequest) -> None:
        """Shared store: lets every server claim this queued request (it is announced)."""
        if self.shared is not None:
            self.recorder.background(self.shared.release(item.request_id))

    def _next_seq(self) -> int:
        """Microseconds of the wall clock, kept increasing: the queue stays FIFO across
        servers that share a store, as far as their clocks agree."""
        self._seq = max(self._seq + 1, time.time_ns() // 1000)
        return self._seq

    # -- what other servers sharing the store report (falrt/server/cluster.py) -------

    async def on_remote_queued(self, request_id: str) -> None:
        """A request any server may claim: queued here too (dispatch claims it)."""
        item = self._requests.get(request_id)
        if item is None:
            record = await self.store.get_request(request_id)
            if record is None or record.status is not Status.IN_QUEUE or record.owner:
                return
            item = self._requests.get(request_id)
            if item is None:
                item = self._requests[request_id] = QueuedRequest.from_record(record)
                item.persisted = True
                if item.idempotency_key:
                    self._keys.claim(item.idempotency_key, request_id)
        app = self.apps.get(item.app_name)
        if (item.outcome is not None or app is None or item in app.queue
                or item.backoff_timer is not None or item.runner_id):
            return
        item.status = Status.IN_QUEUE
        self._enqueue(app, item)
        self.dispatch(app)

    def on_remote_claimed(self, request_id: str, attempts: int) -> None:
        """Another server runs attempt `attempts` of a request."""
        item = self._requests.get(request_id)
        if item is None or item.outcome is not None or item.runner_id:
            return
        self._take_waiting(self.apps.get(item.app_name), item)
        item.stop_timers()  # the start deadline is met
        item.status, item.attempts, item.waiting_reason = Status.IN_PROGRESS, attempts, ""
        item.changed.fire()

    async def on_remote_completed(self, request_id: str) -> None:
        """Another server completed a request: its watchers here see the stored outcome."""
        item = self._requests.get(request_id)
        if item is None:
            self._completed_elsewhere[request_id] = None
            while len(self._completed_elsewhere) > 10_000:
                self._completed_elsewhere.popitem(last=False)
            return
        if item.outcome is not None:
            return
        record = await self.store.get_request(request_id)
        if record is None or record.outcome is None or item.outcome is not None:
            return
        self._take_waiting(self.apps.get(item.app_name), item)
        self._send_cancel(item)
        self.recorder.show(item, record.outcome)

    def followed(self) -> list[str]:
        """Ids of unfinished requests this server knows of but does not run."""
        return [i.request_id for i in self._requests.values()
                if i.outcome is None and not i.runner_id]

    def queue_size(self, name: str) -> int:
        """Queue-path requests of the app that are IN_QUEUE (waiting, or waiting to retry)."""
        app = self.apps.get(name)
        if app is None:
            return 0
        queued = sum(1 for item in app.queue.items() if isinstance(item, QueuedRequest))
        return queued + len(app.retrying)
