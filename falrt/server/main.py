"""`falrt server`: assembles the store, scheduler, fleet and gRPC services, and runs them.

Shutdown is ordered: no new calls (health NOT_SERVING, the HTTP listeners stop accepting),
stop scaling, drain runners (their in-flight requests finish while the
server still serves their streams), stop the gRPC server, flush store writes, close.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import ssl
import sys
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar, cast

import grpc
import uvloop
from grpc import aio
from grpc_health.v1 import health, health_pb2_grpc
from grpc_reflection.v1alpha import reflection, reflection_pb2_grpc

from falrt.backends import create_backend
from falrt.backends.base import Backend
from falrt.backends.environments import EnvironmentBuilder, Environments, ImageEnvironments
from falrt.client import credentials
from falrt.gpus import Gpu, GpuAllocator, GpuMonitor, discover
from falrt.server import gc_tuning
from falrt.server.api import files_service, rpc, runner_stream
from falrt.server.api.auth import Authenticator
from falrt.server.api.control_service import ControlService
from falrt.server.api.health import HealthService
from falrt.server.api.payload_refs import PayloadRefs
from falrt.server.api.queue_service import QueueService
from falrt.server.api.runner_link import RunnerLinkService
from falrt.server.control.apps import AppControl
from falrt.server.control.cluster import Cluster, alone_lead, server_id
from falrt.server.control.deploy import Deployer
from falrt.server.control.health import ServerHealth
from falrt.server.files import FilePlane, open_files
from falrt.server.fleet.events import FleetEvents
from falrt.server.fleet.fleet import Fleet
from falrt.server.fleet.secret_box import SecretBox
from falrt.server.http.gateway import Gateway
from falrt.server.http.observe import Observed
from falrt.server.http.serve import HttpEdge, ListenError, check_addresses
from falrt.server.http.ui.dashboard import Dashboard
from falrt.server.metrics import Metrics, StateCollector
from falrt.server.queue.dispatch import Dispatcher
from falrt.server.queue.recorder import Recorder
from falrt.server.queue.requests import Requests
from falrt.server.queue.scheduler import Scheduler
from falrt.server.queue.store_health import StoreHealth
from falrt.server.queue.webhooks import KEY_FILE, DeliverySettings, SigningKey, WebhookSender
from falrt.server.state.apps import Apps
from falrt.server.state.keys import new_key
from falrt.server.tasks import Tasks
from falrt.server.tracing import Tracing
from falrt.settings import ServerSettings, advertised
from falrt.store import POSTGRES_SCHEMES, create_store
from falrt.store.base import SharedStore, Store
from falrt.tls import TlsError, runner_env, server_credentials
from falrt.v1 import control_pb2, control_pb2_grpc, queue_pb2, queue_pb2_grpc, runner_pb2_grpc
from falrt.vocabulary import KeyScope

log = logging.getLogger(__name__)
ADMIN_KEY_FILE = "admin.key"
HEALTH_REFRESH_S = 1.0
SERVICES = (
    queue_pb2.DESCRIPTOR.services_by_name["Queue"].full_name,
    control_pb2.DESCRIPTOR.services_by_name["Control"].full_name,
    files_service.SERVICE,
)


T = TypeVar("T")


class StartupError(Exception):
    """The server cannot start (bad store setting, unreachable database, port taken)."""


def run(settings: ServerSettings) -> None:
    """Runs the server until SIGTERM or SIGINT. Blocks. Raises StartupError if it cannot start."""
    gc_tuning.tune()
    logging.basicConfig(
        level=logging.INFO, stream=sys.stderr,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    uvloop.run(serve(settings))


async def _or_startup_error(step: Awaitable[T]) -> T:
    """`step`'s result; its ValueError (a bad secrets key, an unusable file store) as such."""
    try:
        return await step
    except ValueError as exc:
        raise StartupError(str(exc)) from None


async def _open_store(settings: ServerSettings) -> Store:
    """The configured store, opened. The DSN is never repeated in errors (it may hold a
    password)."""
    try:
        store = create_store(settings)
    except ValueError as exc:
        raise StartupError(str(exc)) from None
    try:
        await store.open()
    except Exception as exc:
        kind = "PostgreSQL database" if "://" in settings.store else f"{settings.store} store"
        raise StartupError(f"cannot open the {kind}: {type(exc).__name__}: {exc}") from None
    return store


@dataclass(frozen=True)
class Planes:
    """The server's components, wired one way in their constructors (state, fleet, queue,
    control, then the edges)."""

    apps: Apps
    fleet: Fleet
    recorder: Recorder
    dispatcher: Dispatcher
    scheduler: Scheduler
    control: AppControl
    deployer: Deployer
    secret_box: SecretBox
    webhooks: WebhookSender
    metrics: Metrics | None = None  # None: --no-metrics


def build(
    settings: ServerSettings, store: Store, shared: SharedStore | None, backend: Backend,
    environments: Environments, secret_box: SecretBox, webhooks: WebhookSender,
    on_lost: Callable[[str], None],
) -> Planes:
    """Builds the planes (nothing runs yet). `on_lost` is called with its name when a loop
    that must run as long as the server ends."""
    apps = Apps()
    metrics = Metrics(apps) if settings.metrics else None
    if metrics is not None:
        store.on_batch = metrics.store_observer("postgres" if shared else settings.store)
    requests = Requests()
    store_health = StoreHealth(store, Tasks("store health", on_lost))
    tracing = Tracing.configure(settings.otlp_endpoint, settings.tracing)
    recorder = Recorder(store, settings, requests, webhooks, shared, Tasks("recorder", on_lost),
                        store_health, metrics, tracing)

    def fleet(events: FleetEvents) -> Fleet:
        return Fleet(events, apps, backend, environments, store, secret_box, settings,
                     Tasks("fleet", on_lost), metrics, slots=shared)

    dispatcher = Dispatcher(apps, store, shared, recorder, settings, fleet, metrics, tracing)
    scheduler = Scheduler(apps, store, shared, requests, recorder, dispatcher, settings)
    control = AppControl(apps, store, dispatcher.fleet, scheduler, dispatcher, settings)
    deployer = Deployer(apps, control, dispatcher.fleet, store, shared, environments, settings)
    return Planes(apps, dispatcher.fleet, recorder, dispatcher, scheduler, control, deployer,
                  secret_box, webhooks, metrics)


async def serve(settings: ServerSettings) -> None:
    """Runs the server until SIGTERM or SIGINT, then stops it in order: no new calls, the
    fleet (scaling stops, runners drain or are left to the next server), the gRPC server,
    the recorder's pending writes, the cluster membership, webhooks, the store."""
    tls = await asyncio.to_thread(_tls_credentials, settings)
    try:
        check_addresses(settings)
    except ListenError as exc:
        raise StartupError(str(exc)) from None
    store = await _open_store(settings)
    webhook_key = await asyncio.to_thread(SigningKey.load_or_create, settings.data_dir / KEY_FILE)
    webhooks = WebhookSender(webhook_key, settings.owner,
                             DeliverySettings(allowed_networks=settings.webhook_allow))
    secret_box = await _or_startup_error(
        asyncio.to_thread(SecretBox.load_or_create, settings.data_dir))
    environments = _environments(settings)
    gpus = await asyncio.to_thread(discover, settings.gpu_inventory)
    if gpus:
        log.info("GPUs: %s", ", ".join(f"{g.index}: {g.name} ({g.machine_type or 'no type'}, "
                                        f"{g.uuid})" for g in gpus))
    sid = await asyncio.to_thread(server_id, settings.data_dir)
    try:
        backend = create_backend(settings.backend, GpuAllocator(gpus), sid,
                                 settings.runner_reconnect_s, settings.ray_address,
                                 settings.zygotes)
        await backend.open()
    except ValueError as exc:
        raise StartupError(str(exc)) from None
    shared = _shared(store, settings)
    planes = build(settings, store, shared, backend, environments, secret_box, webhooks,
                   on_lost=_stop)
    cluster = await _join_cluster(planes, shared, sid, environments, settings)
    await planes.control.load()
    requeued = await planes.scheduler.load()
    admin_key = await _admin_key(store, settings)
    owed = await planes.recorder.resend_webhooks()
    authenticator = Authenticator(store, planes.apps, planes.scheduler, settings)
    store_health = planes.recorder.store_health
    server_health = ServerHealth(store_health, planes.fleet, planes.apps)
    runner_link = RunnerLinkService(planes.fleet, planes.dispatcher, sid)
    files = await _or_startup_error(open_files(settings, Tasks("files", _stop)))  # files.md
    server, health_servicer = _grpc_server(settings, planes, store, sid, runner_link,
                                           authenticator, server_health, cluster, files)
    files_service.add_to(cast(aio.Server, rpc.GenericHandlersOnly(server)), files, authenticator)
    dashboard = Dashboard(planes.apps, planes.fleet, store)
    gpu_monitor = await _collect_state(planes, webhooks, gpus)
    observed = Observed(planes.metrics.registry if planes.metrics else None, server_health.check)
    http = _http_edge(settings, planes, authenticator, dashboard, observed, files)
    await health_servicer.refresh()
    health_tasks = Tasks("health")
    store_health.watch(lambda _: health_tasks.spawn(health_servicer.refresh()))
    try:
        port = (server.add_secure_port(settings.listen, tls) if tls is not None
                else server.add_insecure_port(settings.listen))
    except RuntimeError as exc:
        await store.close()
        raise StartupError(f"cannot listen on {settings.listen}: {exc}") from None
    host = settings.listen.rpartition(":")[0]
    address = f"{_dial_host(host)}:{port}"
    http_addresses = await _bind_http(http, store)
    files.serve_urls_at(http_addresses, tls=settings.tls is not None)
    stream = await _or_startup_error(runner_stream.open_link(settings, runner_link))
    # Runners of this server's previous life that still run are adopted before the first
    # of them can dial in.
    callers_at = advertised(settings.advertise, port) or address
    adopted = planes.fleet.open(stream.address or callers_at,
                                await backend.survivors(planes.fleet.log_path), callers_at)
    await planes.fleet.sweep_runner_keys(
        sid, await shared.live_servers() if shared is not None else None)
    await server.start()
    await http.start()
    if settings.http_listen:
        dashboard.start()  # (its charts' samples)
    if admin_key:  # the CLI and the Python client on this machine find it there
        saved = await asyncio.to_thread(credentials.save, address, admin_key)
        log.info("the admin key is in %s", saved)
    if cluster is not None:
        cluster.start()
    planes.fleet.start()
    planes.recorder.start()
    files.start()
    health_tasks.spawn(_refresh_health(health_servicer), name="falrt-health")
    log.info("loaded %d apps, %d unfinished requests, %d webhooks owed; adopted %d runners",
             len(planes.apps), requeued, owed, adopted)
    for name, http_address in http_addresses:  # (before the gRPC line: tests read it)
        print(f"falrt {name} listening on {http_address}{' with TLS' if tls else ''}",
              flush=True)
    print(f"falrt server listening on {host}:{port}{' with TLS' if tls else ''}", flush=True)
    await _until_signalled()
    log.info("shutting down")
    await health_servicer.enter_graceful_shutdown()
    http.stop_accepting()
    await health_tasks.close()
    await planes.fleet.close()
    await http.close()
    await dashboard.close()
    await server.stop(grace=2.0)
    await stream.close()
    await files.close()
    await planes.recorder.close()
    await asyncio.to_thread(planes.recorder.tracing.shutdown)  # the spans left are sent
    if cluster is not None:
        await cluster.close()
    await webhooks.close()
    await store.close()
    _close_monitor(gpu_monitor)


def _tls_credentials(settings: ServerSettings) -> grpc.ServerCredentials | None:
    """The gRPC port's TLS credentials (None: plaintext), after checking that what runners
    will get can be read too. Blocking. Raises StartupError."""
    if settings.tls is None:
        return None
    try:
        runner_env(settings.tls)
        return server_credentials(settings.tls)
    except TlsError as exc:
        raise StartupError(str(exc)) from None


def _shared(store: Store, settings: ServerSettings) -> SharedStore | None:
    """The store as several servers share it (a PostgreSQL store), else None."""
    if not settings.store.startswith(POSTGRES_SCHEMES):
        return None
    return cast(SharedStore, store)  # (PostgresStore; asyncpg loads only when used)


def _environments(settings: ServerSettings) -> Environments:
    """Virtual environments for the process backend; container images for docker."""
    if settings.backend != "docker":
        return EnvironmentBuilder(settings.venvs_dir, settings.runner_python or sys.executable)
    if not settings.docker_base:
        raise StartupError("the docker backend needs a base image: --docker-base IMAGE "
                           "(`falrt images build-base` builds one from Debian packages)")
    from falrt.images.build import EnvironmentImageBuilder  # the docker SDK loads only here

    return ImageEnvironments(EnvironmentImageBuilder(settings.registry or None),
                             settings.docker_base)


async def _join_cluster(
    planes: Planes, shared: SharedStore | None, sid: str, environments: Environments,
    settings: ServerSettings,
) -> Cluster | None:
    """With a PostgreSQL store, joins the servers sharing it (falrt/server/control/cluster.py)."""
    if shared is None:
        return None
    from falrt.store.postgres import PostgresStore  # asyncpg loads only when used

    assert isinstance(shared, PostgresStore)
    cluster = Cluster(shared, planes.apps, planes.control, planes.scheduler, planes.recorder,
                      environments, settings,
                      lambda live: planes.fleet.sweep_runner_keys(sid, live), planes.fleet)
    try:
        await cluster.join(sid)
    except Exception as exc:
        await shared.close()
        raise StartupError(f"cannot join the servers sharing the store: {exc}") from None
    return cluster


def _http_edge(
    settings: ServerSettings, planes: Planes, authenticator: Authenticator, dashboard: Dashboard,
    observed: Observed, files: FilePlane | None = None,
) -> HttpEdge:
    """The HTTP listeners (none unless --http-listen or --http-queue-listen); nothing is
    bound yet (their addresses were checked first thing). `--http-listen` serves the
    dashboard (`/ui`)."""
    gateway = Gateway(planes.scheduler, authenticator, planes.apps, planes.control, settings,
                      public_url=settings.public_url.rstrip("/"), dashboard=dashboard,
                      observed=observed, files=files)
    return HttpEdge(gateway, settings)


async def _bind_http(http: HttpEdge, store: Store) -> list[tuple[str, str]]:
    """Binds the HTTP listeners (served once the gRPC server starts); returns their
    (name, HOST:PORT). Raises StartupError."""
    try:
        return await asyncio.to_thread(http.bind)
    except (ListenError, OSError, ssl.SSLError) as exc:
        await store.close()
        raise StartupError(f"the HTTP edge cannot start: {exc}") from None


def _grpc_server(
    settings: ServerSettings, planes: Planes, store: Store, sid: str,
    runner_link: RunnerLinkService, authenticator: Authenticator, server_health: ServerHealth,
    cluster: Cluster | None, files: FilePlane,
) -> tuple[aio.Server, HealthService]:
    size = settings.max_message_bytes
    server = aio.server(options=[
        ("grpc.max_receive_message_length", size),
        ("grpc.max_send_message_length", size),
        # A second server on a taken port must fail, not share the port with the first.
        ("grpc.so_reuseport", 0),
    ])
    handlers = cast(aio.Server, rpc.GenericHandlersOnly(server))  # all the add_* functions use
    queue_pb2_grpc.add_QueueServicer_to_server(
        QueueService(planes.scheduler, guard=authenticator.queue_guard,
                     sees_logs=authenticator.queue_sees_logs,
                     payloads=PayloadRefs(files, authenticator)), handlers)
    control_pb2_grpc.add_ControlServicer_to_server(ControlService(
        planes.apps, planes.control, planes.deployer, planes.fleet, planes.scheduler, store,
        planes.secret_box, planes.webhooks.key, settings, on_revoke=authenticator.forget,
        guard=authenticator.control_guard,
        scaling_lead=cluster.scaling_lead if cluster else alone_lead(sid)), handlers)
    runner_pb2_grpc.add_RunnerLinkServicer_to_server(runner_link, handlers)
    health_servicer = HealthService(server_health.check, SERVICES)
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, handlers)
    reflection_pb2_grpc.add_ServerReflectionServicer_to_server(reflection.aio.ReflectionServicer(
        (*SERVICES, health.SERVICE_NAME, reflection.SERVICE_NAME)), handlers)
    return server, health_servicer


async def _collect_state(
    planes: Planes, webhooks: WebhookSender, gpus: list[Gpu]
) -> GpuMonitor | None:
    """With metrics on, registers the figures computed at each scrape (queues, runners,
    webhooks, and each GPU's NVML figures); returns the GPU monitor to close at the end."""
    if planes.metrics is None:
        return None
    monitor = await asyncio.to_thread(GpuMonitor.open, gpus)
    planes.metrics.registry.register(
        StateCollector(planes.apps, planes.fleet.runners, webhooks.stats, monitor))
    return monitor


def _close_monitor(monitor: GpuMonitor | None) -> None:
    if monitor is not None:
        monitor.close()


async def _refresh_health(health_servicer: HealthService) -> None:
    """Pushes health changes to `Watch` callers once a second (a `Check` evaluates the rules
    itself): an app's runners failing to start, the scaling loop stuck."""
    while True:
        await health_servicer.refresh()
        await asyncio.sleep(HEALTH_REFRESH_S)


def _stop(task_name: str) -> None:
    """A loop that must run as long as the server (scaling, housekeeping) ended: a bug that
    would leave requests waiting forever, so the server stops loudly."""
    log.critical("%s ended; stopping the server", task_name)
    signal.raise_signal(signal.SIGTERM)


async def _admin_key(store: Store, settings: ServerSettings) -> str:
    """The server's admin key ("key_id:secret"): created on the first start (when the store
    has no key) and kept in <data_dir>/admin.key (mode 0600). "" when the store has keys but
    this data directory has no admin key (a second server on a shared store)."""
    path = settings.data_dir / ADMIN_KEY_FILE
    if not await store.list_keys():
        record, key = new_key(KeyScope.ADMIN, settings.owner, "created on the server's first start")
        await asyncio.to_thread(_write_private, path, key)
        await store.create_key(record)
        log.info("created the admin key %s", record.key_id)
        return key
    try:
        return (await asyncio.to_thread(path.read_text)).strip()
    except FileNotFoundError:
        return ""


def _write_private(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text + "\n")


def _dial_host(host: str) -> str:
    """The host runners dial: loopback when the server listens on every interface."""
    return "127.0.0.1" if host in ("", "0.0.0.0", "[::]") else host


async def _until_signalled() -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()


__all__ = ["grpc", "run", "serve"]
