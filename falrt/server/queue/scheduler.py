"""The queue plane's front: what callers ask of requests, and what other servers report.

The scheduler stores and queues submitted requests (`submit`), queues direct calls and
realtime sessions, finds requests (`lookup`, from memory or the store), cancels and flushes
them, and applies what other servers sharing a PostgreSQL store report about theirs. It
hands work to runners through the dispatcher and never imports generated code: the edges
convert. Everything runs on the server's event loop.
"""

from __future__ import annotations

import asyncio
import logging
import time

from falrt import errors
from falrt.limits import check_payload, payload_limit
from falrt.sdk.endpoints import EndpointKind
from falrt.server.queue.dispatch import Dispatcher
from falrt.server.queue.input_check import InputChecks
from falrt.server.queue.outcomes import SubmitOptions, content_type_of, error_record
from falrt.server.queue.recorder import FOLLOWED_INSERT_WAIT_S, Recorder
from falrt.server.queue.requests import Requests
from falrt.server.queue.retries import MAX_ATTEMPTS
from falrt.server.queue.webhook_targets import TargetPolicy
from falrt.server.state.apps import Apps, AppState
from falrt.server.state.runners import RealtimeEndEvent, RealtimeInputEvent
from falrt.server.state.work import DirectCall, QueuedRequest, RealtimeSession
from falrt.server.tracing import UNTRACED, Origin, Tracing
from falrt.settings import ServerSettings
from falrt.store.base import SharedStore, Store
from falrt.store.records import (
    ClusterEvent,
    ClusterEventKind,
    Outcome,
    Priority,
    RequestRecord,
    Status,
)
from falrt.vocabulary import CancelOutcome

log = logging.getLogger(__name__)


class Scheduler:
    """Requests as callers and other servers see them. See the module docstring."""

    def __init__(
        self, apps: Apps, store: Store, shared: SharedStore | None, requests: Requests,
        recorder: Recorder, dispatcher: Dispatcher, settings: ServerSettings,
    ) -> None:
        self._apps = apps
        self._store = store
        self._shared = shared
        self._requests = requests
        self._recorder = recorder
        self._dispatcher = dispatcher
        self._settings = settings
        # An input larger than this would not fit in the runner's Assign (falrt/limits.py).
        self._payload_limit = payload_limit(settings.max_message_bytes)
        self._webhook_targets = TargetPolicy(settings.webhook_allow)
        self._input_checks: dict[str, InputChecks] = {}  # by app name, of its live revision
        self.tracing: Tracing = recorder.tracing  # the spans of requests (edges read it)

    # -- startup -----------------------------------------------------------------------

    async def load(self) -> int:
        """Loads unfinished requests from the store (after the apps); returns how many."""
        self._requests.start_seq(await self._store.max_seq())
        pending = await self._store.load_unfinished()
        for record in pending:
            app = self._apps.get(record.app_name)
            if app is None:
                continue
            item = QueuedRequest.from_record(record)
            item.persisted, item.auth = True, app.record.auth
            mine = self._shared is None or record.owner == self._shared.server_id
            if record.owner and not mine:
                self._requests.add(item)  # another server holds it: followed
                continue
            if item.status is Status.IN_PROGRESS and not await self._resume(item):
                continue
            if record.owner:
                self._dispatcher.release(item)
            self._requests.add(item)
            self._dispatcher.enqueue(app, item)
        return len(pending)

    async def _resume(self, item: QueuedRequest) -> bool:
        """A request that was running when the server stopped: its attempt counts; it is
        queued again if the retry rule allows (True), else completed (False)."""
        outcome = self.gives_up(item.attempts, no_retry=item.no_retry)
        if outcome is not None:
            if self._shared is not None:
                await self._shared.complete_owned(item.request_id, outcome, time.time())
            else:
                await self._store.complete(item.request_id, outcome, time.time())
            return False
        item.set_status(Status.IN_QUEUE)
        await self._store.requeue(item.request_id, item.attempts)
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

    # -- the queue path ----------------------------------------------------------------

    def resolve(self, endpoint_id: str, path: str) -> AppState:
        """The app an endpoint id names, checked to serve `path`. Raises NotFoundError."""
        owner, _, name = endpoint_id.partition("/")
        app = self._apps.get(name) if owner == self._settings.owner else None
        if app is None:
            raise errors.NotFoundError(
                f"no app with endpoint id {errors.quote(endpoint_id)} (ids look like "
                f"'{self._settings.owner}/APP'; `falrt apps list` shows the apps)"
            )
        if path not in app.paths:
            known = ", ".join(sorted(app.paths))
            raise errors.NotFoundError(
                f"app {name!r} has no endpoint {errors.quote(path)}; it serves {known}")
        return app

    def _check_input(self, app: AppState, path: str, data: bytes, content_type: str) -> None:
        """Raises ValidationFailedError for a JSON input its endpoint's schema refuses
        (falrt/server/queue/input_check.py), with checks compiled once per live revision."""
        checks = self._input_checks.get(app.name)
        if checks is None or checks.revision_id != app.revision.revision_id:
            checks = self._input_checks[app.name] = InputChecks.of(app.revision)
        checks.check(path, data, content_type)

    async def submit(
        self, endpoint_id: str, path: str, data: bytes, content_type: str,
        options: SubmitOptions, origin: Origin = UNTRACED,
    ) -> tuple[str, int, bool]:
        """Stores a request, queues it, dispatches; returns its id, its queue position, and
        whether an earlier Submit with the same idempotency key made it."""
        app = self.resolve(endpoint_id, path)
        check_payload(len(data), self._payload_limit, "input")
        if self._settings.input_check and not options.input_by_ref:
            self._check_input(app, path, data, content_type)
        if not self._recorder.store_health.writable:
            raise errors.StoreFullError(
                "the request was not stored: the server's store has no space left; try "
                "again once the operator has freed space")
        if options.webhook_url:
            self._webhook_targets.check_url(options.webhook_url)
        key = options.idempotency_key
        if not key:
            self._check_queue_length(app, options.max_queue_length)
            return (*await self._store_and_queue(app, path, data, content_type, options,
                                                 origin), False)
        earlier = await self._requests.keys.reserve(key)
        if earlier is not None:
            return earlier, self.position_of(earlier), True
        try:
            earlier = await self._store.find_request_by_key(key)
            if earlier is not None:
                self._requests.keys.claim(key, earlier)
                return earlier, self.position_of(earlier), True
            self._check_queue_length(app, options.max_queue_length)
            return (*await self._store_and_queue(app, path, data, content_type, options,
                                                 origin), False)
        finally:
            self._requests.keys.settle(key)

    @staticmethod
    def _check_queue_length(app: AppState, limit: int) -> None:
        if limit and len(app.queue) > limit:
            raise errors.ResourceExhaustedError(
                f"app {app.name!r} has {len(app.queue)} queued requests, more than the "
                f"max_queue_length {limit} of this call; try again later"
            )

    async def _store_and_queue(
        self, app: AppState, path: str, data: bytes, content_type: str, options: SubmitOptions,
        origin: Origin,
    ) -> tuple[str, int]:
        now = time.time()
        record = RequestRecord(
            request_id=self._requests.new_id(), app_name=app.name, path=path, input=data,
            content_type=content_type_of(content_type, options.input_by_ref),
            priority=options.priority,
            seq=self._requests.next_seq(), created_at=now, no_retry=options.no_retry,
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
        item.auth = app.record.auth
        if self.tracing.enabled:
            self.tracing.begin(item, app.name, origin, direct=False)
        self._requests.add(item)
        self._dispatcher.enqueue(app, item)
        position = app.queue.position(item)
        self._dispatcher.dispatch(app)
        # A followed request a runner took at once may be written once, completed
        # (Recorder.insert: its outcome's write is then its INSERT, or, once the INSERT was
        # queued, an UPDATE after it); a shared store's servers claim requests by their rows.
        wait = options.followed and self._shared is None and item.status is Status.IN_PROGRESS
        stored = self._recorder.insert(item, record, wait_s=FOLLOWED_INSERT_WAIT_S if wait else 0)
        try:
            await asyncio.shield(stored)
        except Exception as exc:
            if item.trace is not None:
                self.tracing.acknowledged(item, getattr(exc, "error_type", "internal_error"))
            self._withdraw(app, item)
            if isinstance(exc, errors.StoreFullError):
                raise errors.StoreFullError(f"the request was not stored: {exc}") from None
            log.exception("storing request %s failed", item.request_id)
            raise errors.InternalError("the request could not be stored; try again") from exc
        if item.trace is not None:
            self.tracing.acknowledged(item)
        return item.request_id, position

    def position_of(self, request_id: str) -> int:
        item = self._requests.get(request_id)
        return self.position(item) if item is not None else 0

    def _withdraw(self, app: AppState, item: QueuedRequest) -> None:
        """Forgets a request that was never acknowledged (its insert failed)."""
        self._requests.forget(item)
        item.stop_timers()
        item.cancel_requested = True
        item.outcome = Outcome(error=error_record(errors.InternalError("not stored")))
        if not app.queue.remove(item):
            self._dispatcher.send_cancel(item)

    async def lookup(self, request_id: str) -> QueuedRequest | None:
        """A request by id: from memory, else from the store (completed ones)."""
        item = self._requests.get(request_id)
        if item is not None:
            return item
        record = await self._store.get_request(request_id)
        if record is None:
            return None
        if self._shared is None or record.status is Status.COMPLETED:
            return QueuedRequest.from_record(record)
        # Unfinished and held (or queued) elsewhere: followed from now on, through the
        # other servers' events, unless one of them completed it while it was being read.
        item = self._requests.get(request_id)
        if item is None:
            item = QueuedRequest.from_record(record)
            item.persisted = True
            self._requests.add(item)
            if self._requests.was_completed_elsewhere(request_id):
                await self.on_remote_completed(request_id)
        return item

    def position(self, item: QueuedRequest) -> int:
        app = self._apps.get(item.app_name)
        return app.queue.position(item) if app and item in app.queue else 0

    async def cancel(self, request_id: str, *, forward: bool = True) -> CancelOutcome:
        """fal's cancel: CANCELLATION_REQUESTED, ALREADY_COMPLETED or NOT_FOUND.

        With a shared store, a request this server does not run is also cancelled by the
        server that holds it (`forward`; that server's own call does not forward)."""
        item = await self.lookup(request_id)
        if item is None:
            return CancelOutcome.NOT_FOUND
        if item.status is Status.COMPLETED or item.outcome is not None:
            return CancelOutcome.ALREADY_COMPLETED
        item.cancel_requested = True
        if self._dispatcher.take_waiting(item):
            cancelled = errors.RequestCancelledError("cancelled while queued")
            self._recorder.finish(item, Outcome(error=error_record(cancelled)))
        elif not self._dispatcher.send_cancel(item) and forward and self._shared is not None:
            event = ClusterEvent(ClusterEventKind.CANCEL, self._shared.server_id, request_id)
            self._recorder.background(self._shared.publish(event))
        return CancelOutcome.CANCELLATION_REQUESTED

    def flush(self, name: str) -> int:
        """Cancels every queued request of an app (they complete with client_cancelled)."""
        app = self._apps.get(name)
        if app is None:
            raise errors.NotFoundError(f"no app named {errors.quote(name)}")
        flushed = errors.RequestCancelledError("removed from the queue by a flush")
        items = [i for i in app.queue.items() if isinstance(i, QueuedRequest)]
        items.extend(app.retrying)
        for item in items:
            self._dispatcher.take_waiting(item)
            item.cancel_requested = True
            self._recorder.finish(item, Outcome(error=error_record(flushed)))
        return len(items)

    # -- the direct path ---------------------------------------------------------------

    def call_direct(
        self, endpoint_id: str, path: str, data: bytes, content_type: str, *, stream: bool,
        origin: Origin = UNTRACED, by_ref: bool = False,
    ) -> DirectCall:
        """Queues a direct call (not stored, never retried); the caller awaits `done`.
        `by_ref`: `data` is a checked PayloadRef (SubmitOptions.input_by_ref)."""
        app = self.resolve(endpoint_id, path)
        check_payload(len(data), self._payload_limit, "input")
        if self._settings.input_check and not by_ref:
            self._check_input(app, path, data, content_type)
        item = DirectCall(
            request_id=self._requests.new_id(), app_name=app.name, path=path, input=data,
            content_type=content_type_of(content_type, by_ref), priority=Priority.NORMAL,
            seq=self._requests.next_seq(), partials=asyncio.Queue() if stream else None,
            done=self._dispatcher.loop.create_future(),
        )
        if self.tracing.enabled:
            self.tracing.begin(item, app.name, origin, direct=True)
        self._dispatcher.enqueue(app, item)
        self._dispatcher.dispatch(app)
        return item

    # -- realtime sessions ----------------------------------------------------------

    def open_realtime(self, endpoint_id: str, path: str) -> RealtimeSession:
        """Queues a realtime session like a direct call; the caller waits for `started`."""
        app = self.resolve(endpoint_id, path)
        kind = next(e.kind for e in app.revision.endpoints if e.path == path)
        if kind != EndpointKind.REALTIME.number:
            raise errors.InvalidArgumentError(
                f"{path} of {app.name} is not a realtime endpoint; call it with Run, Stream "
                "or Submit")
        item = RealtimeSession(
            request_id=f"rt-{self._requests.new_id()}", app_name=app.name, path=path, input=b"",
            content_type="", priority=Priority.NORMAL, seq=self._requests.next_seq(),
            partials=asyncio.Queue())
        self._dispatcher.enqueue(app, item)
        self._dispatcher.dispatch(app)
        return item

    def realtime_input(self, session: RealtimeSession, data: bytes, ctype: str) -> None:
        """Forwards an input to the session's runner; one over the payload limit ends the
        session with its error instead (it would not fit in the runner's message)."""
        try:
            check_payload(len(data), self._payload_limit, "realtime input")
        except errors.PayloadTooLargeError as exc:
            self.abandon(session)  # (cancelled on its runner, then ended with the error)
            self._recorder.finish(session, Outcome(error=error_record(exc)))
            return
        runner = self._dispatcher.runner_of(session)
        if runner is not None:
            runner.outbox.put_nowait(RealtimeInputEvent(session.request_id, data, ctype))

    def realtime_end(self, session: RealtimeSession) -> None:
        runner = self._dispatcher.runner_of(session)
        if runner is not None:
            runner.outbox.put_nowait(RealtimeEndEvent(session.request_id))

    def abandon(self, item: DirectCall) -> None:
        """The caller of a direct call went away: drop it from the queue or cancel it."""
        app = self._apps.get(item.app_name)
        if item.done.done() or (app is not None and app.queue.remove(item)):
            return
        item.cancel_requested = True
        self._dispatcher.send_cancel(item)

    # -- what other servers sharing the store report (falrt/server/control/cluster.py) -

    async def on_remote_queued(self, request_id: str) -> None:
        """A request any server may claim: queued here too (dispatch claims it)."""
        item = self._requests.get(request_id)
        if item is None:
            record = await self._store.get_request(request_id)
            if record is None or record.status is not Status.IN_QUEUE or record.owner:
                return
            item = self._requests.get(request_id)
            if item is None:
                item = QueuedRequest.from_record(record)
                item.persisted = True
                self._requests.add(item)
        app = self._apps.get(item.app_name)
        if (item.outcome is not None or app is None or item in app.queue
                or item.backoff_timer is not None or item.runner_id):
            return
        item.set_status(Status.IN_QUEUE)
        self._dispatcher.enqueue(app, item)
        self._dispatcher.dispatch(app)

    def on_remote_claimed(self, request_id: str, attempts: int) -> None:
        """Another server runs attempt `attempts` of a request."""
        item = self._requests.get(request_id)
        if item is None or item.outcome is not None or item.runner_id:
            return
        self._dispatcher.take_waiting(item)
        item.stop_timers()  # the start deadline is met
        item.set_status(Status.IN_PROGRESS)
        item.attempts, item.waiting_reason = attempts, ""
        item.changed.fire()

    async def on_remote_completed(self, request_id: str) -> None:
        """Another server completed a request: its watchers here see the stored outcome."""
        item = self._requests.get(request_id)
        if item is None:
            self._requests.completed_elsewhere(request_id)
            return
        if item.outcome is not None:
            return
        record = await self._store.get_request(request_id)
        if record is None or record.outcome is None or item.outcome is not None:
            return
        self._dispatcher.take_waiting(item)
        self._dispatcher.send_cancel(item)
        self._recorder.show(item, record.outcome)

    def followed(self) -> list[str]:
        """Ids of unfinished requests this server knows of but does not run."""
        return self._requests.followed()

    def changes(self, item: QueuedRequest) -> list[asyncio.Future[None]]:
        """Futures completed when what a watcher of `item` sees may change: the request,
        and while it is queued its app's queue (its position)."""
        sources = [item.changed.wait()]
        app = self._apps.get(item.app_name)
        if item.status is Status.IN_QUEUE and app is not None:
            sources.append(app.queue.changed.wait())
        return sources

    def app_deleted(self, app: AppState) -> None:
        """Ends the work a deleted app had waiting (its rows go with the app)."""
        gone = errors.NotFoundError(f"app {app.name!r} was deleted")
        self._input_checks.pop(app.name, None)
        for item in [*app.queue.items(), *app.retrying]:
            app.queue.remove(item)
            self._recorder.finish(item, Outcome(error=error_record(gone)), store=False)

    def queue_size(self, name: str) -> int:
        """Queue-path requests of the app that are IN_QUEUE (waiting, or waiting to retry)."""
        app = self._apps.get(name)
        if app is None:
            return 0
        queued = sum(1 for item in app.queue.items() if isinstance(item, QueuedRequest))
        return queued + len(app.retrying)


__all__ = ["Scheduler"]
