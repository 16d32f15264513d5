"""Several servers on one PostgreSQL store: leases, claims, events and take-over.

Every server holds a lease in `falrt.servers`, renewed every third of `cluster_lease_s`.
A queued request is claimed in the database before it runs (`SharedStore.claim`), so one
server at a time runs it; the server that holds a request is the only one whose writes
about it apply. Servers tell each other what changed with PostgreSQL notifications
(`ClusterEvent`): each keeps every queued request in its own queue (so positions and
`queue size` count the whole cluster), follows requests other servers run (so `Watch` on
any server sees them complete), and installs the apps others deploy (their bundles are in
the database). When a lease expires, any server takes over its requests: cut attempts are
retried by the rule of a server crash, queued ones go back to every queue. It also holds
the scaling leases of apps (one server at a time makes an app's scaling decisions), and
tells the fleet which it leads (`Fleet.update_leases`).

The exact rules, and what is still per server, are in docs/stores.md.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from falrt import bundle
from falrt.backends.environments import Environments
from falrt.server.control.apps import AppControl
from falrt.server.fleet.fleet import Fleet
from falrt.server.fleet.leases import AppLease
from falrt.server.queue.recorder import Recorder
from falrt.server.queue.scheduler import Scheduler
from falrt.server.state.apps import Apps
from falrt.server.tasks import Tasks
from falrt.settings import ServerSettings
from falrt.store.records import ClusterEvent, ClusterEventKind, Revision, Status

if TYPE_CHECKING:
    import asyncpg

    from falrt.store.postgres import PostgresStore

log = logging.getLogger(__name__)

SERVER_ID_FILE = "server-id"


def server_id(data_dir: Path) -> str:
    """This server's id, kept in its data directory so that a restarted server resumes
    what it held at once (instead of after its lease expires)."""
    path = data_dir / SERVER_ID_FILE
    try:
        return path.read_text().strip()
    except FileNotFoundError:
        data_dir.mkdir(parents=True, exist_ok=True)
        new = f"srv-{uuid.uuid4().hex[:12]}"
        path.write_text(new + "\n")
        return new


@dataclass(frozen=True)
class ScalingLead:
    """Who makes an app's scaling decisions (`falrt apps get`): alone on its store, this
    server; on a shared store, the live server that holds the app's scaling lease."""

    server_id: str  # "" when no live server holds the lease now
    this_server: bool
    shared: bool = False
    lease_until: float = 0.0  # (shared) when the lease ends unless it is renewed


def alone_lead(sid: str) -> Callable[[str], Awaitable[ScalingLead]]:
    """`scaling_lead` of a server alone on its store: it leads every app."""
    async def lead(app_name: str) -> ScalingLead:
        return ScalingLead(sid, this_server=True)

    return lead


class Cluster:
    """This server's membership of the servers sharing a PostgreSQL store.

    Tasks (from `start`): following the other servers' events, renewing the lease, taking
    over expired leases, and reconnecting the listener when it breaks; `close` cancels them,
    then gives up the lease."""

    def __init__(
        self, store: PostgresStore, apps: Apps, control: AppControl, scheduler: Scheduler,
        recorder: Recorder, environments: Environments, settings: ServerSettings,
        sweep_keys: Callable[[set[str]], Awaitable[None]] | None = None,
        fleet: Fleet | None = None,
    ) -> None:
        self._store = store
        self._fleet = fleet  # told which apps this server leads (None: no scaling leases)
        # Revokes the runner keys of servers that are gone, given the live ones.
        self._sweep_keys = sweep_keys
        self._servers: set[str] = set()  # the live servers the last take-over saw
        self._apps = apps
        self._control = control
        self._scheduler = scheduler
        self._recorder = recorder
        self._environments = environments
        self._settings = settings
        self._events: asyncio.Queue[ClusterEvent] = asyncio.Queue()
        self._listener: asyncpg.Connection | None = None
        self._tasks = Tasks("cluster")
        self._closing = False

    async def join(self, sid: str) -> None:
        """Takes a lease as server `sid` and starts listening; call before the apps and
        requests are loaded."""
        await self._store.join(sid, self._settings.cluster_lease_s)
        self._listener = await self._store.listen(self._events.put_nowait, self._lost)
        for app in await self._store.list_apps():
            revision = await self._store.get_revision(app.revision_id)
            if revision is None:
                continue
            try:
                await self.prepare(revision)
            except Exception:  # its runners fail to start, and watchers are told why
                log.exception("cannot prepare %s %s here", app.name, app.revision_id)
        log.info("joined the servers sharing the store as %s", sid)

    def start(self) -> None:
        """Starts following events, renewing the lease and taking over expired ones."""
        self._tasks.spawn(self._follow(), name="falrt-cluster-events")
        self._tasks.spawn(self._keep_lease(), name="falrt-cluster-lease")
        self._tasks.spawn(self._take_over_loop(), name="falrt-cluster-take-over")
        if self._fleet is not None:
            self._tasks.spawn(self._keep_app_leases(self._fleet), name="falrt-scaling-leases")

    async def close(self) -> None:
        """Stops, and gives up the lease (what this server still holds is taken over)."""
        self._closing = True
        await self._tasks.close()
        if self._listener is not None:
            await self._listener.close()
        await self._store.leave()

    async def prepare(self, revision: Revision) -> None:
        """Makes a revision runnable here: its bundle (from the store) and environment."""
        target = self._settings.bundles_dir / revision.bundle_sha256
        if not await asyncio.to_thread(target.is_dir):
            data = await self._store.get_bundle(revision.bundle_sha256)
            if data is None:
                raise RuntimeError(f"bundle {revision.bundle_sha256} of {revision.app_name} "
                                   "is not in the store")
            await asyncio.to_thread(bundle.unpack, data, target,
                                    max_bytes=self._settings.max_bundle_bytes)

        async def show(line: str) -> None:
            log.info("environment of %s: %s", revision.app_name, line)

        await self._environments.ensure(revision.config.requirements, show,
                                        dockerfile=revision.config.dockerfile)

    # -- events ------------------------------------------------------------------------

    async def _follow(self) -> None:
        while True:
            event = await self._events.get()
            try:
                await self._apply(event)
            except Exception:
                log.exception("applying %s from server %s failed", event.kind, event.sender)

    def _lost(self) -> None:
        """The event connection broke: events may have been missed."""
        if self._closing:
            return
        log.error("lost the connection that hears the other servers; reconnecting")
        self._tasks.spawn(self._relisten(), name="falrt-cluster-relisten")

    async def _relisten(self) -> None:
        delay = 0.5
        while True:
            try:
                self._listener = await self._store.listen(self._events.put_nowait, self._lost)
                await self._resync()
            except Exception as exc:
                log.warning("reconnecting to hear the other servers failed (%s); again in "
                            "%.1f s", exc, delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 10.0)
                continue
            log.info("hearing the other servers again")
            return

    async def _resync(self) -> None:
        """Catches up with what the events missed: apps, the queue, followed requests."""
        scheduler = self._scheduler
        names = {app.name for app in await self._store.list_apps()}
        for name in names | set(self._apps.names()):
            await self._sync_app(name)
        for record in await self._store.load_unfinished():
            if record.status is Status.IN_QUEUE and not record.owner:
                await scheduler.on_remote_queued(record.request_id)
            elif record.status is Status.IN_PROGRESS and record.owner != self._store.server_id:
                scheduler.on_remote_claimed(record.request_id, record.attempts)
        for request_id in scheduler.followed():
            await scheduler.on_remote_completed(request_id)

    async def _apply(self, event: ClusterEvent) -> None:
        scheduler = self._scheduler
        match event.kind:
            case ClusterEventKind.QUEUED:
                await scheduler.on_remote_queued(event.request_id)
            case ClusterEventKind.CLAIMED:
                scheduler.on_remote_claimed(event.request_id, event.attempts)
            case ClusterEventKind.COMPLETED:
                await scheduler.on_remote_completed(event.request_id)
            case ClusterEventKind.CANCEL:
                await scheduler.cancel(event.request_id, forward=False)
            case ClusterEventKind.APP:
                await self._sync_app(event.app)
            case _:
                raise AssertionError(f"unexpected cluster event {event!r}")

    async def _sync_app(self, name: str) -> None:
        """Another server deployed or deleted an app: the same here."""
        record = await self._store.get_app(name)
        if record is None:
            if name in self._apps:
                await self._control.delete(name, stored=False)
            return
        current = self._apps.get(name)
        if current is not None and current.revision.revision_id == record.revision_id:
            if current.record.scale != record.scale:
                self._control.rescale(record)  # `falrt apps scale` on another server
            return
        revision = await self._store.get_revision(record.revision_id)
        if revision is None:
            return
        await self.prepare(revision)
        self._control.activate(record, revision)

    # -- leases ------------------------------------------------------------------------

    async def _keep_lease(self) -> None:
        lease_s = self._settings.cluster_lease_s
        while True:
            await asyncio.sleep(lease_s / 3)
            try:
                held = await self._store.renew(lease_s)
            except Exception:
                log.exception("renewing the lease failed; trying again")
                continue
            if not held:
                # Another server has taken over what this one held; its writes about those
                # requests no longer apply. Stop, as a database client that lost its lock.
                log.critical("this server's lease expired and its requests were taken "
                             "over; stopping")
                os.kill(os.getpid(), signal.SIGTERM)
                return

    async def scaling_lead(self, app_name: str) -> ScalingLead:
        """The app's scaling lead as the store has it now (one read)."""
        found = await self._store.scaling_lead(app_name)
        if found is None:
            return ScalingLead("", this_server=False, shared=True)
        holder, until = found
        return ScalingLead(holder, this_server=holder == self._store.server_id, shared=True,
                           lease_until=until)

    async def _keep_app_leases(self, fleet: Fleet) -> None:
        """Every quarter of the lease: takes or renews the scaling lease of every app for
        three quarters of it, so that a holder that dies has its apps taken over within
        the lease; a renewal that fails leads nothing until the next one succeeds. An app
        the fleet meets for the first time (a deploy) is asked for at once."""
        lease_s = self._settings.cluster_lease_s
        new_app = fleet.leases.new_app
        while True:
            new_app.clear()
            names = self._apps.names()
            try:
                held = await self._store.hold_apps(names, lease_s * 3 / 4, list(fleet.runners))
            except Exception:
                log.exception("renewing the scaling leases failed; leading no app for now")
                held = {}
            fleet.update_leases({n: AppLease(*counts) for n, counts in held.items()}, names)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(new_app.wait(), lease_s / 4)

    async def _take_over_loop(self) -> None:
        while True:
            await asyncio.sleep(self._settings.cluster_lease_s / 2)
            try:
                await self.take_over()
            except Exception:
                log.exception("taking over expired leases failed")

    async def take_over(self) -> None:
        """Takes over the requests of servers whose lease expired."""
        queued, completed, owed = await self._store.take_over(
            lambda record: Scheduler.gives_up(record.attempts, no_retry=record.no_retry))
        if queued or completed:
            log.warning("took over %d requests of stopped servers (%d queued again, %d "
                        "completed)", len(queued) + len(completed), len(queued), len(completed))
        for request_id in queued:
            await self._scheduler.on_remote_queued(request_id)
        for request_id in completed:
            await self._scheduler.on_remote_completed(request_id)
        await self._recorder.send_owed_webhooks(owed)
        live = await self._store.live_servers()
        if self._sweep_keys is not None and self._servers - live:
            await self._sweep_keys(live)  # their runners' keys are no one's now
        self._servers = live
