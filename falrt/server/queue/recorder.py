"""How requests end: outcomes stored, then shown to watchers and sent to webhooks.

The recorder owns the background store writes of the request path, keeps completed requests
in memory for a while (their later reads go to the store), deletes expired results, and
keeps webhooks owed across restarts. Loop-affine.

A new request is stored through `insert`. One whose caller follows it to its result
(Subscribe) and that a runner took at once may wait a little (`FOLLOWED_INSERT_WAIT_S`) for its
outcome: if it ends meanwhile, its row is written once, completed, instead of inserted and then
updated (one commit, and at low load one fsync, instead of two). Its caller is answered only
once that write is durable, as any other; a crash before it loses only a request nobody was
told of (it may have run: the queue path runs a request at least once).

A result is shown only once it is stored. A result whose write fails is kept in memory (its
request still shows IN_PROGRESS) and written again: once the store can write (after a full
disk, `StoreHealth` says when) or after a backoff (any other failure). If the server stops
first, the request runs again after the restart, as after a crash.

Tasks: the housekeeping loop (from `start`) and one task per background store write;
`close` waits for the pending writes (at most `shutdown_grace_s`), then cancels the rest.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections.abc import Awaitable
from dataclasses import dataclass
from typing import Any

from falrt import errors
from falrt.server.metrics import Metrics
from falrt.server.queue.outcomes import WebhookSink, with_logs
from falrt.server.queue.requests import Requests
from falrt.server.queue.store_health import StoreHealth
from falrt.server.state.work import DirectCall, QueuedRequest, WorkItem
from falrt.server.tasks import Tasks
from falrt.server.tracing import Tracing
from falrt.settings import ServerSettings
from falrt.store.base import SharedStore, Store
from falrt.store.records import ClusterEvent, ClusterEventKind, Outcome, RequestRecord, Status

log = logging.getLogger(__name__)

# Completed requests stay in memory this long for watchers; later reads go to the store.
COMPLETED_IN_MEMORY_S = 120.0
# A result whose write failed for another reason than a full store is written again after
# this long, doubling up to the cap.
REWRITE_FIRST_S = 0.2
REWRITE_MAX_S = 5.0
# How long a followed request's INSERT waits for its outcome (see the module docstring): its
# caller's first answer comes at most this much later for a request that runs longer.
FOLLOWED_INSERT_WAIT_S = 0.025


@dataclass(slots=True)
class _Unstored:
    """A new request whose INSERT waits for its outcome (`Recorder.insert`)."""

    item: QueuedRequest
    record: RequestRecord
    durable: asyncio.Future[None]  # resolved once its row is committed
    timer: asyncio.TimerHandle | None = None


class Recorder:
    """Records outcomes; see the module docstring."""

    def __init__(
        self, store: Store, settings: ServerSettings, requests: Requests,
        webhooks: WebhookSink, shared: SharedStore | None, tasks: Tasks,
        store_health: StoreHealth, metrics: Metrics | None = None,
        tracing: Tracing | None = None,
    ) -> None:
        self.store = store
        self.tracing = tracing or Tracing()
        self._metrics = metrics  # None: no metrics (`--no-metrics`)
        self.store_health = store_health
        self.settings = settings
        self.webhooks = webhooks
        self.shared = shared  # several servers share the store (falrt/server/control/cluster.py)
        self._requests = requests
        self._tasks = tasks
        self._unstored: dict[str, _Unstored] = {}  # by request id

    def start(self) -> None:
        """Starts deleting expired results."""
        self._tasks.spawn(self._keep_house(), name="falrt-housekeeping", essential=True)

    async def close(self) -> None:
        """Waits for the pending store writes (at most `shutdown_grace_s`: results kept for
        a full store may never be written), then stops the rest and the housekeeping."""
        for request_id in list(self._unstored):
            self._insert_waiting(request_id)
        try:
            await asyncio.wait_for(self._tasks.drain(), self.settings.shutdown_grace_s)
        except TimeoutError:
            log.warning("store writes did not finish before the server stopped; requests "
                        "whose results were not stored run again after the restart")
        await self._tasks.close()
        await self.store_health.close()

    def insert(
        self, item: QueuedRequest, record: RequestRecord, *, wait_s: float = 0.0,
    ) -> asyncio.Future[None]:
        """Stores a new request (`record`, with `item`'s status and attempts when it is
        written); the future resolves once its row is durable, and fails if it could not be
        written. `wait_s`: the write waits up to that long for the request's outcome (see the
        module docstring); a request that ends meanwhile is written completed, and shown
        COMPLETED once that write has committed, before the future resolves."""
        if not wait_s:
            return self._insert_now(item, record)
        loop = asyncio.get_running_loop()
        unstored = _Unstored(item, record, loop.create_future())
        unstored.timer = loop.call_later(wait_s, self._insert_waiting, item.request_id)
        self._unstored[item.request_id] = unstored
        return unstored.durable

    def _insert_now(self, item: QueuedRequest, record: RequestRecord) -> asyncio.Future[None]:
        record.status, record.attempts = item.status, item.attempts
        item.persisted = True
        return self.background(self.store.insert_request(record))

    def _insert_waiting(self, request_id: str) -> None:
        """A waiting INSERT whose request has not ended (or the server stops): written as
        the request stands."""
        unstored = self._unstored.pop(request_id, None)
        if unstored is not None:
            _chain(self._insert_now(unstored.item, unstored.record), unstored.durable)

    def _insert_completed(self, unstored: _Unstored) -> None:
        """A waiting INSERT whose request has ended: one write, of the completed row."""
        assert unstored.timer is not None
        unstored.timer.cancel()
        item, record = unstored.item, unstored.record
        record.status, record.attempts = Status.COMPLETED, item.attempts
        record.outcome, record.completed_at = item.outcome, time.time()
        item.persisted = True
        stored = self.background(self.store.insert_request(record))
        stored.add_done_callback(functools.partial(self._inserted_completed, item))
        item.storing = stored
        _chain(stored, unstored.durable)

    def _inserted_completed(self, item: QueuedRequest, stored: asyncio.Future[Any]) -> None:
        """Shown if committed; else nothing is: the request was never acknowledged, and its
        Submit answers the failure (falrt/server/queue/scheduler.py withdraws it)."""
        item.storing = None
        if not stored.cancelled() and stored.exception() is None:
            self._completed(item)

    def finish(self, item: WorkItem, outcome: Outcome, *, store: bool = True) -> None:
        item.stop_timers()
        if item.trace is not None:
            self.tracing.finished(item, outcome)
        if isinstance(item, DirectCall):
            if not item.done.done():
                if self._metrics is not None:
                    self._metrics.finished(item, outcome)
                item.done.set_result(outcome)
                if item.partials is not None:
                    item.partials.put_nowait(None)
        elif isinstance(item, QueuedRequest) and item.outcome is None:
            self._finish_queued(item, outcome, store=store)

    def _finish_queued(self, item: QueuedRequest, outcome: Outcome, *, store: bool) -> None:
        """Stores a queued request's outcome (`store`: else its app was deleted) and then
        shows it."""
        if self._metrics is not None:
            self._metrics.finished(item, outcome)
        item.outcome = with_logs(item, outcome)
        if self._unstored and item.request_id in self._unstored:
            if store:
                self._insert_completed(self._unstored.pop(item.request_id))
                return
            self._insert_waiting(item.request_id)  # (as it stands: its rows go with the app)
        if store and self.shared is None and item.persisted:
            # The write is queued now (after the request's INSERT: stores apply writes in
            # call order), and the outcome shown from its future's callback once it is
            # committed: no task, no extra turn of the loop. (A request whose INSERT is not
            # queued yet, ended while Submit dispatches it, goes the task's way: its write
            # is queued on a later turn.)
            stored = self.background(
                self.store.complete(item.request_id, item.outcome, time.time()))
            stored.add_done_callback(functools.partial(self._stored, item))
            item.storing = stored
        else:
            self.background(self._store_outcome(item, store=store))

    def _stored(self, item: QueuedRequest, stored: asyncio.Future[Any]) -> None:
        """The outcome's write ended: shown if it was committed, else kept and written
        again."""
        item.storing = None
        if stored.cancelled():
            return
        if (error := stored.exception()) is not None:
            self.background(self._write_again(item, error))
        else:
            self._completed(item)

    async def _store_outcome(self, item: QueuedRequest, *, store: bool) -> None:
        try:
            await self._complete(item, store=store)
        except Exception as exc:
            await self._write_again(item, exc)

    async def _write_again(self, item: QueuedRequest, error: BaseException) -> None:
        """Writes a kept result again until it is stored (see the module docstring)."""
        wait = REWRITE_FIRST_S
        while True:
            log.warning("storing the result of request %s failed (%s); it is kept and "
                        "written again", item.request_id, error)
            if isinstance(error, errors.StoreFullError):
                await self.store_health.until_writable()
            else:
                await asyncio.sleep(wait)
                wait = min(2 * wait, REWRITE_MAX_S)
            try:
                await self._complete(item, store=True)
            except Exception as exc:
                error = exc
            else:
                return

    async def _complete(self, item: QueuedRequest, *, store: bool) -> None:
        assert item.outcome is not None
        if store and self.shared is not None:
            # An outcome of an attempt counts only while this server holds the request;
            # a waiting one (cancelled, flushed, past its deadline) may be ended by any.
            waiting = item.status is Status.IN_QUEUE
            if not await self.shared.complete_owned(
                    item.request_id, item.outcome, time.time(), queued=waiting):
                await self._completed_elsewhere(item)
                return
        elif store:
            await self.store.complete(item.request_id, item.outcome, time.time())
        self._completed(item)

    def _completed(self, item: QueuedRequest) -> None:
        assert item.outcome is not None
        self.show(item, item.outcome)
        if item.webhook_url:
            self._send_webhook(item.webhook_url, item.request_id, item.outcome)

    def show(self, item: QueuedRequest, outcome: Outcome) -> None:
        """Shows a stored outcome to watchers and keeps it in memory for a while."""
        item.outcome = outcome
        item.set_status(Status.COMPLETED)
        item.changed.fire()
        keep_s = min(COMPLETED_IN_MEMORY_S, self.settings.result_retention_s)
        asyncio.get_running_loop().call_later(keep_s, self._forget, item)

    async def _completed_elsewhere(self, item: QueuedRequest) -> None:
        """Shared store: another server holds the request (it claimed a queued request this
        one was cancelling), or completed it first. Watchers see what the store holds; a
        cancel goes on to the holder."""
        assert self.shared is not None
        record = await self.store.get_request(item.request_id)
        if record is not None and record.outcome is not None:
            self.show(item, record.outcome)
            return
        log.info("request %s is held by another server; this server's outcome is dropped",
                 item.request_id)
        item.outcome, item.runner_id = None, ""
        item.set_status(Status.IN_PROGRESS if record is None else record.status)
        if item.cancel_requested:
            event = ClusterEvent(ClusterEventKind.CANCEL, self.shared.server_id, item.request_id)
            self.background(self.shared.publish(event))
        item.changed.fire()

    async def _keep_house(self) -> None:
        """Deletes completed requests older than the retention time, until cancelled.

        Runs every quarter of the retention time (at least every minute, at most every
        0.25 s); a failure is logged and the next round runs as usual.
        """
        retention_s = self.settings.result_retention_s
        while True:
            await asyncio.sleep(min(60.0, max(0.25, retention_s / 4)))
            try:
                deleted = await self.store.delete_completed_before(time.time() - retention_s)
            except Exception:
                log.exception("deleting expired results failed")
                continue
            if deleted:
                log.info("deleted %d results older than %.0f s", deleted, retention_s)

    def _send_webhook(self, url: str, request_id: str, outcome: Outcome) -> None:
        """Hands a completed request to the webhook sender; the store keeps it owed until the
        delivery ends, so a restart sends it again (receivers must be idempotent, as fal's)."""
        def finished() -> None:
            self.background(self.store.webhook_done(request_id))

        self.webhooks.submit(url, request_id, outcome, on_finished=finished)

    async def resend_webhooks(self) -> int:
        """Sends again the webhooks a previous run of the server still owed."""
        owed = await self.store.load_pending_webhooks()
        await self.send_owed_webhooks(owed)
        return len(owed)

    async def send_owed_webhooks(self, owed: list[RequestRecord]) -> None:
        for record in owed:
            if record.outcome is not None:
                self._send_webhook(record.webhook_url, record.request_id, record.outcome)

    def _forget(self, item: QueuedRequest) -> None:
        """Drops a completed request from memory; later reads go to the store."""
        self._requests.forget(item)

    def background(self, work: Awaitable[Any]) -> asyncio.Future[Any]:
        """Runs a store write (or another short piece of work) as the recorder's task; a
        failure is logged."""
        return self._tasks.spawn(work)


def _chain(source: asyncio.Future[Any], target: asyncio.Future[None]) -> None:
    """Resolves `target` as `source` ends (its failure passed on)."""
    def done(source: asyncio.Future[Any]) -> None:
        if target.done():
            return
        if source.cancelled():
            target.cancel()
        elif (error := source.exception()) is not None:
            target.set_exception(error)
        else:
            target.set_result(None)

    source.add_done_callback(done)
