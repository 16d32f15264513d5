"""The server's planes in the test's own event loop: real scheduler, dispatcher, fleet,
recorder and control plane over the memory store, with the inprocess backend, whose runners
the test plays (attach, take assignments, answer). No network, no subprocess: each test
answers in milliseconds.

Everything used here is shipped code (falrt.store.memory, falrt.backends.inprocess,
falrt.server.fleet.events.RecordingFleetEvents); nothing is patched.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import msgspec

from falrt.backends.environments import EnvironmentBuilder
from falrt.backends.inprocess import InProcessBackend, InProcessRunner
from falrt.server.fleet.events import RecordingFleetEvents
from falrt.server.fleet.fleet import Fleet
from falrt.server.fleet.secret_box import SecretBox
from falrt.server.main import Planes, build
from falrt.server.queue.webhooks import SigningKey, WebhookSender
from falrt.server.state.apps import Apps, AppState, EffectiveSettings
from falrt.server.state.runners import AssignEvent, RunnerHandle
from falrt.server.state.work import QueuedRequest, WorkItem
from falrt.server.tasks import Tasks
from falrt.settings import AppDefaults, ServerSettings
from falrt.store.base import Store
from falrt.store.memory import MemoryStore
from falrt.store.records import AppConfig, AppRecord, EndpointRecord, Outcome, Revision, Status

ADDRESS = "inprocess"


def settings_for(tmp_path: Path, **changes: Any) -> ServerSettings:
    """Server settings for in-process tests: short backoffs, the test's data directory."""
    defaults = AppDefaults(keep_alive_s=changes.pop("keep_alive_s", 60.0),
                           max_concurrency=changes.pop("max_concurrency", 2))
    return ServerSettings(data_dir=tmp_path / "data", app_defaults=defaults,
                          retry_backoff_base_s=0.01, retry_backoff_cap_s=0.05,
                          shutdown_grace_s=0.5, **changes)


def revision(name: str, revision_id: str = "rev-1", **config: Any) -> Revision:
    """A revision of app `name` with one unary endpoint at "/"."""
    return Revision(
        revision_id=revision_id, app_name=name, entrypoint="app:App", bundle_sha256="0" * 64,
        env_key="", config=AppConfig(**config), message="", created_at=time.time(),
        endpoints=(EndpointRecord("/", "run", 1, "{}", "{}"),))


async def completed(item: QueuedRequest, timeout_s: float = 5.0) -> None:
    """Waits for the request's COMPLETED (woken by its `changed` signal); fails after
    `timeout_s`."""
    async with asyncio.timeout(timeout_s):
        while item.status is not Status.COMPLETED:
            await item.changed.wait()


async def until(condition: Callable[[], bool], timeout_s: float = 5.0) -> None:
    """Polls `condition()` (a runner's state has no event to wait on) every millisecond
    until it holds; fails after `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("the condition did not hold in time")
        await asyncio.sleep(0.001)


@dataclass
class Lab:
    planes: Planes
    backend: InProcessBackend
    store: Store

    def deploy(self, name: str, revision_id: str = "rev-1", **config: Any) -> AppState:
        """Makes a revision of `name` live (as a deploy's last step does)."""
        now = time.time()
        record = AppRecord(name, revision_id, now, now, AppConfig(), "public")
        return self.planes.control.activate(record, revision(name, revision_id, **config))

    async def runner(self, app_name: str, slots: int = 1) -> RunnerHandle:
        """Plays the next runner the fleet starts for the app: it says Hello."""
        started = await self.backend.next_start(app_name)
        return self.attach(started, slots)

    def attach(self, started: InProcessRunner, slots: int = 1) -> RunnerHandle:
        return self.planes.fleet.attach(started.spec.runner_id, started.spec.token, slots)

    async def assigned(self, runner: RunnerHandle) -> WorkItem:
        """What the server sends the runner next, which must be an assignment."""
        event = await asyncio.wait_for(runner.outbox.get(), 5.0)
        assert isinstance(event, AssignEvent), event
        return event.item

    def answer(self, runner: RunnerHandle, item: WorkItem, output: bytes = b"{}") -> None:
        """The runner's result for `item`."""
        self.planes.dispatcher.on_result(
            runner, item.request_id, Outcome(output=output, content_type="application/json"))

    async def submit(self, app_name: str, data: bytes = b"{}", **options: Any) -> str:
        from falrt.server.queue.outcomes import SubmitOptions

        request_id, _, _ = await self.planes.scheduler.submit(
            f"local/{app_name}", "/", data, "application/json", SubmitOptions(**options))
        return request_id


@asynccontextmanager
async def lab(
    tmp_path: Path, store: Store | None = None, **settings: Any
) -> AsyncIterator[Lab]:
    """The planes, started (fleet and recorder), and stopped in the server's order; over
    `store` (open), else over a memory store."""
    config = settings_for(tmp_path, **settings)
    store, backend = store or MemoryStore(), InProcessBackend()
    environments = EnvironmentBuilder(config.venvs_dir, "python3")
    secret_box = SecretBox.load_or_create(config.data_dir)
    webhooks = WebhookSender(SigningKey.load_or_create(config.data_dir / "webhook.key"),
                             config.owner)
    planes = build(config, store, None, backend, environments, secret_box, webhooks,
                   on_lost=_lost)
    planes.fleet.open(ADDRESS, [])
    planes.fleet.start()
    planes.recorder.start()
    try:
        yield Lab(planes, backend, store)
    finally:
        _exit_all(backend)
        await planes.fleet.close()
        await planes.recorder.close()
        await webhooks.close()


@dataclass
class FleetLab:
    fleet: Fleet
    events: RecordingFleetEvents
    backend: InProcessBackend
    apps: Apps

    def add_app(self, name: str, **config: Any) -> AppState:
        now = time.time()
        record = AppRecord(name, "rev-1", now, now, AppConfig(), "public")
        live = revision(name, **config)
        app = AppState(record, live, EffectiveSettings.resolve(live.config, AppDefaults()))
        self.apps.put(app)
        self.fleet.wake()
        return app

    async def runner(self, app_name: str, slots: int = 1) -> tuple[InProcessRunner, RunnerHandle]:
        started = await self.backend.next_start(app_name)
        return started, self.fleet.attach(started.spec.runner_id, started.spec.token, slots)


@asynccontextmanager
async def fleet_lab(tmp_path: Path, **settings: Any) -> AsyncIterator[FleetLab]:
    """A fleet alone, its events recorded (no queue)."""
    config = settings_for(tmp_path, **settings)
    events, apps, backend = RecordingFleetEvents(), Apps(), InProcessBackend()
    fleet = Fleet(events, apps, backend, EnvironmentBuilder(config.venvs_dir, "python3"),
                  MemoryStore(), SecretBox.load_or_create(config.data_dir), config,
                  Tasks("fleet", _lost))
    fleet.open(ADDRESS, [])
    fleet.start()
    try:
        yield FleetLab(fleet, events, backend, apps)
    finally:
        _exit_all(backend)
        await fleet.close()


def _exit_all(backend: InProcessBackend) -> None:
    """The runners the test played end (as shims do once their server stops them)."""
    for runner in backend.started:
        runner.exit(0)


def _lost(name: str) -> None:
    raise AssertionError(f"{name} ended while the planes ran")


def run(scenario: Callable[[], Awaitable[None]]) -> None:
    """Runs an async test body on a fresh event loop."""
    asyncio.run(asyncio.wait_for(scenario(), 20.0))


def decode(data: bytes) -> Any:
    return msgspec.json.decode(data)
